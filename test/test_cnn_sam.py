"""The compact CNN-encoder SAM family: shapes, save/load, every backend path, training, errors."""

import json
from pathlib import Path

import numpy as np
import pytest


def test_embeddings_are_stride_8_and_mask_is_128():
    import torch

    from sat_seg_training.models import build_model

    model = build_model('test-cnn', image_size=256)
    pixels = torch.zeros(2, 3, 256, 256)
    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixels)
        out = model(pixel_values=pixels, input_boxes=torch.tensor([[[0., 0., 256., 256.]]] * 2),
                    multimask_output=False)
    assert embeddings.shape == (2, 16, 32, 32)
    assert out.pred_masks.shape == (2, 1, 1, 128, 128)
    assert out.iou_scores.shape == (2, 1, 1)


@pytest.mark.parametrize('architecture', ['sat-cnn', 'sat-cnn-deep', 'sat-cnn-deep8',
                                          'sat-cnn-fine', 'sat-cnn-fine-ctx', 'sat-cnn-hq-ctx'])
def test_default_architecture_fits_the_budget(architecture):
    """<= 10 MB of fp32 weights and <= 1 GFLOP per 256 tile, counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sat_seg_ros.backends.torch_backend import SamTilePredictor
    from sat_seg_training.models import build_model, count_parameters

    model = build_model(architecture)
    assert count_parameters(model) * 4 <= 10e6
    predictor = SamTilePredictor(model, 'box').eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        predictor(torch.zeros(1, 3, 256, 256))
    assert 0.2e9 < counter.get_total_flops() <= 1e9


@pytest.mark.parametrize('folder', ['cnn_model_dir', 'cnn_fine_model_dir', 'cnn_hq_model_dir'])
def test_save_load_round_trip_is_bit_exact(folder, request):
    import torch

    from sat_seg_ros.modeling import CnnSamModel, load_sam_model

    cnn_model_dir = request.getfixturevalue(folder)

    loaded = load_sam_model(cnn_model_dir)
    again_dir = cnn_model_dir.parent / 'again'
    loaded.save_pretrained(again_dir)
    again = load_sam_model(again_dir)
    assert isinstance(again, CnnSamModel)
    first, second = loaded.state_dict(), again.state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert (json.loads((cnn_model_dir / 'config.json').read_text())['model_type']
            == 'sat_cnn_sam')


def test_a_sam_folder_still_loads_as_sam(tiny_model_dir):
    from transformers import SamModel

    from sat_seg_ros.modeling import load_sam_model

    assert type(load_sam_model(tiny_model_dir)) is SamModel


def test_unknown_model_type_is_refused_with_the_fix(tmp_path):
    from sat_seg_ros.modeling import load_sam_model

    (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
    with pytest.raises(ValueError, match="model_type 'bert'.*SamModel folder"):
        load_sam_model(tmp_path)
    (tmp_path / 'config.json').write_text('{not json')
    with pytest.raises(ValueError, match='not a readable JSON'):
        load_sam_model(tmp_path)
    with pytest.raises(FileNotFoundError, match='no config.json'):
        load_sam_model(tmp_path / 'missing')


def test_torch_backend_and_segmenter_run_the_family(cnn_model_dir):
    from sat_seg_ros.segmenter import Segmenter

    segmenter = Segmenter.from_model(cnn_model_dir, backend='torch')
    frame = np.random.default_rng(0).integers(0, 255, (300, 400), dtype=np.uint8)
    result = segmenter.segment(frame)
    assert result.probability.shape == (300, 400)
    assert result.mask.dtype == bool
    assert 'torch' in segmenter.backend.describe()


@pytest.mark.parametrize('folder', ['cnn_model_dir', 'cnn_fine_model_dir', 'cnn_hq_model_dir'])
def test_onnx_export_matches_torch_and_is_tensorrt_ready(folder, request, tmp_path):
    import onnx

    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.export import check_tensorrt_compatible, export_model

    cnn_model_dir = request.getfixturevalue(folder)
    out = tmp_path / 'exported'
    summary = export_model(cnn_model_dir, out, static_batch=4)
    assert [item['batch'] for item in summary] == ['dynamic', 4]
    for item in summary:
        graph = onnx.load(item['path'])
        assert check_tensorrt_compatible(graph, static=item['batch'] != 'dynamic') == []
        assert 'BatchNormalization' not in item['ops']  # folded into the convolutions
        assert item['max_abs_diff'] < 1e-4
    frame = np.random.default_rng(1).integers(0, 255, (256, 320, 3), dtype=np.uint8)
    by_torch = Segmenter.from_model(cnn_model_dir, backend='torch').probability(frame)
    by_ort = Segmenter.from_model(out, backend='onnxruntime').probability(frame)
    assert np.abs(by_torch - by_ort).max() < 1e-4


def _cnn_config(tmp_path, **changes):
    from sat_seg_training.train_config import TrainConfig

    values = {'name': 'test', 'out_dir': str(tmp_path / 'run'), 'architecture': 'test-cnn',
              'data': 'shapes', 'scenes': 6, 'val_data': 'shapes', 'val_scenes': 2,
              'model_sizes': [128], 'size_weights': [1.0], 'tile_size': 64, 'batch_size': 8,
              'steps': 40, 'lr': 3e-3, 'warmup_steps': 1, 'val_every': 1000,
              'checkpoint_every': 1000, 'log_every': 1, 'threads': 1, 'positive_fraction': 0.5,
              'hard_negative_fraction': 0.5}
    values.update(changes)
    return TrainConfig(**values)


def _losses(run_dir):
    from sat_seg_training.train import read_checkpoint

    history = read_checkpoint(Path(run_dir) / 'last.pt')['history']
    return [entry['loss'] for entry in history if 'loss' in entry]


def test_two_stages_lower_the_loss_and_the_head_stays_out_of_the_export(tmp_path):
    from sat_seg_training.train import read_checkpoint, train

    stage1 = _cnn_config(tmp_path / 's1', stage='dense', crop_size=32)
    train(stage1, progress=False)
    losses = _losses(stage1.out_dir)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    checkpoint = read_checkpoint(Path(stage1.out_dir) / 'last.pt')
    assert 'dense_head' in checkpoint and checkpoint['hardness'].shape[0] > 0

    stage2 = _cnn_config(tmp_path / 's2', stage='sam', dense_weight=0.5, steps=30,
                         init_from=str(Path(stage1.out_dir) / 'last.pt'))
    train(stage2, progress=False)
    losses = _losses(stage2.out_dir)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    exported = json.loads((Path(stage2.out_dir) / 'best_model' / 'config.json').read_text())
    assert exported['model_type'] == 'sat_cnn_sam'
    from safetensors import safe_open

    with safe_open(str(Path(stage2.out_dir) / 'best_model' / 'model.safetensors'), 'np') as f:
        assert not [key for key in f.keys() if 'head' in key and 'iou' not in key]


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    from sat_seg_training.train import train

    vit = _cnn_config(tmp_path / 'vit', architecture='test-micro', steps=2,
                      hard_negative_fraction=0.0)
    train(vit, progress=False)
    other = _cnn_config(tmp_path / 'cnn', init_from=str(Path(vit.out_dir) / 'last.pt'))
    with pytest.raises(ValueError, match="another architecture than 'test-cnn'"):
        train(other, progress=False)
    assert not (Path(other.out_dir) / 'last.pt').exists()


def _scrambled(model):
    """``model`` with random BatchNorm statistics and affine terms (a fresh one has identities)."""
    import torch

    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor in (module.running_mean, module.weight, module.bias):
                    tensor.copy_(torch.randn(tensor.shape, generator=generator))
                module.running_var.copy_(torch.rand(module.running_var.shape,
                                                    generator=generator) + 0.5)
    return model


def _outputs(model, pixels):
    import torch

    boxes = torch.tensor([[[0., 0., 64., 64.]]] * len(pixels))
    with torch.no_grad():
        return model(pixel_values=pixels, input_boxes=boxes).pred_masks


# Every part deepen can add: blocks in every stage (the stride-8 one too, as sat-cnn-deep8), and
# the stride-4 block and lateral (as sat-cnn-fine); the norms that start at zero must learn.
GROWTHS = {
    'stages': ({'stage_blocks': (2, 2, 3)},
               lambda encoder: [encoder.stages[2][2].conv2[1], encoder.stages[0][1].conv2[1]]),
    'stride 4': ({'stage_blocks': (1, 1, 1), 'stem_blocks': 1, 'fine_lateral': True},
                 lambda encoder: [encoder.stem_blocks[0].conv2[1], encoder.fine_lateral[1]]),
    'after the fusion': ({'stage_blocks': (1, 1, 1), 'fuse_blocks': 2},
                         lambda encoder: [block.conv2[1] for block in encoder.fuse_blocks]),
}


@pytest.mark.parametrize('growth', sorted(GROWTHS))
def test_a_deepened_model_computes_exactly_what_it_came_from(growth):
    import torch

    from sat_seg_training.models import build_model, count_parameters, deepen

    kwargs, new_norms = GROWTHS[growth]
    model = _scrambled(build_model('test-cnn', seed=1))
    deeper = deepen(model, **kwargs)
    vision = deeper.config.vision_config
    assert list(vision.stage_blocks) == list(kwargs['stage_blocks'])
    assert [len(stage) for stage in deeper.vision_encoder.stages] == list(kwargs['stage_blocks'])
    assert ((vision.stem_blocks, vision.fine_lateral, vision.fuse_blocks)
            == (kwargs.get('stem_blocks', 0), kwargs.get('fine_lateral', False),
                kwargs.get('fuse_blocks', 0)))
    assert len(deeper.vision_encoder.fuse_blocks) == vision.fuse_blocks
    assert count_parameters(deeper) > count_parameters(model)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(_outputs(model, pixels), _outputs(deeper, pixels))
    # In training mode too (batch statistics), which is where the next stage starts.
    model.train()
    deeper.train()
    with torch.no_grad():
        assert torch.equal(model.vision_encoder(pixels).last_hidden_state,
                           deeper.vision_encoder(pixels).last_hidden_state)
    # The new parts are not dead weight: their BatchNorm scale gets a gradient.
    deeper.vision_encoder(pixels).last_hidden_state.square().sum().backward()
    for norm in new_norms(deeper.vision_encoder):
        assert norm.weight.grad.abs().sum() > 0


def test_stride_4_parts_have_the_preset_shapes_and_grow_further():
    import torch

    from sat_seg_training.models import build_model, deepen

    finer = deepen(_scrambled(build_model('test-cnn', seed=1)), **GROWTHS['stride 4'][0])
    assert ({k: v.shape for k, v in finer.state_dict().items()}
            == {k: v.shape for k, v in build_model('test-cnn-fine').state_dict().items()})
    both = deepen(finer, (1, 1, 2))  # a stage block on top keeps the stride-4 parts
    assert both.config.vision_config.stem_blocks == 1 and both.config.vision_config.fine_lateral
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(_outputs(finer, pixels), _outputs(both, pixels))


def test_blocks_after_the_fusion_have_the_preset_shapes_and_survive_save_and_widen(tmp_path):
    import torch

    from sat_seg_ros.modeling import load_sam_model
    from sat_seg_training.models import build_model, deepen, widen

    fine = _scrambled(build_model('test-cnn-fine', seed=1))
    mixed = deepen(fine, (1, 1, 1), fuse_blocks=2)
    assert ({k: v.shape for k, v in mixed.state_dict().items()}
            == {k: v.shape for k, v in build_model('test-cnn-mix').state_dict().items()})
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    mixed = _scrambled(mixed)  # the new blocks no longer identities
    assert not torch.equal(_outputs(fine, pixels), _outputs(mixed, pixels))
    mixed.save_pretrained(tmp_path / 'mixed')
    loaded = load_sam_model(tmp_path / 'mixed')
    assert loaded.config.vision_config.fuse_blocks == 2
    assert torch.equal(_outputs(mixed, pixels), _outputs(loaded, pixels))
    # widen grows the blocks after the fusion with the fusion's width, computing the same.
    wider = widen(mixed, (24, 24, 32), fuse_channels=24)
    assert wider.vision_encoder.fuse_blocks[1].conv2[0].weight.shape[:2] == (24, 24)
    assert torch.allclose(_outputs(mixed, pixels), _outputs(wider, pixels), atol=1e-4)


@pytest.mark.parametrize('value', [-1, 1.5, True, '1'])
def test_the_encoder_config_refuses_a_bad_block_count(value):
    from sat_seg_ros.modeling import CnnEncoderConfig

    with pytest.raises(ValueError, match='fuse_blocks=.*integer >= 0'):
        CnnEncoderConfig(fuse_blocks=value)


def test_a_widened_model_computes_what_it_came_from_and_its_new_channels_learn():
    import torch

    from sat_seg_training.models import build_model, count_parameters, deepen, widen

    model = _scrambled(build_model('test-cnn-fine', seed=1))
    wide = build_model('test-cnn-wide').config.vision_config
    wider = widen(model, wide.stage_channels, seed=3, stem_channels=wide.stem_channels,
                  fuse_channels=wide.fuse_channels)
    assert ({k: v.shape for k, v in wider.state_dict().items()}
            == {k: v.shape for k, v in build_model('test-cnn-wide').state_dict().items()})
    assert count_parameters(wider) > count_parameters(model)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    # Not bit for bit: a conv over more input channels sums in another order.
    assert torch.allclose(_outputs(model, pixels), _outputs(wider, pixels), atol=1e-4)
    # Widened, then deepened (as a grown checkpoint is), it still computes the same.
    assert torch.allclose(_outputs(model, pixels), _outputs(deepen(wider, (1, 2, 2)), pixels),
                          atol=1e-4)
    model.train()
    wider.train()
    with torch.no_grad():
        assert torch.allclose(model.vision_encoder(pixels).last_hidden_state,
                              wider.vision_encoder(pixels).last_hidden_state, atol=1e-5)
    # The zero weights by which old channels read new ones get gradients, so they move.
    wider.vision_encoder(pixels).last_hidden_state.square().sum().backward()
    for conv in (wider.vision_encoder.stages[1][0].conv1[0], wider.vision_encoder.lateral[2][0],
                 wider.vision_encoder.fuse[0]):
        assert conv.weight.grad.abs().sum() > 0
    reader = wider.vision_encoder.lateral[2][0]  # 32 stride-32 channels, 16 of them new
    assert reader.weight[:16, 16:].abs().sum() == 0
    assert reader.weight.grad[:16, 16:].abs().sum() > 0


def test_widen_refuses_narrowing_and_other_families():
    from sat_seg_training.models import build_model, widen

    model = build_model('test-cnn')
    with pytest.raises(ValueError, match='widened, never narrowed'):
        widen(model, (16, 8, 16))
    with pytest.raises(ValueError, match='widened, never narrowed'):
        widen(model, (16, 16))
    with pytest.raises(ValueError, match='fuse_channels.*never narrowed'):
        widen(model, (16, 16, 16), fuse_channels=8)
    with pytest.raises(ValueError, match='only a CNN-encoder SAM'):
        widen(build_model('test-micro'), (16, 16, 16))


def test_deepen_refuses_cutting_blocks_and_other_families():
    from sat_seg_training.models import build_model, deepen

    model = build_model('test-cnn')
    with pytest.raises(ValueError, match='deepened, never cut'):
        deepen(deepen(model, (1, 2, 2)), (1, 1, 2))
    with pytest.raises(ValueError, match='deepened, never cut'):
        deepen(model, (1, 2))
    finer = deepen(model, (1, 1, 1), stem_blocks=1, fine_lateral=True)
    with pytest.raises(ValueError, match='stem_blocks=0.*never cut'):
        deepen(finer, (1, 1, 1), stem_blocks=0)
    with pytest.raises(ValueError, match='fine_lateral=False.*never cut'):
        deepen(finer, (1, 1, 1), fine_lateral=False)
    with pytest.raises(ValueError, match='fuse_blocks=0.*never cut'):
        deepen(deepen(finer, (1, 1, 1), fuse_blocks=1), (1, 1, 1), fuse_blocks=0)
    with pytest.raises(ValueError, match='only a CNN-encoder SAM'):
        deepen(build_model('test-micro'), (1, 2, 2))


def test_training_continues_from_a_shallower_checkpoint_only_when_told_to_deepen(tmp_path):
    import torch

    from sat_seg_training.train import (load_initial_model, model_from_checkpoint,
                                        read_checkpoint, train)

    shallow = _cnn_config(tmp_path / 'shallow', steps=3, hard_negative_fraction=0.0,
                          dense_weight=0.5)
    train(shallow, progress=False)
    checkpoint = Path(shallow.out_dir) / 'last.pt'
    refused = _cnn_config(tmp_path / 'refused', architecture='test-cnn-deep',
                          init_from=str(checkpoint))
    with pytest.raises(ValueError, match="another architecture than 'test-cnn-deep'"):
        train(refused, progress=False)
    assert not (Path(refused.out_dir) / 'last.pt').exists()

    deeper = _cnn_config(tmp_path / 'deeper', architecture='test-cnn-deep', deepen=True,
                         init_from=str(checkpoint), steps=4, hard_negative_fraction=0.0,
                         dense_weight=0.5)
    model, head = load_initial_model(deeper)
    assert head is not None  # the dense head carries over with the encoder
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(_outputs(model.eval(), pixels),
                       _outputs(model_from_checkpoint(read_checkpoint(checkpoint)).eval(), pixels))
    train(deeper, progress=False)
    stored = read_checkpoint(Path(deeper.out_dir) / 'last.pt')
    assert stored['step'] == 4
    assert stored['sam_config']['vision_config']['stage_blocks'] == [1, 2, 2]
    # The stride-4 parts are grown the same way (sat-cnn -> sat-cnn-fine).
    finer = _cnn_config(tmp_path / 'finer', architecture='test-cnn-fine', deepen=True,
                        init_from=str(checkpoint), steps=2, hard_negative_fraction=0.0,
                        dense_weight=0.5)
    model, _ = load_initial_model(finer)
    assert torch.equal(_outputs(model.eval(), pixels),
                       _outputs(model_from_checkpoint(read_checkpoint(checkpoint)).eval(), pixels))
    train(finer, progress=False)
    vision = read_checkpoint(Path(finer.out_dir) / 'last.pt')['sam_config']['vision_config']
    assert vision['stem_blocks'] == 1 and vision['fine_lateral'] is True
    # More channels as well (sat-cnn-fine-ctx -> sat-cnn-wide-ctx): refused by deepen alone,
    # grown when told to widen too, and the grown model computes what the checkpoint's did.
    wider = _cnn_config(tmp_path / 'wider', architecture='test-cnn-wide', deepen=True,
                        init_from=str(checkpoint), steps=2, hard_negative_fraction=0.0,
                        dense_weight=0.5)
    with pytest.raises(ValueError, match="another architecture than 'test-cnn-wide'.*widen"):
        load_initial_model(wider)
    wider.widen = True
    model, _ = load_initial_model(wider)
    assert torch.allclose(_outputs(model.eval(), pixels),
                          _outputs(model_from_checkpoint(read_checkpoint(checkpoint)).eval(),
                                   pixels), atol=1e-4)
    train(wider, progress=False)
    vision = read_checkpoint(Path(wider.out_dir) / 'last.pt')['sam_config']['vision_config']
    assert list(vision['stage_channels']) == [24, 24, 32] and vision['fine_lateral'] is True


def test_dense_stage_needs_a_cnn_architecture(tmp_path):
    with pytest.raises(ValueError, match='need a CNN-encoder architecture'):
        _cnn_config(tmp_path, architecture='test-micro', stage='dense')
    with pytest.raises(ValueError, match='deepen=true needs init_from'):
        _cnn_config(tmp_path, architecture='test-cnn-deep', deepen=True)
    with pytest.raises(ValueError, match='widen=true needs init_from'):
        _cnn_config(tmp_path, architecture='test-cnn-wide', widen=True)
    with pytest.raises(ValueError, match="CNN-encoder architecture.*not 'test-micro'"):
        _cnn_config(tmp_path, architecture='test-micro', deepen=True, init_from='x.pt')


def test_bf16_precision_lowers_the_loss_and_keeps_fp32_weights(tmp_path):
    import torch

    from sat_seg_training.train import read_checkpoint, train

    config = _cnn_config(tmp_path / 'bf16', stage='sam', dense_weight=0.5, steps=30,
                         precision='bf16')
    train(config, progress=False)
    losses = _losses(config.out_dir)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    stored = read_checkpoint(Path(config.out_dir) / 'last.pt')
    assert stored['train_config']['precision'] == 'bf16'
    assert {value.dtype for value in stored['model'].values() if value.is_floating_point()} == {
        torch.float32}
    with pytest.raises(ValueError, match="precision='fp16' is not one of"):
        _cnn_config(tmp_path, precision='fp16')


@pytest.mark.parametrize('native', [True, False])
def test_auto_precision_takes_bf16_only_where_the_hardware_has_it(native, monkeypatch, caplog):
    from sat_seg_training import train as train_module

    monkeypatch.setattr(train_module, 'native_bf16', lambda device_type='cpu': native)
    assert train_module.resolve_precision('auto') == ('bf16' if native else 'fp32')
    assert train_module.resolve_precision('fp32') == 'fp32'
    with caplog.at_level('WARNING', logger='sat_seg_training.train'):
        assert train_module.resolve_precision('bf16') == 'bf16'
    assert ('emulated and much slower' in caplog.text) is not native


def test_native_bf16_reads_the_cpu_flags():
    from sat_seg_training.train import native_bf16

    with open('/proc/cpuinfo') as cpuinfo:
        flags = next(line for line in cpuinfo if line.startswith('flags')).split()
    assert native_bf16('cpu') == bool({'avx512_bf16', 'amx_bf16'} & set(flags))


@pytest.mark.parametrize('value', [None, 1.5, -1, True])
def test_encoder_config_refuses_a_bad_stem_blocks(value):
    from sat_seg_ros.modeling import CnnEncoderConfig

    with pytest.raises(ValueError, match='stem_blocks=.* must be an integer >= 0'):
        CnnEncoderConfig(stem_blocks=value)


def test_mask_features_start_as_nothing_learn_and_survive_save_and_widen(tmp_path):
    """deepen(fine_mask=True) computes what it came from; the new conv learns and is saved."""
    import torch

    from sat_seg_ros.backends.torch_backend import SamTilePredictor
    from sat_seg_ros.modeling import FineMaskDecoder, load_sam_model
    from sat_seg_training.models import build_model, count_parameters, deepen, widen

    fine = _scrambled(build_model('test-cnn-fine', seed=1))
    hq = deepen(fine, (1, 1, 1), fine_mask=True)
    assert hq.config.vision_config.fine_mask and isinstance(hq.mask_decoder, FineMaskDecoder)
    assert ({k: v.shape for k, v in hq.state_dict().items()}
            == {k: v.shape for k, v in build_model('test-cnn-hq').state_dict().items()})
    assert count_parameters(hq) > count_parameters(fine)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(_outputs(fine, pixels), _outputs(hq, pixels))
    predictor = SamTilePredictor(hq, 'box')
    assert torch.equal(SamTilePredictor(fine, 'box')(pixels).detach(), predictor(pixels).detach())
    # The zero conv gets a gradient from the tile logits (the runtime's and training's path).
    predictor.train()
    predictor(pixels).square().sum().backward()
    assert hq.vision_encoder.mask_features[1].weight.grad.abs().sum() > 0
    with torch.no_grad():
        hq.vision_encoder.mask_features[1].weight.normal_(generator=torch.Generator()
                                                          .manual_seed(4))
    hq.eval()
    assert not torch.equal(_outputs(fine, pixels), _outputs(hq, pixels))
    hq.save_pretrained(tmp_path / 'hq')
    loaded = load_sam_model(tmp_path / 'hq')
    assert loaded.config.vision_config.fine_mask
    assert torch.equal(_outputs(hq, pixels), _outputs(loaded, pixels))
    # Image embeddings alone are not enough for it; with their mask features they are.
    boxes = torch.tensor([[[0., 0., 64., 64.]]] * 2)
    features = loaded.get_image_features(pixels)
    with pytest.raises(ValueError, match='needs the mask_features'):
        loaded(image_embeddings=features['image_embeddings'], input_boxes=boxes)
    with torch.no_grad():
        assert torch.equal(loaded(input_boxes=boxes, **features).pred_masks,
                           _outputs(loaded, pixels))
    # Deepened further and widened (the stem too, which feeds the mask features): the same.
    assert torch.equal(_outputs(hq, pixels), _outputs(deepen(hq, (1, 1, 2)), pixels))
    wider = widen(hq, (24, 24, 32), stem_channels=(8, 16), fuse_channels=24)
    assert wider.vision_encoder.mask_features[0][0].weight.shape[:2] == (4, 16)
    assert torch.allclose(_outputs(hq, pixels), _outputs(wider, pixels), atol=1e-4)
    with pytest.raises(ValueError, match='fine_mask=False.*never cut'):
        deepen(hq, (1, 1, 1), fine_mask=False)


def test_training_grows_the_mask_features_from_a_fine_checkpoint(tmp_path):
    from sat_seg_training.train import read_checkpoint, train

    fine = _cnn_config(tmp_path / 'fine', architecture='test-cnn-fine', steps=2)
    train(fine, progress=False)
    hq = _cnn_config(tmp_path / 'hq', architecture='test-cnn-hq', deepen=True, steps=30,
                     init_from=str(Path(fine.out_dir) / 'last.pt'))
    train(hq, progress=False)
    losses = _losses(hq.out_dir)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    weights = read_checkpoint(Path(hq.out_dir) / 'last.pt')['model']
    assert weights['vision_encoder.mask_features.1.weight'].abs().sum() > 0
    with pytest.raises(ValueError, match="another architecture than 'test-cnn-hq'.*deepen"):
        train(_cnn_config(tmp_path / 'refused', architecture='test-cnn-hq',
                          init_from=str(Path(fine.out_dir) / 'last.pt')), progress=False)
