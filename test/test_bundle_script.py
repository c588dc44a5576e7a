"""scripts/bundle_model.sh: a checkpoint becomes a model folder calibrated every way it runs."""

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'scripts' / 'bundle_model.sh'


@pytest.fixture
def env(tmp_path):
    """Return the script's environment, its SAT_SEG a wrapper around this interpreter's CLI."""
    wrapper = tmp_path / 'sat-seg'
    wrapper.write_text('#!/bin/sh\nexec %s -m sat_seg_ros.cli "$@"\n' % sys.executable)
    wrapper.chmod(0o755)
    return dict(os.environ, SAT_SEG=str(wrapper))


def _run(args, env):
    return subprocess.run(['bash', str(SCRIPT), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, env):
    usage = _run([], env)
    assert usage.returncode == 2 and 'CHECKPOINT OUT VALIDATION_SET' in usage.stderr
    (tmp_path / 'val').mkdir()
    checkpoint = tmp_path / 'last.pt'
    missing = _run([checkpoint, tmp_path / 'out', tmp_path / 'val'], env)
    assert missing.returncode == 1 and 'no checkpoint at' in missing.stderr
    checkpoint.write_bytes(b'not read before the other checks pass')
    not_a_set = _run([checkpoint, tmp_path / 'out', tmp_path / 'val'], env)
    assert not_a_set.returncode == 1 and 'not a dataset folder' in not_a_set.stderr
    (tmp_path / 'val' / 'annotations.json').write_text('{}')
    bad_gray = _run([checkpoint, tmp_path / 'out', tmp_path / 'val', tmp_path / 'nope'], env)
    assert bad_gray.returncode == 1 and 'nope is not a dataset folder' in bad_gray.stderr
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'keep.txt').write_text('mine')
    taken = _run([checkpoint, tmp_path / 'out', tmp_path / 'val'], env)
    assert taken.returncode == 1 and 'exists' in taken.stderr
    assert [p.name for p in (tmp_path / 'out').iterdir()] == ['keep.txt']


def test_a_checkpoint_becomes_a_folder_calibrated_every_way_it_runs(tmp_path, env):
    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.train import train
    from sat_seg_training.train_config import TrainConfig

    config = TrainConfig(name='bundle', out_dir=str(tmp_path / 'run'), architecture='test-cnn',
                         data='shapes', scenes=4, val_data='shapes', val_scenes=2,
                         model_sizes=[512], size_weights=[1.0], tile_size=256, batch_size=4,
                         steps=2, lr=1e-3, warmup_steps=1, val_every=1000,
                         checkpoint_every=1000, log_every=1, threads=1)
    train(config, progress=False)
    synth = subprocess.run([env['SAT_SEG'], 'synth', '--out', str(tmp_path / 'val'), '--n', '3',
                            '--seed', '5', '--contact', '0', '--workers', '1'],
                           capture_output=True, text=True, timeout=300)
    assert synth.returncode == 0, synth.stderr
    out = tmp_path / 'candidate'
    result = _run([tmp_path / 'run' / 'last.pt', out, tmp_path / 'val'], env)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((out / 'sat_seg.json').read_text())
    assert info['calibration']['model_size'] == 512 and info['calibration']['images'] == 3
    assert set(info['by_model_size']) == {'1024', '2048', '512+1024'}
    for size in (1024, 2048):
        entry = info['by_model_size'][str(size)]
        assert entry['calibration']['model_size'] == size
        segmenter = Segmenter.from_model(out, model_size=size)
        assert (segmenter.config.threshold, segmenter.config.seed_threshold,
                segmenter.config.min_area_px) == (entry['threshold'], entry['seed_threshold'],
                                                  entry['min_area_px'])
    assert info['by_model_size']['512+1024']['fuse_sizes'] == [1024]
    assert info['by_model_size']['512+1024']['calibration']['fuse_max_tiles'] == 8
    for entry in (info['by_model_size']['512+1024'], info['modes']['multiscale']):
        swept = entry['calibration']
        assert entry['fuse_gate'] == swept['fuse_gate'] in (0.0, 0.6, 0.7, 0.8, 0.9)
    accurate = info['modes']['accurate']
    assert (accurate['flips'], accurate['tile_overlap'], accurate['max_detections']) == (4, 64, 1)
    segmenter = Segmenter.from_model(out, mode='accurate')
    assert (segmenter.config.flips, segmenter.config.tile_overlap) == (4, 64)
    assert segmenter.config.threshold == accurate['threshold']
    multiscale = info['modes']['multiscale']
    assert (multiscale['fuse_sizes'], multiscale['flips'], multiscale['tile_overlap']) == (
        [768, 1024], 1, 0)
    segmenter = Segmenter.from_model(out, mode='multiscale')
    assert segmenter.config.fuse_sizes == (768, 1024)
    assert segmenter.config.fuse_gate == multiscale['fuse_gate']
    assert segmenter.config.fuse_max_tiles == multiscale['calibration']['fuse_max_tiles'] == 9
    assert segmenter.config.threshold == multiscale['threshold']
    assert set(info['modes']) == {'accurate', 'multiscale'}
    # With the gray twins of the validation scenes: the mode 'gray' as well.
    gray = subprocess.run([env['SAT_SEG'], 'synth', '--out', str(tmp_path / 'gray'), '--n', '3',
                           '--seed', '6', '--contact', '0', '--workers', '1'],
                          capture_output=True, text=True, timeout=300)
    assert gray.returncode == 0, gray.stderr
    with_gray = _run([tmp_path / 'run' / 'last.pt', tmp_path / 'with_gray', tmp_path / 'val',
                      tmp_path / 'gray'], env)
    assert with_gray.returncode == 0, with_gray.stderr[-3000:]
    modes = json.loads((tmp_path / 'with_gray' / 'sat_seg.json').read_text())['modes']
    assert set(modes) == {'accurate', 'multiscale', 'gray'}
    assert modes['gray']['calibration']['dataset'] == str(tmp_path / 'gray')
    assert (modes['gray']['flips'], modes['gray']['tile_overlap']) == (1, 0)
