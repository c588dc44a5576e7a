"""Training: loss goes down, frozen parts stay bit-identical, resume is exact, presets load."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sat_seg_training.batches import augment, jittered_boxes, miss_scores, sample_ids
from sat_seg_training.tile_pool import (_concatenate_consuming, build_pool, iter_scenes,
                                        load_scenes, make_training_pool, pool_digest, Scene)
from sat_seg_training.train import read_checkpoint, train
from sat_seg_training.train_config import load_config, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def micro_config(tmp_path, **changes):
    """Return a seconds-long run: 64 px tiles of 128 px frames, a few-thousand-parameter SAM."""
    values = {'name': 'test', 'out_dir': str(tmp_path / 'run'), 'architecture': 'test-micro',
              'data': 'shapes', 'scenes': 6, 'val_data': 'shapes', 'val_scenes': 2,
              'model_sizes': [128], 'size_weights': [1.0], 'tile_size': 64, 'batch_size': 4,
              'steps': 6, 'lr': 3e-3, 'warmup_steps': 1, 'val_every': 1000,
              'checkpoint_every': 1000, 'log_every': 1, 'threads': 1}
    values.update(changes)
    return TrainConfig(**values)


def final_state(run_dir):
    return read_checkpoint(Path(run_dir) / 'last.pt')['model']


def first_step_records(tmp_path, make):
    """Return {weight: first log record} of one step of ``make(folder, weight)`` at 0 and 1.

    The same start and batch, so the two losses differ by the term the weight turns on.
    """
    records = {}
    for weight in (0.0, 1.0):
        config = make(tmp_path / str(weight), weight)
        train(config, progress=False)
        records[weight] = read_checkpoint(Path(config.out_dir) / 'last.pt')['history'][0]
    return records


def assert_resumes_exactly(tmp_path, make, stop=3):
    """Train ``make(folder)``'s config straight through, and stopped and resumed: same bits."""
    import torch

    straight, interrupted = make(tmp_path / 'a'), make(tmp_path / 'b')
    train(straight, progress=False)
    train(interrupted, progress=False, stop_at_step=stop)
    train(interrupted, progress=False)
    a, b = final_state(straight.out_dir), final_state(interrupted.out_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_few_steps_lower_the_loss(tmp_path):
    config = micro_config(tmp_path, steps=40, positive_fraction=0.5)
    summary = train(config, progress=False)
    history = json.loads(json.dumps(read_checkpoint(Path(config.out_dir) / 'last.pt')['history']))
    losses = [h['loss'] for h in history if 'loss' in h]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert summary['steps'] == 40
    assert (Path(config.out_dir) / 'best_model' / 'config.json').is_file()
    assert (Path(config.out_dir) / 'curves.png').stat().st_size > 1000
    info = json.loads((Path(config.out_dir) / 'best_model' / 'sat_seg.json').read_text())
    assert info['prompt_mode'] == 'box' and info['provenance']['recipe'] == 'test'
    assert info['input_color'] == 'luma'  # it learnt from gray tiles only


def test_peak_weight_reaches_the_training_loss(tmp_path):
    """Same seed, same first batch: the logged loss grows by the (positive) peak term."""
    first = first_step_records(tmp_path, lambda folder, weight: micro_config(
        folder, steps=1, peak_weight=2.0 * weight, peak_pixels=32))
    assert first[1.0]['loss'] > first[0.0]['loss'] + 0.05


def test_rank_weight_reaches_the_training_loss_and_resumes_exactly(tmp_path):
    """Same seed, same first batch: the logged loss grows by the (positive) rank term."""
    first = first_step_records(tmp_path, lambda folder, weight: micro_config(
        folder, steps=1, rank_weight=weight, rank_margin=4.0, positive_fraction=0.5))
    assert first[1.0]['loss'] > first[0.0]['loss'] + 0.05
    assert_resumes_exactly(tmp_path, lambda folder: micro_config(
        folder, steps=6, rank_weight=1.0, positive_fraction=0.5))


def test_frozen_parameters_stay_bit_identical(tmp_path):
    import torch

    from sat_seg_training.models import build_model

    config = micro_config(tmp_path, freeze=['vision_encoder', 'prompt_encoder'],
                          train_prompt='bbox_jitter', loss='dice_ce', optimizer='adam',
                          positive_fraction=1.0, steps=3)
    initial = build_model('test-micro', seed=config.seed).state_dict()
    train(config, progress=False)
    trained = final_state(config.out_dir)
    frozen = [k for k in initial if k.startswith(('vision_encoder', 'prompt_encoder'))]
    assert frozen
    for key in frozen:
        assert torch.equal(initial[key], trained[key]), key
    decoder = [k for k in initial if k.startswith('mask_decoder')]
    assert any(not torch.equal(initial[k], trained[k]) for k in decoder)


def test_lr_scale_trains_a_part_at_its_own_rate_and_resumes_exactly(tmp_path):
    from sat_seg_training.models import build_model

    # Adam's step is at most about the rate whatever the gradient's size: at 1e-4 x the rate
    # (3e-3) the decoder's weights move less than 3 x 3e-7 in three steps.
    config = micro_config(tmp_path, lr_scale={'mask_decoder': 1e-4}, optimizer='adam',
                          positive_fraction=1.0, steps=3)
    initial = build_model('test-micro', seed=config.seed).state_dict()
    train(config, progress=False)
    trained = final_state(config.out_dir)

    def largest_move(prefix):
        return max(float((trained[k].float() - initial[k].float()).abs().max())
                   for k in initial if k.startswith(prefix) and initial[k].is_floating_point())

    assert largest_move('vision_encoder') > 1e-3
    assert 0 < largest_move('mask_decoder') < 1.5e-6
    groups = read_checkpoint(Path(config.out_dir) / 'last.pt')['optimizer']['param_groups']
    assert [g['lr_scale'] for g in groups] == [1.0, 1e-4]
    assert groups[1]['lr'] == pytest.approx(1e-4 * groups[0]['lr'])
    assert_resumes_exactly(tmp_path, lambda folder: micro_config(
        folder, steps=5, lr_scale={'mask_decoder': 3.0, 'mask_decoder.iou': 0.5}))


def test_parameter_groups_take_the_longest_prefix_and_refuse_one_that_matches_nothing():
    from sat_seg_training.train import parameter_groups

    named = [('encoder.a', 'A'), ('decoder.b', 'B'), ('decoder.head.c', 'C')]
    groups = parameter_groups(named, {'decoder': 2.0, 'decoder.head': 5.0})
    assert [(g['params'], g['lr_scale']) for g in groups] == [
        (['A'], 1.0), (['B'], 2.0), (['C'], 5.0)]
    assert parameter_groups(named, {}) == [{'params': ['A', 'B', 'C'], 'lr_scale': 1.0}]
    with pytest.raises(ValueError, match='decodr.*match no trainable parameter'):
        parameter_groups(named, {'decodr': 2.0})


@pytest.mark.parametrize('bad', [{'mask_decoder': 0}, {'mask_decoder': -1.0}, ['mask_decoder'],
                                 {'': 2.0}, {'mask_decoder': True}])
def test_lr_scale_refuses_what_is_not_a_positive_factor_per_prefix(tmp_path, bad):
    with pytest.raises(ValueError, match='lr_scale'):
        micro_config(tmp_path, lr_scale=bad)


def test_resuming_with_other_parameter_groups_is_refused_by_name(tmp_path):
    import torch

    config = micro_config(tmp_path, steps=2)
    train(config, progress=False)
    # A checkpoint written before lr_scale existed counts it as unchanged: the groups say no.
    path = Path(config.out_dir) / 'last.pt'
    checkpoint = read_checkpoint(path)
    del checkpoint['train_config']['lr_scale']
    torch.save(checkpoint, str(path))
    with pytest.raises(ValueError, match='other parameter groups.*--no-resume'):
        train(micro_config(tmp_path, steps=2, lr_scale={'mask_decoder': 2.0}), progress=False)


def test_resume_continues_exactly(tmp_path):
    import torch

    straight = micro_config(tmp_path / 'a', steps=6)
    train(straight, progress=False)
    interrupted = micro_config(tmp_path / 'b', steps=6)
    first = train(interrupted, progress=False, stop_at_step=3)
    assert first['steps'] == 3
    assert read_checkpoint(Path(interrupted.out_dir) / 'last.pt')['step'] == 3
    second = train(interrupted, progress=False)
    assert second['steps'] == 6
    a, b = final_state(straight.out_dir), final_state(interrupted.out_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_max_minutes_counts_the_time_of_every_invocation(tmp_path):
    # The budget is cumulative (elapsed_s in last.pt): after earlier invocations that took an hour,
    # a resume with max_minutes=30 runs one step, saves and stops, though it has itself run for
    # seconds; with max_minutes=90 the same resume runs to the end.
    import torch

    config = micro_config(tmp_path, steps=6)
    train(config, progress=False, stop_at_step=2)
    last = Path(config.out_dir) / 'last.pt'
    checkpoint = read_checkpoint(last)
    checkpoint['elapsed_s'] = 3600.0
    torch.save(checkpoint, str(last))
    used_up = train(micro_config(tmp_path, steps=6, max_minutes=30.0), progress=False)
    assert used_up['stop_reason'] == 'max_minutes' and used_up['steps'] == 3
    after = read_checkpoint(last)
    assert after['step'] == 3 and 3600.0 < after['elapsed_s'] < 3600.0 + 300.0
    rest = train(micro_config(tmp_path, steps=6, max_minutes=90.0), progress=False)
    assert rest['stop_reason'] == 'done' and rest['steps'] == 6


@pytest.mark.parametrize('pipeline', ['numpy', 'torch'])
def test_a_renewed_pool_brings_new_tiles_and_resumes_exactly(tmp_path, caplog, pipeline):
    import torch

    straight = micro_config(tmp_path / 'a', steps=6, renew_pool_every=2, pipeline=pipeline)
    with caplog.at_level('INFO', logger='sat_seg_training.train'):
        train(straight, progress=False)
    renewals = [m for m in caplog.messages if 'pool renewed' in m]
    assert [m.split(':')[0] for m in renewals] == ['step 2', 'step 4']  # none after the last
    state = read_checkpoint(Path(straight.out_dir) / 'last.pt')
    digests = [pool_digest(make_training_pool(straight, r)) for r in range(3)]
    assert len(set(digests)) == 3  # each round cuts other scenes
    assert state['pool_round'] == 2 and state['data_digest'] == digests[2]
    once = micro_config(tmp_path / 'once', steps=6, pipeline=pipeline)
    train(once, progress=False)
    a, c = final_state(straight.out_dir), final_state(once.out_dir)
    assert any(not torch.equal(a[key], c[key]) for key in a)  # the new tiles were trained on

    # Stopped mid-round (step 3), and on a renewal step (step 2: the run saves before renewing
    # and its resume makes the new round's pool): both resume bit-identically.
    for name, stop, stopped_round, due in (('b', 3, 1, False), ('c', 2, 0, True)):
        interrupted = micro_config(tmp_path / name, steps=6, renew_pool_every=2,
                                   pipeline=pipeline)
        caplog.clear()
        with caplog.at_level('INFO', logger='sat_seg_training.train'):
            train(interrupted, progress=False, stop_at_step=stop)
        stopped = read_checkpoint(Path(interrupted.out_dir) / 'last.pt')
        assert (stopped['step'], stopped['pool_round'], stopped['renew_due']) == (
            stop, stopped_round, due)
        assert sum('pool renewed' in m for m in caplog.messages) == stopped_round
        caplog.clear()
        with caplog.at_level('INFO', logger='sat_seg_training.train'):
            train(interrupted, progress=False)
        assert any('round 1' in m for m in caplog.messages
                   if m.startswith('building tile pool'))
        assert not any('pool differs' in m for m in caplog.messages)
        b = final_state(interrupted.out_dir)
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    with pytest.raises(ValueError, match='renew_pool_every'):
        micro_config(tmp_path, renew_pool_every=-1)


def test_resume_refuses_a_changed_config(tmp_path):
    config = micro_config(tmp_path, steps=2)
    train(config, progress=False)
    with pytest.raises(ValueError, match='different config'):
        train(micro_config(tmp_path, steps=3), progress=False)
    # Where and how long it runs may change: more threads, workers, another time limit, and the
    # precision (the weights and optimizer state are fp32 in either).
    summary = train(micro_config(tmp_path, steps=2, threads=2, workers=2, max_minutes=5.0,
                                 precision='auto'), progress=False)
    assert summary['steps'] == 2


def test_pool_keeps_positives_and_some_negatives(tmp_path):
    config = micro_config(tmp_path, negatives_per_scene=1)
    scenes = load_scenes('shapes', 5, seed=1)
    pool = build_pool(scenes, config, seed=0)
    positives_expected = sum(bool(s.mask.any()) for s in scenes)
    assert pool.tiles.shape[1:] == (64, 64) and pool.tiles.dtype == np.uint8
    assert pool.positive.sum() >= positives_expected
    assert (~pool.positive).sum() <= len(scenes)
    assert all(pool.masks[i].max() >= 128 for i in np.flatnonzero(pool.positive))


def test_pool_from_a_scene_iterator_equals_the_pool_from_a_list(tmp_path):
    # A large training set is streamed (iter_scenes) and its tiles concatenated without a second
    # copy; the pool must be what the list of scenes gives, tile for tile.
    config = micro_config(tmp_path, negatives_per_scene=1)
    scenes = load_scenes('shapes', 6, seed=2)
    listed = build_pool(scenes, config, seed=0)
    streamed = build_pool(iter_scenes('shapes', 6, seed=2), config, seed=0)
    assert pool_digest(listed) == pool_digest(streamed)
    assert np.array_equal(listed.object_px, streamed.object_px)
    parts = [np.arange(6).reshape(2, 3), np.arange(3).reshape(1, 3) + 10]
    expected = np.concatenate(parts)
    joined = _concatenate_consuming(parts)
    assert np.array_equal(joined, expected) and joined.dtype == expected.dtype and parts == []
    with pytest.raises(ValueError, match='no training scenes'):
        build_pool(iter(()), config, seed=0)


def test_size_jitter_cuts_each_scene_at_its_own_scale(tmp_path):
    # One 128 px scene with a 32x32 satellite, many times: without jitter every copy is cut
    # alike (the satellite 1024 px in each); with jitter 1.5 the model size of each copy is
    # drawn from [85, 192] (clipped to one 64 px tile), so the satellite's area varies within
    # 1024 / 1.5^2 .. 1024 * 1.5^2 and the grid falls on it at other places.
    mask = np.zeros((128, 128), bool)
    mask[40:72, 40:72] = True
    image = np.where(mask, 200, 60).astype(np.uint8)
    scenes = [Scene(image, mask)] * 40
    plain = build_pool(scenes, micro_config(tmp_path, negatives_per_scene=0), seed=0)
    assert set(plain.object_px.tolist()) == {1024.0}
    assert pool_digest(plain) == pool_digest(build_pool(
        scenes, micro_config(tmp_path, negatives_per_scene=0, size_jitter=1.0), seed=0))
    config = micro_config(tmp_path, negatives_per_scene=0, size_jitter=1.5)
    jittered = build_pool(scenes, config, seed=0)
    areas = np.unique(jittered.object_px)
    assert len(areas) > 10
    assert areas.min() >= 1024 / 1.5 ** 2 - 40 and areas.max() <= 1024 * 1.5 ** 2 + 60
    assert areas.min() < 800 and areas.max() > 1400
    assert jittered.tiles.shape[1:] == (64, 64) and (jittered.size_index == 0).all()
    assert all(jittered.masks[i].max() >= 128 for i in np.flatnonzero(jittered.positive))
    # The same seed draws the same pool; another seed another.
    assert pool_digest(build_pool(scenes, config, seed=0)) == pool_digest(jittered)
    assert pool_digest(build_pool(scenes, config, seed=1)) != pool_digest(jittered)
    for bad in (0.9, 2.5):
        with pytest.raises(ValueError, match='size_jitter'):
            micro_config(tmp_path, size_jitter=bad)


def test_a_training_set_with_a_box_but_no_mask_is_refused_before_it_is_read(tmp_path):
    from sat_seg_training.dataset import DatasetWriter

    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / 'data') as writer:
        writer.add('a.png', rng.integers(0, 255, (48, 64), dtype=np.uint8),
                   mask=np.zeros((48, 64), bool))
        writer.add('c.png', rng.integers(0, 255, (48, 64), dtype=np.uint8),
                   bbox_xywh=(1, 2, 3, 4))
    scenes = iter_scenes(str(tmp_path / 'data'), 0, seed=0)
    with pytest.raises(ValueError, match='c.png has a bbox but no mask'):
        next(scenes)


def test_small_object_power_draws_small_satellites_more_often(tmp_path):
    # Two scenes: a 6x6 satellite (one tile) and a 40x40 one spread over four 64 px tiles.
    small, large = np.zeros((128, 128), bool), np.zeros((128, 128), bool)
    small[10:16, 10:16] = True
    large[44:84, 44:84] = True
    image = np.full((128, 128), 100, np.uint8)
    config = micro_config(tmp_path, negatives_per_scene=0, positive_fraction=1.0,
                          batch_size=4000)
    pool = build_pool([Scene(image, small), Scene(image, large)], config, seed=0)
    assert pool.positive.tolist() == [True] * 5
    assert pool.object_px.tolist() == [36.0] + [1600.0] * 4
    uniform = sample_ids(pool, config, np.random.default_rng(0))
    assert abs(np.mean(uniform == 0) - 0.2) < 0.03  # one tile in five
    config.small_object_power = 0.5  # weights 1/6 against 4 x 1/40: the small one 0.625
    weighted = sample_ids(pool, config, np.random.default_rng(0))
    assert abs(np.mean(weighted == 0) - 0.625) < 0.03
    with pytest.raises(ValueError, match='small_object_power'):
        micro_config(tmp_path, small_object_power=-1)


def test_hard_positive_fraction_draws_missed_satellites_more_often(tmp_path):
    masks = [np.zeros((128, 128), bool) for _ in range(2)]
    masks[0][10:16, 10:16] = True
    masks[1][70:76, 70:76] = True
    image = np.full((128, 128), 100, np.uint8)
    config = micro_config(tmp_path, negatives_per_scene=0, positive_fraction=1.0,
                          batch_size=4000)
    pool = build_pool([Scene(image, m) for m in masks], config, seed=0)
    assert pool.positive.tolist() == [True, True]
    hardness = np.array([0.9, 0.1], np.float32)  # tile 0 missed, tile 1 found
    uniform = sample_ids(pool, config, np.random.default_rng(0), hardness)
    assert abs(np.mean(uniform == 0) - 0.5) < 0.03
    config.hard_positive_fraction = 0.5  # 0.5 uniform + 0.5 * 0.9 / 1.0: tile 0 at 0.70
    weighted = sample_ids(pool, config, np.random.default_rng(0), hardness)
    assert abs(np.mean(weighted == 0) - (0.5 * 0.5 + 0.5 * 0.901 / 1.002)) < 0.03
    with pytest.raises(ValueError, match='hard_positive_fraction'):
        micro_config(tmp_path, hard_positive_fraction=1.5)


def test_invert_probability_sets_the_share_of_negated_tiles_and_keeps_the_draws(tmp_path):
    # Tiles of one grey level: after augmentation a tile is dark (kept) or light (inverted),
    # whatever the gamma, contrast and noise drawn for it.
    tiles = np.full((400, 8, 8), 30.0, np.float32)
    masks = np.zeros((400, 8, 8), np.float32)
    shares = {}
    for probability in (0.0, 0.2, 1.0):
        rng = np.random.default_rng(3)
        out, _ = augment(tiles, masks, rng, probability)
        shares[probability] = float(np.mean(out.mean(axis=(1, 2)) > 127.5))
        shares[probability, 'next'] = rng.random()  # the generator's state after the batch
    assert shares[0.0] == 0.0 and shares[1.0] == 1.0
    assert 0.14 < shares[0.2] < 0.26
    assert shares[0.0, 'next'] == shares[0.2, 'next'] == shares[1.0, 'next']
    with pytest.raises(ValueError, match='invert_probability'):
        micro_config(tmp_path, invert_probability=-0.1)


def test_miss_scores_rank_dim_and_outshone_satellites_above_found_ones():
    import torch

    truth = torch.zeros(4, 6, dtype=torch.bool)
    truth[:3, 0] = True  # tile 3 has no satellite pixel
    near = torch.zeros(4, 6, dtype=torch.bool)
    near[:3, 1] = True  # pixel 1 is the satellite's surroundings: neither class
    logits = torch.full((4, 6), -6.0)
    logits[0, 0] = 6.0  # found: bright satellite, dark background
    logits[1, 0] = -2.0  # dim satellite
    logits[2, 0] = 6.0
    logits[2, 4] = 0.0  # bright satellite, a false blob at probability 0.5
    logits[:3, 1] = 9.0  # the surroundings do not count as background
    scores = miss_scores(logits, truth, near).numpy()
    assert scores[0] < 0.01 and scores[3] == 1.0
    assert scores[1] > 0.85 and 0.45 < scores[2] < 0.55
    logits[2, 4] = 6.0  # as bright as the satellite: outshone, a miss
    assert miss_scores(logits, truth, near).numpy()[2] > 0.99


def test_a_run_records_miss_scores_of_the_positives_it_saw(tmp_path):
    config = micro_config(tmp_path, steps=3, hard_positive_fraction=0.5, positive_fraction=1.0)
    train(config, progress=False)
    hardness = read_checkpoint(Path(config.out_dir) / 'last.pt')['hardness']
    pool = build_pool(load_scenes(config.data, config.scenes, config.seed), config, config.seed)
    seen = hardness[pool.positive] < 1.0
    assert seen.any() and (hardness[pool.positive] >= 0).all()
    assert (hardness[~pool.positive] == 1.0).all()  # no negative drawn: none updated


def test_jittered_boxes_contain_most_of_the_mask():
    masks = np.zeros((2, 64, 64), np.float32)
    masks[0, 10:30, 20:40] = 1
    boxes = jittered_boxes(masks, input_size=256, jitter=0.1, rng=np.random.default_rng(0))
    x0, y0, x1, y1 = boxes[0, 0] / 4
    assert abs(x0 - 20) <= 2 and abs(y0 - 10) <= 2 and abs(x1 - 40) <= 2 and abs(y1 - 30) <= 2
    assert tuple(boxes[1, 0]) == (0, 0, 256, 256)


def test_presets_load_and_validate():
    for path in sorted((ROOT / 'configs').glob('*.yaml')):
        config = load_config(str(path))
        assert config.steps > 0 or config.epochs > 0 or config.plan_minutes > 0, path
    report = load_config(str(ROOT / 'configs' / 'report.yaml'))
    assert report.freeze == ['vision_encoder', 'prompt_encoder']
    assert (report.loss, report.optimizer, report.lr, report.epochs) == ('dice_ce', 'adam',
                                                                         1e-5, 25)
    assert report.train_prompt == 'bbox_jitter'


def test_a_preset_builds_on_its_base(tmp_path):
    (tmp_path / 'first.yaml').write_text('name: first\nout_dir: runs/first\nsteps: 10\n'
                                         'lr: 3e-4\npositive_fraction: 0.5\n')
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'sub' / 'second.yaml').write_text(
        'base: ../first.yaml\nname: second\nout_dir: runs/second\nlr: 1e-4\n')
    (tmp_path / 'third.yaml').write_text(
        'base: sub/second.yaml\nname: third\nout_dir: runs/third\npositive_fraction: 0.25\n')
    config = load_config(str(tmp_path / 'third.yaml'), ['steps=20'])
    assert (config.name, config.out_dir, config.steps, config.lr, config.positive_fraction) == (
        'third', 'runs/third', 20, 1e-4, 0.25)
    # the stage 49 preset is stage 48's with two settings changed, and says nothing else
    stage48 = load_config(str(ROOT / 'configs' / 'cnn_stage48_cpu_noinvert.yaml'))
    stage49 = load_config(str(ROOT / 'configs' / 'cnn_stage49_cpu_negatives.yaml'))
    changed = {field.name for field in dataclasses.fields(TrainConfig)
               if getattr(stage48, field.name) != getattr(stage49, field.name)}
    assert changed == {'name', 'out_dir', 'invert_probability', 'positive_fraction'}


def test_print_config_writes_a_preset_that_runs_the_same(tmp_path, capsys):
    from sat_seg_ros.cli import main

    for path in sorted((ROOT / 'configs').glob('*.yaml')):
        assert main(['train', '--config', str(path), '--print-config', '--set', 'seed=7']) == 0
        printed = tmp_path / path.name
        printed.write_text(capsys.readouterr().out)
        assert not any(line.startswith('base:') for line in printed.read_text().splitlines())
        assert load_config(str(printed)) == load_config(str(path), ['seed=7']), path


def test_print_config_reads_presets_without_torch():
    import subprocess
    import sys

    code = ('import sys\n'
            'from sat_seg_ros.cli import main\n'
            'assert main(["train", "--config", sys.argv[1], "--print-config"]) == 0\n'
            'assert "torch" not in sys.modules, "printing a preset imported torch"\n')
    preset = ROOT / 'configs' / 'cnn_stage50_cpu_hardneg.yaml'
    done = subprocess.run([sys.executable, '-c', code, str(preset)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'hard_negative_fraction: 1.0' in done.stdout


@pytest.mark.parametrize('text, message', [
    ('base: loop.yaml\nname: loop\nout_dir: runs/loop\n', 'its own base'),
    ('base: nowhere.yaml\nname: loop\nout_dir: runs/loop\n', 'does not exist'),
    ('base: [a.yaml]\nname: loop\nout_dir: runs/loop\n', 'file name of another preset'),
    ('base: loop.yaml\nname: loop\n', 'sets its own out_dir'),
])
def test_a_bad_base_is_named(tmp_path, text, message):
    (tmp_path / 'loop.yaml').write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(str(tmp_path / 'loop.yaml'))
    with pytest.raises(ValueError, match='unknown training setting'):
        load_config(None, ['base=loop.yaml'])


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match='architecture'):
        TrainConfig(architecture='nope', steps=1)
    with pytest.raises(ValueError, match='unknown training setting'):
        load_config(None, ['stepz=3'])
    with pytest.raises(ValueError, match='steps'):
        TrainConfig()
    with pytest.raises(ValueError, match='max_detections'):
        TrainConfig(steps=1, max_detections=-1)


def test_every_set_of_sat_seg_train_counts(capsys):
    import argparse

    from sat_seg_ros.cli import main
    from sat_seg_training.commands import train as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(['--set', 'steps=7', 'lr=3e-4', '--set', 'backgrounds=photos',
                              '--set', 'lr=1e-4', '--set'])
    assert command.overrides(args) == ['steps=7', 'lr=3e-4', 'backgrounds=photos', 'lr=1e-4']
    config = load_config(None, command.overrides(args))
    assert (config.steps, config.lr, config.backgrounds) == (7, 1e-4, 'photos')
    assert command.overrides(parser.parse_args([])) == []
    with pytest.raises(ValueError, match='lr=.fast. is not a number'):
        load_config(None, ['lr=fast'])
    # through the command line: the first --set's unknown field is named, not dropped
    assert main(['train', '--set', 'stepz=3', '--set', 'max_detections=-1']) == 2
    assert 'stepz' in capsys.readouterr().err


def test_any_checkpoint_exports_as_a_runtime_model(tmp_path):
    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.train import export_checkpoint

    config = micro_config(tmp_path, steps=2, max_detections=1, val_every=1)
    train(config, progress=False)
    model_dir = export_checkpoint(Path(config.out_dir) / 'last.pt', tmp_path / 'model')
    info = json.loads((model_dir / 'sat_seg.json').read_text())
    assert info['provenance']['step'] == 2 and info['tile_size'] == 64
    # the exported step's validation, not the run's best (which may be another step)
    history = read_checkpoint(Path(config.out_dir) / 'last.pt')['history']
    last_val = [h for h in history if 'val_accuracy' in h][-1]
    assert info['provenance']['validation']['step'] == 2 == last_val['step']
    assert info['provenance']['validation']['accuracy'] == last_val['val_accuracy']
    assert 'step' in info['provenance']['run_best']
    assert info['max_detections'] == 1
    segmenter = Segmenter.from_model(model_dir)
    assert segmenter.config.max_detections == 1
    result = segmenter.segment(np.zeros((100, 120), np.uint8))
    assert result.mask.shape == (100, 120)
    # A checkpoint from another version, with a setting this one lacks: named, nothing written.
    import torch

    stored = read_checkpoint(Path(config.out_dir) / 'last.pt')
    stored['train_config']['warp_drive'] = True
    torch.save(stored, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match=r'settings this version does not know \(warp_drive\)'):
        export_checkpoint(tmp_path / 'other.pt', tmp_path / 'other_model')
    assert not (tmp_path / 'other_model').exists()
    # Resuming from it is refused the same way, not as a changed config.
    torch.save(stored, Path(config.out_dir) / 'last.pt')
    with pytest.raises(ValueError, match=r'settings this version does not know \(warp_drive\)'):
        train(config, progress=False)


def test_checkpoints_average_into_a_model_that_exports_and_trains_on(tmp_path, capsys):
    """`sat-seg train --average` writes the weighted mean of two runs' weights.

    BatchNorm's counters come from the last; another architecture or a missing file is refused
    and nothing is written.
    """
    import torch

    from sat_seg_ros.cli import main
    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.train import export_checkpoint

    runs = []
    for seed in (1, 2):
        config = micro_config(tmp_path / str(seed), architecture='test-cnn', steps=2, seed=seed,
                              dense_weight=0.5, val_every=2)
        train(config, progress=False)
        runs.append(Path(config.out_dir) / 'last.pt')
    a, b = (read_checkpoint(path) for path in runs)
    # Another transformers version spells the same config differently: still one architecture.
    a['sam_config']['transformers_version'] = '0.0.1'
    a['sam_config']['mask_decoder_config']['model_type'] = ''
    torch.save(a, runs[0])
    out = tmp_path / 'soup.pt'
    assert main(['train', '--average', str(out), str(runs[0]), str(runs[1]),
                 '--average-weights', '1,3']) == 0
    soup = read_checkpoint(out)
    floats = [key for key, value in a['model'].items() if value.is_floating_point()]
    counters = [key for key, value in a['model'].items() if not value.is_floating_point()]
    assert floats and counters  # the CNN encoder's BatchNorm has both
    moved = 0
    for key in floats:
        expected = (0.25 * a['model'][key].double() + 0.75 * b['model'][key].double()).float()
        torch.testing.assert_close(soup['model'][key], expected, rtol=0, atol=1e-6)
        moved += not torch.equal(a['model'][key], b['model'][key])
    assert moved > 10  # the two runs differ, so the mean is neither of them
    for key in counters:
        assert torch.equal(soup['model'][key], b['model'][key])
    torch.testing.assert_close(soup['dense_head']['weight'],
                               0.25 * a['dense_head']['weight'] + 0.75 * b['dense_head']['weight'])
    assert [(s['path'], s['weight']) for s in soup['averaged_from']] == [
        (str(runs[0]), 0.25), (str(runs[1]), 0.75)]
    assert 'optimizer' not in soup
    # It exports (its own validation unknown, its sources named) and runs ...
    model_dir = export_checkpoint(out, tmp_path / 'model')
    info = json.loads((model_dir / 'sat_seg.json').read_text())
    assert info['provenance']['validation'] is None
    assert len(info['provenance']['averaged_from']) == 2
    assert Segmenter.from_model(model_dir).segment(np.zeros((70, 90), np.uint8)).mask.shape \
        == (70, 90)
    # ... and a run starts from it, dense head included.
    train(micro_config(tmp_path / 'on', architecture='test-cnn', steps=1, init_from=str(out),
                       dense_weight=0.5), progress=False)
    # Refusals name the cause, exit 2 and write nothing.
    other = micro_config(tmp_path / 'vit', steps=1)
    train(other, progress=False)
    bad = tmp_path / 'bad.pt'
    for argv, message in (
            ([str(bad), str(runs[0]), str(Path(other.out_dir) / 'last.pt')],
             'different architectures'),
            ([str(bad), str(runs[0]), str(tmp_path / 'missing.pt')], 'does not exist'),
            ([str(bad), str(runs[0])], 'at least two checkpoints')):
        assert main(['train', '--average'] + argv) == 2
        assert message in capsys.readouterr().err
    assert main(['train', '--average', str(bad), str(runs[0]), str(runs[1]),
                 '--average-weights', '1,x']) == 2
    assert 'numbers separated by commas' in capsys.readouterr().err
    assert main(['train', '--average', str(bad), str(runs[0]), str(runs[1]),
                 '--average-weights', '1,0']) == 2
    assert 'must be positive' in capsys.readouterr().err
    assert not list(tmp_path.glob('bad.pt*'))


def test_ema_is_the_moving_average_of_the_steps_and_what_the_run_gives_out(tmp_path):
    """ema_decay keeps a <- d a + (1 - d) w after every step and resumes bit-exactly.

    It is what validation, best_model, --export and --average use; the live weights train on.
    """
    import torch

    from sat_seg_ros.modeling import load_sam_model
    from sat_seg_training.average import average_checkpoints
    from sat_seg_training.train import ema_decay_at, export_checkpoint, load_initial_model

    def config(where, **changes):
        return micro_config(tmp_path / where, architecture='test-cnn', steps=3, ema_decay=0.2,
                            **changes)

    straight = config('a')
    train(straight, progress=False)
    stepped = config('b')
    weights = [load_initial_model(stepped)[0].state_dict()]
    for stop in (1, 2, 3):  # interrupted after every step: the live weights of each
        train(stepped, progress=False, stop_at_step=stop)
        weights.append(read_checkpoint(Path(stepped.out_dir) / 'last.pt')['model'])
    assert [round(ema_decay_at(0.2, n), 4) for n in (1, 2, 3)] == [0.1818, 0.2, 0.2]
    expected = {key: value.double() for key, value in weights[0].items()}
    for step, state in enumerate(weights[1:], start=1):
        decay = ema_decay_at(0.2, step)
        for key, value in state.items():
            expected[key] = (decay * expected[key] + (1 - decay) * value.double()
                             if value.is_floating_point() else value)
    last = read_checkpoint(Path(stepped.out_dir) / 'last.pt')
    floats = [key for key, value in last['model'].items() if value.is_floating_point()]
    assert len(floats) < len(last['model'])  # BatchNorm's counters are copied, not averaged
    for key, value in last['ema'].items():
        if key in floats:
            torch.testing.assert_close(value, expected[key].float(), rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, expected[key])
    assert sum(not torch.equal(last['ema'][key], last['model'][key]) for key in floats) > 10
    uninterrupted = read_checkpoint(Path(straight.out_dir) / 'last.pt')
    for key in last['ema']:
        assert torch.equal(uninterrupted['ema'][key], last['ema'][key]), key
    # The last step was validated: best_model is the moving average, and so is --export.
    for model_dir in (Path(straight.out_dir) / 'best_model',
                      export_checkpoint(Path(stepped.out_dir) / 'last.pt', tmp_path / 'model')):
        exported = load_sam_model(model_dir).state_dict()
        for key in floats:
            assert torch.equal(exported[key], last['ema'][key]), (model_dir, key)
    info = json.loads((tmp_path / 'model' / 'sat_seg.json').read_text())
    assert info['provenance']['weights'].startswith('ema')
    soup = read_checkpoint(average_checkpoints([Path(straight.out_dir) / 'last.pt',
                                                Path(stepped.out_dir) / 'last.pt'],
                                               tmp_path / 'soup.pt'))
    for key in floats:
        torch.testing.assert_close(soup['model'][key], last['ema'][key], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match='ema_decay'):
        micro_config(tmp_path / 'c', ema_decay=1.0)


def test_two_cpu_workers_give_the_full_batch_gradient(tmp_path):
    """Splitting a step over concurrent workers changes where it runs, not the BCE gradient."""
    import torch

    from sat_seg_training.losses import segmentation_loss
    from sat_seg_training.models import build_model
    from sat_seg_training.train import _forward_backward

    model = build_model('test-micro', seed=1)
    pixels = torch.randn(6, 3, 64, 64)
    target = (torch.rand(6, 32, 32) > 0.8).float()

    def chunk_loss(rows, scale):
        low_res = model(pixel_values=pixels[rows], multimask_output=False).pred_masks[:, 0, 0]
        value = segmentation_loss('bce_dice', low_res, target[rows], 2.0, dice_weight=0.0)
        (value * scale).backward()
        return value.detach()

    gradients = []
    for workers in (1, 2):
        model.zero_grad(set_to_none=True)
        loss = _forward_backward(chunk_loss, 6, workers, threads=1)
        gradients.append((float(loss), [p.grad.clone() for p in model.parameters()
                                        if p.grad is not None]))
    assert gradients[0][0] == pytest.approx(gradients[1][0], rel=1e-6)
    assert len(gradients[0][1]) == len(gradients[1][1]) > 10
    for single, split in zip(gradients[0][1], gradients[1][1]):
        torch.testing.assert_close(single, split, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('architecture', ['test-micro', 'test-cnn'])
def test_a_two_worker_run_is_deterministic_and_learns(tmp_path, architecture):
    """Weights, optimizer and, for the CNN encoder, its BatchNorm statistics: the same bits."""
    import torch

    runs = [micro_config(tmp_path / name, steps=30, workers=2, threads=2, positive_fraction=0.5,
                         architecture=architecture) for name in ('a', 'b')]
    for config in runs:
        train(config, progress=False)
    a, b = final_state(runs[0].out_dir), final_state(runs[1].out_dir)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history = read_checkpoint(Path(runs[0].out_dir) / 'last.pt')['history']
    losses = [h['loss'] for h in history if 'loss' in h]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_a_two_worker_cnn_run_resumes_exactly(tmp_path):
    """The BatchNorm statistics of a run split over two workers resume bit for bit too."""
    assert_resumes_exactly(tmp_path, lambda folder: micro_config(
        folder, steps=6, workers=2, threads=2, architecture='test-cnn', positive_fraction=0.5))


KILL_SCRIPT = """
import sys
from sat_seg_training.train import TrainConfig, train
config = TrainConfig(**{values!r})
train(config, progress=False)
"""


def test_sigkill_during_a_run_then_resume_ends_bit_identical(tmp_path):
    """A run killed with SIGKILL (mid-step or mid-checkpoint) resumes to the same final bits."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    changes = {'architecture': 'test-cnn', 'stage': 'dense', 'crop_size': 32, 'steps': 60,
               'checkpoint_every': 1, 'hard_negative_fraction': 0.5, 'positive_fraction': 0.5}
    straight = micro_config(tmp_path / 'straight', **changes)
    train(straight, progress=False)

    killed = micro_config(tmp_path / 'killed', **changes)
    script = KILL_SCRIPT.format(values=dict(vars(killed)))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    process = subprocess.Popen([sys.executable, '-c', script], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = Path(killed.out_dir) / 'last.pt'
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if last.is_file():
            try:
                if read_checkpoint(last)['step'] >= 20:
                    break
            except Exception:  # noqa: B902 - being replaced this very moment: look again
                pass
        time.sleep(0.05)
    assert process.poll() is None, 'the run ended before it could be killed: %s' % (
        process.stderr.read().decode()[-2000:])
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = read_checkpoint(last)['step']  # the file is whole: written atomically
    assert 20 <= interrupted_at < 60
    summary = train(killed, progress=False)
    assert summary['steps'] == 60
    a = read_checkpoint(Path(straight.out_dir) / 'last.pt')
    b = read_checkpoint(last)
    for key in a['model']:
        assert torch.equal(a['model'][key], b['model'][key]), key
    for key in a['dense_head']:
        assert torch.equal(a['dense_head'][key], b['dense_head'][key]), key
    assert np.array_equal(a['hardness'], b['hardness'])
    assert [h['loss'] for h in a['history'] if 'loss' in h] == \
        [h['loss'] for h in b['history'] if 'loss' in h]


def test_resume_on_regenerated_data_says_it_is_not_bit_identical(tmp_path, caplog):
    from sat_seg_training.dataset import DatasetWriter

    def write_set(seed):
        rng = np.random.default_rng(seed)
        with DatasetWriter(tmp_path / 'data') as writer:
            for index in range(4):
                image = rng.integers(0, 255, (128, 128), dtype=np.uint8)
                mask = np.zeros((128, 128), bool)
                mask[20:40, 30:60] = True
                writer.add('img%d.png' % index, image, (30, 20, 30, 20), mask)

    write_set(1)
    config = micro_config(tmp_path, data=str(tmp_path / 'data'), scenes=0, steps=4)
    train(config, progress=False, stop_at_step=2)
    write_set(2)  # same config, other pixels: e.g. other background files or library versions
    with caplog.at_level('WARNING', logger='sat_seg_training.train'):
        train(config, progress=False)
    assert 'tile pool differs' in caplog.text


def test_input_color_rgb_trains_on_colour_tiles_and_the_model_says_so(tmp_path):
    """input_color 'rgb' keeps the scenes' channels through training and into sat_seg.json.

    The pool holds RGB tiles (the default 'luma' pool of the same scenes is gray), a CNN run
    trains on them, and its exported sat_seg.json asks the runtime for RGB.
    """
    from sat_seg_training.synth import generate

    data = tmp_path / 'colour'
    generate(data, 6, seed=4, contact=0, color=True)
    colour_pool = build_pool(iter_scenes(str(data), 0, 0, color=True),
                             micro_config(tmp_path), 0)
    gray_pool = build_pool(iter_scenes(str(data), 0, 0), micro_config(tmp_path), 0)
    assert colour_pool.tiles.shape == gray_pool.tiles.shape + (3,)
    channels = colour_pool.tiles.astype(int)
    assert np.abs(channels[..., 0] - channels[..., 1]).mean() > 1.0  # colour, not gray x 3
    np.testing.assert_array_equal(colour_pool.masks, gray_pool.masks)
    tiles = colour_pool.tiles[:1].repeat(60, axis=0).astype(np.float32)
    empty = np.zeros(tiles.shape[:3], np.float32)
    out, _ = augment(tiles, empty, np.random.default_rng(0), 0.0)
    gray = np.array([np.ptp(tile, axis=2).max() < 1e-3 for tile in out])
    assert 0 < gray.sum() < 30  # a fifth become a gray camera's frames, the rest stay colour
    # gray_fraction sets that share and changes nothing else: the draws are the same.
    none, _ = augment(tiles, empty, np.random.default_rng(0), 0.0, gray_fraction=0.0)
    every, _ = augment(tiles, empty, np.random.default_rng(0), 0.0, gray_fraction=1.0)
    assert not any(np.ptp(tile, axis=2).max() < 1e-3 for tile in none)
    assert all(np.ptp(tile, axis=2).max() < 1e-3 for tile in every)
    np.testing.assert_array_equal(none[~gray], out[~gray])
    np.testing.assert_array_equal(every[gray], out[gray])
    with pytest.raises(ValueError, match='gray_fraction'):
        micro_config(tmp_path, gray_fraction=1.5)
    # color_gain 0.1 is the gain every colour run drew; channel_gamma 0 draws nothing more.
    same, _ = augment(tiles, empty, np.random.default_rng(0), 0.0, 0.2, color_gain=0.1,
                      channel_gamma=0.0)
    np.testing.assert_array_equal(same, out)
    flat, _ = augment(tiles, empty, np.random.default_rng(0), 0.0, 0.0, color_gain=0.0)
    assert not np.allclose(out[~gray], flat[~gray])  # the gains are color_gain's
    curved, _ = augment(tiles, empty, np.random.default_rng(0), 0.0, 0.0, channel_gamma=0.5)
    assert not any(np.ptp(tile, axis=2).max() < 1e-3 for tile in curved)
    assert np.abs(curved - none).mean() > 1.0  # the per-channel curves changed the tiles
    for name, value in (('color_gain', 0.9), ('channel_gamma', -0.1)):
        with pytest.raises(ValueError, match=name):
            micro_config(tmp_path, **{name: value})
    config = micro_config(tmp_path, architecture='test-cnn', data=str(data), scenes=0,
                          val_data=str(data), val_scenes=2, input_color='rgb', steps=3,
                          val_every=3, dense_weight=0.5, stage='sam')
    summary = train(config, progress=False)
    assert summary['steps'] == 3
    info = json.loads((Path(config.out_dir) / 'best_model' / 'sat_seg.json').read_text())
    assert info['input_color'] == 'rgb'
    with pytest.raises(ValueError, match='input_color'):
        micro_config(tmp_path, input_color='bgr')
