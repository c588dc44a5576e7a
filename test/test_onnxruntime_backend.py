"""ONNX Runtime backend: same tiles in, same logits and masks out as the torch backend."""

import shutil

import numpy as np
import pytest

from sat_seg_ros.backends import create_backend
from sat_seg_ros.backends.onnxruntime_backend import choose_providers

#: Stated parity: max |logit difference| between ONNX Runtime and torch, fp32 on CPU.
LOGIT_TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def model_dir(tiny_model_dir, tmp_path_factory):
    """Copy the tiny model and export its dynamic-batch graph and a static batch-2 graph."""
    from sat_seg_training.export import export_model

    folder = tmp_path_factory.mktemp('ort') / 'model'
    shutil.copytree(tiny_model_dir, folder)
    export_model(folder, static_batch=2, verify=False)
    return folder


def tiles(count, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def iou(first, second):
    union = np.logical_or(first, second).sum()
    return 1.0 if union == 0 else np.logical_and(first, second).sum() / union


@pytest.mark.parametrize('tile_size', [256, 128])
def test_logits_match_torch(model_dir, tile_size):
    batch = tiles(5, tile_size)
    torch_logits = create_backend('torch', model_dir).predict(batch)
    dynamic = create_backend('onnxruntime', model_dir)
    static = create_backend('onnxruntime', model_dir,
                            onnx_path=model_dir / 'sat_seg_s256_grid4_b2.onnx')
    assert dynamic.batch is None and static.batch == 2 and dynamic.input_size == 256
    for backend in (dynamic, static):
        logits = backend.predict(batch)  # 5 tiles: the static graph runs 2 + 2 + 1 padded
        assert logits.shape == (5, tile_size, tile_size) and logits.dtype == np.float32
        assert np.abs(logits - torch_logits).max() < LOGIT_TOLERANCE
        assert iou(logits > 0, torch_logits > 0) >= 0.99


def test_segmenter_masks_match_torch(model_dir):
    from sat_seg_ros.segmenter import Segmenter

    frame = np.random.default_rng(1).integers(0, 255, (300, 420, 3), dtype=np.uint8)
    segmenters = {name: Segmenter.from_model(model_dir, backend=name, model_size=512)
                  for name in ('torch', 'onnxruntime')}
    # Threshold at the median probability: masks about half full, so the IoU is informative.
    median = float(np.median(segmenters['torch'].probability(frame)))
    results = {}
    for name, segmenter in segmenters.items():
        segmenter.set_threshold(median)
        results[name] = segmenter.segment(frame)
    assert 0.3 < results['torch'].mask.mean() < 0.7
    assert np.abs(results['torch'].probability
                  - results['onnxruntime'].probability).max() < 1e-5
    assert iou(results['torch'].mask, results['onnxruntime'].mask) >= 0.99


def test_missing_graph_names_the_export_command(tiny_model_dir):
    with pytest.raises(FileNotFoundError) as error:
        create_backend('onnxruntime', tiny_model_dir)
    assert 'sat-seg export --model %s' % tiny_model_dir in str(error.value)


def test_prompt_mismatch_is_refused(model_dir):
    with pytest.raises(FileNotFoundError, match='box'):
        create_backend('onnxruntime', model_dir, prompt_mode='box')
    with pytest.raises(ValueError, match='re-export'):
        create_backend('onnxruntime', model_dir, prompt_mode='box',
                       onnx_path=model_dir / 'sat_seg_s256_grid4_dyn.onnx')
    with pytest.raises(FileNotFoundError, match='grid8'):
        create_backend('onnxruntime', model_dir, grid_points=8)


def test_graph_from_other_weights_is_reported(model_dir, tmp_path, caplog):
    from sat_seg_ros.testing import make_tiny_model

    folder = tmp_path / 'model'
    shutil.copytree(model_dir, folder)
    create_backend('onnxruntime', folder)
    assert 're-run sat-seg export' not in caplog.text
    make_tiny_model(folder, seed=1)  # new weights, old graphs
    create_backend('onnxruntime', folder)
    assert 're-run sat-seg export' in caplog.text


def test_provider_choice():
    cpu_only = ['CPUExecutionProvider']
    assert choose_providers('cpu', cpu_only) == ['CPUExecutionProvider']
    with pytest.raises(ValueError, match='onnxruntime-gpu'):
        choose_providers('cuda', cpu_only)
    with pytest.raises(ValueError, match='device'):
        choose_providers('gpu', cpu_only)
    with pytest.raises(ValueError, match='number'):
        choose_providers('cuda:first', cpu_only)
    gpu = ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
    assert choose_providers('cuda:0', gpu) == ['CUDAExecutionProvider', 'CPUExecutionProvider']
    assert choose_providers('tensorrt', gpu) == gpu


def test_sleeping_threads_give_the_same_logits(model_dir):
    """spinning=False only changes how idle threads wait, never the numbers."""
    batch = tiles(3, 256, seed=5)
    spinning = create_backend('onnxruntime', model_dir, spinning=True).predict(batch)
    sleeping = create_backend('onnxruntime', model_dir, spinning=False)
    entries = sleeping.session.get_session_options().get_session_config_entry(
        'session.intra_op.allow_spinning')
    assert entries == '0'
    assert np.array_equal(sleeping.predict(batch), spinning)
