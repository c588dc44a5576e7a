"""The scene distillation (scene_teacher_weight): the teacher's maps in the pool, a run with it."""

from pathlib import Path

import numpy as np
import pytest
from test_train import assert_resumes_exactly, first_step_records, micro_config

from sat_seg_ros.segmenter import Segmenter
from sat_seg_training.batches import augment_torch, sample_batch
from sat_seg_training.tile_pool import (build_pool, cut_scene, iter_scenes, make_training_pool,
                                        pool_digest, scene_teacher_map)
from sat_seg_training.train import train
from sat_seg_training.train_config import TrainConfig


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
    """Return a model folder of the micro family (128 px frames, 64 px tiles) to teach with."""
    folder = tmp_path_factory.mktemp('teacher')
    config = micro_config(folder, steps=2)
    train(config, progress=False)
    return Path(config.out_dir) / 'best_model'


def scenes_of(config):
    return list(iter_scenes(config.data, config.scenes, config.seed, False))


def test_the_teachers_map_is_cut_exactly_like_the_mask(tmp_path):
    config = micro_config(tmp_path)
    scene = next(s for s in scenes_of(config) if s.mask.any())
    # The scene's own mask as the teacher's map: the sixth part must equal the masks' part.
    parts = cut_scene(scene, config, np.random.default_rng(0), np.random.default_rng(1),
                      scene.mask.astype(np.float32))
    assert len(parts) == 6
    np.testing.assert_array_equal(parts[5], parts[1])
    plain = cut_scene(scene, config, np.random.default_rng(0), np.random.default_rng(1))
    assert len(plain) == 5
    for with_map, without in zip(parts, plain):  # the map changes no draw
        np.testing.assert_array_equal(with_map, without)


def test_the_pool_holds_the_teachers_map_of_each_gray_scene(tmp_path, teacher_dir):
    config = micro_config(tmp_path, scene_teacher_weight=1.0, scene_teacher=str(teacher_dir))
    scenes = scenes_of(config)
    pool = build_pool(scenes, config, config.seed)
    plain = build_pool(scenes, micro_config(tmp_path), config.seed)
    assert plain.teacher is None and pool.teacher.shape == pool.masks.shape
    for name in ('tiles', 'masks', 'size_index', 'positive'):
        np.testing.assert_array_equal(getattr(pool, name), getattr(plain, name))
    assert pool_digest(pool) != pool_digest(plain)
    assert 0 < pool.teacher.mean() < 255  # a trained model's probabilities, not a constant
    # The map is what the Segmenter makes of the scene's luminance (a colour scene here).
    colour = np.repeat(scenes[0].image[..., None], 3, axis=2) if scenes[0].image.ndim == 2 \
        else scenes[0].image
    colour = colour.copy()
    colour[..., 0] = 255 - colour[..., 0]  # channels that differ, so luminance matters
    segmenter = Segmenter.from_model(teacher_dir)
    scene = type(scenes[0])(colour, scenes[0].mask)
    gray = (0.299 * colour[..., 0] + 0.587 * colour[..., 1] + 0.114 * colour[..., 2])
    np.testing.assert_allclose(scene_teacher_map(segmenter, scene, config),
                               segmenter.probability(np.round(gray).astype(np.uint8)),
                               atol=1e-6)
    as_made = micro_config(tmp_path, scene_teacher_weight=1.0, scene_teacher=str(teacher_dir),
                           scene_teacher_luma=False)
    np.testing.assert_allclose(scene_teacher_map(segmenter, scene, as_made),
                               segmenter.probability(colour), atol=1e-6)
    assert scene_teacher_map(None, scene, config) is None


def test_a_synth_pool_made_by_worker_processes_holds_the_maps(tmp_path, teacher_dir):
    common = {'data': 'synth', 'scenes': 2, 'data_workers': 2, 'scene_teacher': str(teacher_dir)}
    taught = make_training_pool(micro_config(tmp_path, scene_teacher_weight=1.0, **common))
    plain = make_training_pool(micro_config(tmp_path, **common))
    assert taught.teacher.shape == taught.masks.shape and plain.teacher is None
    np.testing.assert_array_equal(taught.masks, plain.masks)


def test_the_teacher_channel_turns_and_mirrors_with_the_mask(tmp_path, teacher_dir):
    import torch

    config = micro_config(tmp_path, batch_size=16, positive_fraction=0.5)
    pool = build_pool(scenes_of(config), config, config.seed)
    pool.teacher = pool.masks.copy()  # any change to one and not the other shows
    tiles, masks, chosen = sample_batch(pool, config, np.random.default_rng(3))
    assert masks.shape == (16, 64, 64, 2) and masks[..., 0].any()
    np.testing.assert_array_equal(masks[..., 0], masks[..., 1])
    target = torch.from_numpy(pool.masks[chosen]).float() / 255.0
    stacked = torch.stack([target, torch.from_numpy(pool.teacher[chosen]).float() / 255.0], -1)
    generator = torch.Generator().manual_seed(4)
    _, out = augment_torch(torch.from_numpy(pool.tiles[chosen]).float(), stacked, generator,
                           config.invert_probability)
    assert torch.equal(out[..., 0], out[..., 1]) and not torch.equal(out[..., 0], target)


def test_settings_it_cannot_run_with_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match='scene_teacher_weight=-1.0 must be >= 0'):
        micro_config(tmp_path, scene_teacher_weight=-1.0)
    with pytest.raises(ValueError, match="scene_teacher_weight=1.0 trains stage 'sam'"):
        micro_config(tmp_path, scene_teacher_weight=1.0, stage='dense',
                     architecture='test-cnn', crop_size=64)
    assert TrainConfig.__dataclass_fields__['scene_teacher_weight'].default == 0.0


@pytest.mark.parametrize('pipeline', ['numpy', 'torch'])
def test_a_run_with_the_scene_teacher_adds_its_loss_and_resumes(tmp_path, pipeline, teacher_dir):
    common = {'stage': 'sam', 'train_prompt': 'inference', 'prompt_mode': 'box',
              'positive_fraction': 0.5, 'pipeline': pipeline,
              'scene_teacher': str(teacher_dir)}
    first = first_step_records(tmp_path, lambda folder, weight: micro_config(
        folder, steps=1, scene_teacher_weight=weight, **common))
    # Same start, same batch: the term is the cross-entropy against soft targets (> 0), and
    # the logged loss gained exactly that; a run without it logs no term.
    assert 'scene_teacher' not in first[0.0]
    assert first[1.0]['scene_teacher'] > 1e-3
    assert first[1.0]['loss'] - first[0.0]['loss'] == pytest.approx(
        first[1.0]['scene_teacher'], abs=1e-5)
    assert_resumes_exactly(tmp_path, lambda folder: micro_config(
        folder, steps=6, scene_teacher_weight=1.0, **common))
