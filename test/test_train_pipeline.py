"""Training's GPU-minded paths, run on the CPU: synth data, torch pipeline, planned steps.

Scenes made on the fly (data 'synth'), the batch drawn and augmented in torch (pipeline
'torch') and the step count planned from a wall time (plan_minutes).
"""

import json
from pathlib import Path

import numpy as np
import pytest
from test_train import assert_resumes_exactly, micro_config

from sat_seg_training.batches import (augment_torch, pool_groups, preprocess_torch,
                                      sample_ids_vectorized)
from sat_seg_training.tile_pool import build_synth_pool, iter_scenes, pool_digest, TilePool
from sat_seg_training.train import export_checkpoint, plan_steps, read_checkpoint, train


def synth_config(tmp_path, **changes):
    values = {'data': 'synth', 'scenes': 3, 'model_sizes': [256], 'size_weights': [1.0],
              'tile_size': 64, 'seed': 4, 'negatives_per_scene': 2}
    values.update(changes)
    return micro_config(tmp_path, **values)


def test_synth_scenes_are_the_scenes_sat_seg_synth_writes(tmp_path):
    from sat_seg_training.dataset import load_dataset
    from sat_seg_training.synth import generate

    generate(tmp_path / 'set', 3, seed=9, neg_frac=0.34, contact=0, color=True)
    written = list(load_dataset(tmp_path / 'set'))
    made = list(iter_scenes('synth', 3, seed=9, color=True,
                            synth=synth_source(neg_frac=0.34)))
    assert len(made) == 3 and sum(not scene.mask.any() for scene in made) == 1
    for record, scene in zip(written, made):
        assert np.array_equal(record.read_image(), scene.image)
        truth = record.read_mask() if record.positive else np.zeros(scene.mask.shape, bool)
        assert np.array_equal(truth, scene.mask)


def synth_source(**changes):
    from sat_seg_training.tile_pool import SynthSource

    return SynthSource(**changes)


def test_the_synth_pool_does_not_depend_on_the_number_of_processes(tmp_path):
    one = build_synth_pool(synth_config(tmp_path, data_workers=1))
    two = build_synth_pool(synth_config(tmp_path, data_workers=2))
    assert pool_digest(one) == pool_digest(two) and len(one.tiles) > 0
    assert one.positive.any() and (~one.positive).any()
    assert np.array_equal(one.object_px, two.object_px)


def test_a_synth_run_with_photographs_trains_and_validates_on_synth_scenes(tmp_path):
    import cv2

    photos = tmp_path / 'photos'
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):  # textured "aerial" images of our own, big enough to crop
        image = cv2.GaussianBlur(rng.integers(0, 255, (300, 300, 3), np.uint8), (7, 7), 0)
        cv2.imwrite(str(photos / ('field%d.png' % index)), image)
    config = synth_config(tmp_path, val_data='synth', val_scenes=2, backgrounds=str(photos),
                          photo_fraction=1.0, input_color='rgb', steps=3)
    summary = train(config, progress=False)
    assert summary['steps'] == 3 and summary['best']['step'] == 3
    # The checkpoint names its backgrounds folder; exporting it does not need the folder.
    for photo in photos.iterdir():
        photo.unlink()
    photos.rmdir()
    export_checkpoint(Path(config.out_dir) / 'last.pt', tmp_path / 'exported')
    assert (tmp_path / 'exported' / 'model.safetensors').is_file()
    # A run needs it: refused before anything is written.
    missing = synth_config(tmp_path / 'other', backgrounds=str(tmp_path / 'missing'))
    with pytest.raises(ValueError, match='does not exist'):
        train(missing, progress=False)
    assert not (tmp_path / 'other').exists()
    with pytest.raises(ValueError, match='scenes >= 1'):
        synth_config(tmp_path, scenes=0)


def toy_pool(rng):
    count = 400
    positive = np.arange(count) % 4 == 0
    size_index = (np.arange(count) // 4) % 2  # both sizes hold positives and negatives
    return TilePool(np.zeros((count, 8, 8), np.uint8), np.zeros((count, 8, 8), np.uint8),
                    size_index, positive, rng.uniform(10, 1000, count).astype(np.float32))


def test_vectorised_draws_keep_the_batch_shares_and_follow_the_hardness(tmp_path):
    rng = np.random.default_rng(1)
    pool = toy_pool(rng)
    config = micro_config(tmp_path, batch_size=4000, positive_fraction=0.3,
                          model_sizes=[128, 256], size_weights=[0.75, 0.25],
                          hard_negative_fraction=1.0, hard_positive_fraction=0.0)
    hardness = np.full(len(pool.positive), 1e-6, np.float32)
    hard_negative = int(np.flatnonzero(~pool.positive & (pool.size_index == 0))[7])
    hardness[hard_negative] = 1.0
    ids = sample_ids_vectorized(pool, config, rng, hardness, pool_groups(pool, 2))
    assert ids.shape == (4000,)
    assert abs(pool.positive[ids].mean() - 0.3) < 0.03
    assert abs((pool.size_index[ids] == 0).mean() - 0.75) < 0.03
    negatives_at_0 = ids[~pool.positive[ids] & (pool.size_index[ids] == 0)]
    assert (negatives_at_0 == hard_negative).mean() > 0.5  # drawn by hardness, not uniformly
    positives = ids[pool.positive[ids]]
    assert len(np.unique(positives)) > 50  # hard_positive_fraction 0: uniform


def test_torch_augmentation_keeps_each_tile_on_its_mask():
    import torch

    rng = np.random.default_rng(2)
    masks = np.zeros((64, 32, 32), np.float32)
    for index in range(64):  # an off-centre block: rotations and mirrors move it
        y, x = rng.integers(0, 20, 2)
        masks[index, y:y + 8, x:x + 12] = 1.0
    tiles = np.repeat(masks[..., None] * 200.0 + 20.0, 3, axis=3)
    generator = torch.Generator().manual_seed(0)
    out_tiles, out_masks = augment_torch(torch.from_numpy(tiles), torch.from_numpy(masks),
                                         generator, invert_probability=0.0, gray_fraction=0.5)
    out_tiles, out_masks = out_tiles.numpy(), out_masks.numpy()
    assert out_tiles.shape == tiles.shape and out_masks.shape == masks.shape
    assert 0.0 <= out_tiles.min() and out_tiles.max() <= 255.0
    assert not np.array_equal(out_masks, masks)  # some tiles were turned or mirrored
    for tile, mask in zip(out_tiles, out_masks):
        assert mask.sum() == 96
        inside, outside = tile[mask > 0.5].mean(), tile[mask < 0.5].mean()
        assert inside > outside + 50  # the block is still where the mask says
    gray = np.ptp(out_tiles, axis=3).max(axis=(1, 2)) < 1e-3
    assert 0.25 < gray.mean() < 0.75  # gray_fraction of the tiles became three equal channels
    curved, curved_masks = augment_torch(torch.from_numpy(tiles), torch.from_numpy(masks),
                                         torch.Generator().manual_seed(0), 0.0, 0.0,
                                         color_gain=0.3, channel_gamma=0.5)
    for tile, mask in zip(curved.numpy(), curved_masks.numpy()):
        assert tile[mask > 0.5].mean() > tile[mask < 0.5].mean() + 50
    assert np.abs(curved.numpy() - out_tiles).mean() > 1.0
    inverted, _ = augment_torch(torch.from_numpy(tiles), torch.from_numpy(masks),
                                torch.Generator().manual_seed(0), invert_probability=1.0)
    for tile, mask in zip(inverted.numpy(), out_masks):
        assert tile[mask > 0.5].mean() < tile[mask < 0.5].mean()


def test_torch_preprocessing_matches_the_runtime():
    import torch

    from sat_seg_ros.backends import preprocess_tiles

    tiles = np.random.default_rng(3).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    for size in (32, 64):
        expected = preprocess_tiles(tiles, size)
        got = preprocess_torch(torch.from_numpy(tiles), size).numpy()
        tolerance = 1e-5 if size == 32 else 0.05  # resize: OpenCV's and torch's bilinear
        assert np.abs(got - expected).max() < tolerance
    gray = preprocess_torch(torch.from_numpy(tiles[..., 0]), 32).numpy()
    assert np.abs(gray - preprocess_tiles(tiles[..., :1], 32)).max() < 1e-5


def test_the_torch_pipeline_learns_and_resumes_exactly(tmp_path):
    config = micro_config(tmp_path / 'learn', steps=40, positive_fraction=0.5, pipeline='torch')
    train(config, progress=False)
    history = read_checkpoint(Path(config.out_dir) / 'last.pt')['history']
    losses = [entry['loss'] for entry in history if 'loss' in entry]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    assert_resumes_exactly(tmp_path, lambda folder: micro_config(folder, steps=6,
                                                                 pipeline='torch'))
    with pytest.raises(ValueError, match="stage 'dense'"):
        micro_config(tmp_path, pipeline='torch', stage='dense', architecture='test-cnn',
                     crop_size=32)
    with pytest.raises(ValueError, match='pipeline'):
        micro_config(tmp_path, pipeline='jax')


def test_planned_steps_fill_the_minutes_and_a_resume_keeps_them(tmp_path):
    config = micro_config(tmp_path, steps=0, plan_minutes=2.0)
    # 10 steps/s, 30 s of the 120 spent at step 300: 97 % of the 90 s left, 873 steps.
    assert plan_steps(config, 300, 10.0, 30.0) == 300 + 873
    assert plan_steps(config, 300, 10.0, 500.0) == 301  # over time: one more step
    quick = micro_config(tmp_path, steps=0, plan_minutes=0.04, warmup_steps=16)
    summary = train(quick, progress=False)
    planned = read_checkpoint(Path(quick.out_dir) / 'last.pt')['planned_steps']
    assert summary['steps'] == summary['planned_steps'] == planned > 16
    assert summary['stop_reason'] == 'done'
    again = train(quick, progress=False)  # resumed: the plan stands, nothing left to do
    assert again['steps'] == planned
    log = json.loads((Path(quick.out_dir) / 'summary.json').read_text())
    assert log['planned_steps'] == planned
    with pytest.raises(ValueError, match='plan_minutes'):
        micro_config(tmp_path, steps=5, plan_minutes=1.0)
