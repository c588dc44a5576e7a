"""Our batched numpy pre-processing + SamTilePredictor match SamProcessor + SamModel."""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from sat_seg_ros.backends import preprocess_tiles, upsample_logits  # noqa: E402
from sat_seg_ros.backends.torch_backend import SamTilePredictor  # noqa: E402
from sat_seg_ros.naive import NaivePipeline  # noqa: E402
from sat_seg_ros.testing import make_tiny_model  # noqa: E402


def _reference(model, tile, prompt_mode, grid_points=4):
    """Low-res and tile-size logits from the tutorial pipeline (processor + full SamModel)."""
    from PIL import Image

    naive = NaivePipeline(model, 256, tile.shape[0], prompt_mode, grid_points)
    inputs = naive.processor(images=Image.fromarray(tile), return_tensors='pt',
                             **naive.prompt_kwargs)
    for key in ('input_points', 'input_boxes'):
        if key in inputs:
            inputs[key] = inputs[key].float()
    with torch.no_grad():
        out = model(pixel_values=inputs['pixel_values'], input_points=inputs.get('input_points'),
                    input_boxes=inputs.get('input_boxes'), multimask_output=False)
    full = naive.processor.image_processor.post_process_masks(
        out.pred_masks, inputs['original_sizes'], inputs['reshaped_input_sizes'],
        binarize=False)[0][0, 0]
    return inputs['pixel_values'].numpy(), out.pred_masks[0, 0, 0].numpy(), full.numpy()


@pytest.fixture(scope='module')
def sam_256(tmp_path_factory):
    from transformers import SamModel

    path = make_tiny_model(tmp_path_factory.mktemp('parity256'), image_size=256, seed=3)
    return SamModel.from_pretrained(path).eval()


@pytest.mark.parametrize('prompt_mode', ['grid', 'box', 'none'])
def test_logits_match_processor_on_the_same_tile(sam_256, prompt_mode):
    tile = np.random.default_rng(7).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    ref_pixels, ref_low, ref_full = _reference(sam_256, tile, prompt_mode)
    pixels = preprocess_tiles(tile[None].astype(np.float32), 256)
    np.testing.assert_allclose(pixels, ref_pixels, atol=1e-5)
    with torch.no_grad():
        low = SamTilePredictor(sam_256, prompt_mode)(torch.from_numpy(pixels)).numpy()
    assert np.abs(low[0] - ref_low).max() < 1e-4
    assert np.abs(upsample_logits(low, 256)[0] - ref_full).max() < 1e-4
    assert np.abs(ref_low).max() > 1e-3  # the comparison is not between two zero maps


def test_batched_tiles_match_one_at_a_time(sam_256):
    tiles = np.random.default_rng(1).integers(0, 256, (5, 256, 256, 3)).astype(np.float32)
    module = SamTilePredictor(sam_256, 'grid')
    pixels = torch.from_numpy(preprocess_tiles(tiles, 256))
    with torch.no_grad():
        batched = module(pixels).numpy()
        single = np.concatenate([module(pixels[i:i + 1]).numpy() for i in range(5)])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_tiles_are_resized_to_a_1024_input_model_like_the_processor(tmp_path):
    """A model laid out like facebook/sam-vit-base (1024 input) gets 256 tiles upsampled.

    Pillow resizes in 8-bit fixed point and rounds, our pipeline keeps floats, so pixels may
    differ by one grey level; the logits then differ by far less than a mask decision margin.
    """
    from transformers import SamModel

    path = make_tiny_model(tmp_path / 'm1024', image_size=1024, seed=5, window_size=8)
    sam = SamModel.from_pretrained(path).eval()
    tile = np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    ref_pixels, ref_low, ref_full = _reference(sam, tile, 'box')
    pixels = preprocess_tiles(tile[None].astype(np.float32), 1024)
    assert pixels.shape == ref_pixels.shape == (1, 3, 1024, 1024)
    assert np.abs(pixels - ref_pixels).max() <= 1.0 / (0.224 * 255) + 1e-4
    module = SamTilePredictor(sam, 'box')
    with torch.no_grad():
        same_input = module(torch.from_numpy(ref_pixels)).numpy()
        low = module(torch.from_numpy(pixels)).numpy()
    assert same_input.shape == (1, 256, 256)
    assert np.abs(same_input[0] - ref_low).max() < 1e-4  # the model path is exactly SAM's
    # With our float pixels (vs Pillow's rounded ones) the logits move by a few percent at most.
    # The processor's post-processing goes 256 -> 1024 -> 256 (a slight blur); ours keeps the
    # 256 low-res mask of a 256 tile as it is, so only the low-res logits are compared here.
    spread = ref_low.max() - ref_low.min()
    assert np.abs(low[0] - ref_low).max() < 0.05 * spread


def test_gray_tiles_are_normalised_like_three_equal_channels():
    gray = np.random.default_rng(4).integers(0, 256, (3, 200, 200, 1)).astype(np.float32)
    for size in (200, 256):
        np.testing.assert_array_equal(preprocess_tiles(gray, size),
                                      preprocess_tiles(np.repeat(gray, 3, axis=3), size))
    with pytest.raises(ValueError, match=r'\(N, t, t, 3\) or \(N, t, t, 1\)'):
        preprocess_tiles(gray[..., 0], 256)


@pytest.mark.parametrize('workers', [1, 2, 3])
def test_cpu_workers_and_frozen_graph_give_the_eager_logits(tiny_model_dir, workers):
    """Concurrent workers on the frozen graph give the eager logits for every batch size.

    The caller's torch thread count is restored afterwards.
    """
    from sat_seg_ros.backends.torch_backend import TorchBackend

    backend = TorchBackend(tiny_model_dir, prompt_mode='grid', workers=workers, threads=2)
    try:
        assert backend.workers == workers
        assert backend.frozen and isinstance(backend.module, torch.jit.ScriptModule)
        assert torch.get_num_threads() == 2
        pixels = preprocess_tiles(np.random.default_rng(5).integers(
            0, 256, (5, 256, 256, 3)).astype(np.float32), 256)
        with torch.inference_mode():
            eager = backend.eager(torch.from_numpy(pixels)).numpy()
        for count in (1, 2, 5):
            np.testing.assert_allclose(backend.run_batch(pixels[:count]), eager[:count],
                                       atol=1e-5)
        assert torch.get_num_threads() == 2
        assert 'worker(s)' in backend.describe()
    finally:
        backend.close()


def test_eager_mode_is_available_and_bad_workers_are_refused(tiny_model_dir):
    from sat_seg_ros.backends.torch_backend import TorchBackend

    backend = TorchBackend(tiny_model_dir, prompt_mode='box', freeze=False, workers=1)
    assert not backend.frozen and backend.module is backend.eager
    backend.close()
    with pytest.raises(ValueError, match='workers'):
        TorchBackend(tiny_model_dir, workers=-1)


def test_a_1024_input_model_runs_eagerly_in_one_batch_by_default(tmp_path):
    from sat_seg_ros.backends.torch_backend import TorchBackend

    path = make_tiny_model(tmp_path / 'm1024', image_size=1024, seed=5, window_size=8)
    backend = TorchBackend(path, prompt_mode='box', threads=2)
    assert backend.workers == 1 and backend.worker_threads == 2 and not backend.frozen
    backend.close()
