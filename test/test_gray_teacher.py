"""The colour-to-gray feature loss (gray_teacher_weight): its tiles, its value, a run with it."""

from pathlib import Path

import numpy as np
import pytest
from test_train import assert_resumes_exactly, first_step_records, micro_config

from sat_seg_ros.tiling import to_luma
from sat_seg_training.batches import augment, augment_torch
from sat_seg_training.train import gray_teacher_loss, train


def colour_tiles(count=40, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(70, 180, (count, size, size, 3)).astype(np.float32)


def test_kept_colour_tiles_are_the_gray_tiles_originals_and_change_no_draw():
    tiles = colour_tiles()
    masks = np.zeros(tiles.shape[:3], np.float32)
    plain = augment(tiles, masks, np.random.default_rng(5), 0.0, 0.5, 0.1, 0.3)
    rng = np.random.default_rng(5)
    out, out_masks, colour, gray = augment(tiles, masks, rng, 0.0, 0.5, 0.1, 0.3,
                                           keep_colour=True)
    after = rng.random()
    rng = np.random.default_rng(5)
    augment(tiles, masks, rng, 0.0, 0.5, 0.1, 0.3)
    assert rng.random() == after  # the same draws, so runs without it are unchanged
    np.testing.assert_array_equal(out, plain[0])
    np.testing.assert_array_equal(out_masks, plain[1])
    is_gray = np.ptp(out, axis=3).max(axis=(1, 2)) < 1e-3
    np.testing.assert_array_equal(gray, is_gray)
    assert 0 < gray.sum() < len(gray)
    np.testing.assert_array_equal(colour[~gray], out[~gray])  # colour tiles: themselves
    assert np.ptp(colour[gray], axis=3).max() > 1.0  # gray tiles: a colour original
    # ... whose luminance is the gray tile (channel_gamma keeps them in [0, 1]: no clipping)
    for original, tile in zip(colour[gray], out[gray]):
        np.testing.assert_allclose(to_luma(original / 255.0) * 255.0, tile[..., 0], atol=1e-3)


def test_the_torch_pipeline_keeps_the_same_colour_originals():
    import torch

    tiles = torch.from_numpy(colour_tiles())
    masks = torch.zeros(tiles.shape[:3])
    plain, _ = augment_torch(tiles, masks, torch.Generator().manual_seed(1), 0.0, 0.5, 0.1, 0.3)
    out, _, colour, gray = augment_torch(tiles, masks, torch.Generator().manual_seed(1), 0.0,
                                         0.5, 0.1, 0.3, keep_colour=True)
    assert torch.equal(out, plain)
    gray = gray.numpy()
    assert 0 < gray.sum() < len(gray)
    out, colour = out.numpy(), colour.numpy()
    np.testing.assert_array_equal(colour[~gray], out[~gray])
    assert np.ptp(colour[gray], axis=3).max() > 1.0
    luma = (colour[gray] * np.array([0.299, 0.587, 0.114], np.float32)).sum(-1)
    np.testing.assert_allclose(luma, out[gray][..., 0], atol=1e-2)


def test_the_loss_is_zero_where_the_gray_embedding_matches_the_colour_one():
    import torch

    torch.manual_seed(0)
    teacher = torch.nn.Conv2d(3, 4, 3, padding=1)

    class Wrapped(torch.nn.Module):  # a vision encoder's output type
        def forward(self, pixels):
            return type('Out', (), {'last_hidden_state': teacher(pixels)})()

    wrapped = Wrapped()
    colour = torch.randn(6, 3, 8, 8)
    gray = torch.tensor([True, False, True, False, False, True])
    with torch.no_grad():
        same = teacher(colour)
    assert float(gray_teacher_loss(wrapped, same, colour, gray)) == pytest.approx(0.0, abs=1e-7)
    other = same.clone()
    other[~gray] += 5.0  # the colour tiles' embeddings do not count
    assert float(gray_teacher_loss(wrapped, other, colour, gray)) == pytest.approx(0.0, abs=1e-7)
    other[gray] += 1.0
    assert float(gray_teacher_loss(wrapped, other, colour, gray)) > 0.1
    student = same.clone().requires_grad_(True)
    none = gray_teacher_loss(wrapped, student, colour, torch.zeros(6, dtype=torch.bool))
    assert float(none.detach()) == 0.0 and none.requires_grad  # a chunk without gray tiles


def micro_colour_config(tmp_path, data, **changes):
    """micro_config on colour scenes from ``data``: a CNN run, half its tiles turned gray."""
    values = {'architecture': 'test-cnn', 'data': str(data), 'scenes': 0,
              'val_data': str(data), 'val_scenes': 2, 'steps': 4, 'stage': 'sam',
              'input_color': 'rgb', 'gray_fraction': 0.5, 'dense_weight': 0.5,
              'positive_fraction': 0.5}
    values.update(changes)
    return micro_config(tmp_path, **values)


@pytest.mark.parametrize('pipeline', ['numpy', 'torch'])
def test_a_run_with_the_gray_teacher_adds_its_loss_and_resumes_exactly(tmp_path, pipeline):
    from sat_seg_training.synth import generate

    data = tmp_path / 'colour'
    generate(data, 6, seed=4, contact=0, color=True)
    start = micro_colour_config(tmp_path / 'start', data, steps=3)
    train(start, progress=False)
    init = str(Path(start.out_dir) / 'last.pt')
    first = first_step_records(tmp_path, lambda folder, weight: micro_colour_config(
        folder, data, steps=1, init_from=init, gray_teacher_weight=weight, pipeline=pipeline))
    # Same start, same batch: the gray tiles' embeddings differ from their colour originals',
    # and the logged term is exactly what the loss gained.
    assert 'gray_teacher' not in first[0.0]
    assert first[1.0]['gray_teacher'] > 1e-4
    assert first[1.0]['loss'] - first[0.0]['loss'] == pytest.approx(
        first[1.0]['gray_teacher'], abs=1e-5)
    # The frozen encoder comes from init_from again when the run resumes.
    assert_resumes_exactly(tmp_path, lambda folder: micro_colour_config(
        folder, data, steps=6, init_from=init, gray_teacher_weight=1.0, pipeline=pipeline))


def test_the_gray_teacher_names_what_it_needs(tmp_path):
    data = tmp_path / 'none'
    with pytest.raises(ValueError, match='gray_teacher_weight'):
        micro_colour_config(tmp_path, data, gray_teacher_weight=-1.0)
    for changes in ({}, {'input_color': 'luma', 'init_from': 'x.pt'},
                    {'gray_fraction': 0.0, 'init_from': 'x.pt'},
                    {'augment': False, 'init_from': 'x.pt'}):
        with pytest.raises(ValueError, match='gray_teacher_weight=1.0 needs'):
            micro_colour_config(tmp_path, data, gray_teacher_weight=1.0, **changes)
