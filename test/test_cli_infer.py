"""``sat-seg infer`` end to end in a subprocess: sizes, dtypes, bad inputs, outputs."""

import json
import os
from pathlib import Path
import subprocess
import sys

import cv2
import numpy as np
import pytest


def sat_seg(*args, env=None):
    return subprocess.run([sys.executable, '-m', 'sat_seg_ros.cli', *map(str, args)],
                          capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, **(env or {})))


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp('inputs')
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (512, 641), dtype=np.uint8)
    rgb = rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)
    deep = rng.integers(0, 65536, (333, 222), dtype=np.uint16)
    cv2.imwrite(str(folder / 'gray.png'), gray)
    cv2.imwrite(str(folder / 'rgb.jpg'), rgb)
    cv2.imwrite(str(folder / 'deep.png'), deep)
    (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
    (folder / 'notes.png').write_text('hello')
    return folder


def test_infer_logs_the_fusion_and_gate_it_runs(tiny_model_dir, inputs, tmp_path):
    run = sat_seg('infer', '--model', tiny_model_dir, '--fuse-sizes', '1024', '--fuse-gate',
                  '0.5', '--out', tmp_path / 'out', inputs / 'gray.png')
    assert run.returncode == 0, run.stderr
    assert 'size 512 + 1024 (fuse_gate 0.50), threshold' in run.stderr


def test_infer_keeps_sizes_and_writes_binary_masks(tiny_model_dir, inputs, tmp_path):
    files = [inputs / 'gray.png', inputs / 'rgb.jpg', inputs / 'deep.png']
    # threshold 0.5: a random-weight SAM's probabilities straddle it, so masks are not all empty
    run = sat_seg('infer', '--model', tiny_model_dir, '--threshold', '0.5', '--min-area', '0',
                  '--out', tmp_path / 'out', *files)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / 'out' / 'detections.json').read_text())
    assert sorted(report) == ['deep.png', 'gray.png', 'rgb.jpg']
    some_positive = False
    for path in files:
        source = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(tmp_path / 'out' / (path.stem + '.png')), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == source.shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        entry = report[path.name]
        assert entry['detected'] == bool(entry['detections']) == bool(mask.any())
        for detection in entry['detections']:
            x0, y0, x1, y1 = detection['bbox_xyxy']
            assert 0 <= x0 < x1 <= mask.shape[1] and 0 <= y0 < y1 <= mask.shape[0]
            assert 0.5 < detection['score'] <= 1.0 and detection['area_px'] > 0
        assert sum(d['area_px'] for d in entry['detections']) == (mask > 0).sum()
        some_positive |= bool(mask.any())
    assert some_positive
    assert not [p for p in (tmp_path / 'out').iterdir() if p.name.endswith('.tmp')]


def test_bad_inputs_are_named_and_skipped(tiny_model_dir, inputs, tmp_path):
    run = sat_seg('infer', '--model', tiny_model_dir, '--out', tmp_path / 'out', inputs,
                  inputs / 'missing.png')
    assert run.returncode == 1
    for name in ('broken.png', 'notes.png', 'missing.png'):
        assert name in run.stderr
    written = sorted(p.name for p in (tmp_path / 'out').iterdir())
    assert written == ['deep.png', 'detections.json', 'gray.png', 'rgb.png']


def test_missing_model_is_explained(tmp_path, inputs):
    run = sat_seg('infer', '--model', tmp_path / 'nowhere', '--out', tmp_path / 'o',
                  inputs / 'gray.png')
    assert run.returncode == 2
    assert 'model folder' in run.stderr and 'does not exist' in run.stderr
    assert 'Traceback' not in run.stderr


def test_same_stem_in_two_folders_does_not_overwrite(tiny_model_dir, inputs, tmp_path):
    other = tmp_path / 'other'
    other.mkdir()
    cv2.imwrite(str(other / 'gray.png'), np.zeros((40, 50), np.uint8))
    run = sat_seg('infer', '--model', tiny_model_dir, '--out', tmp_path / 'out',
                  inputs / 'gray.png', other / 'gray.png')
    assert run.returncode == 0, run.stderr
    assert cv2.imread(str(tmp_path / 'out' / 'gray.png')).shape[:2] == (512, 641)
    assert cv2.imread(str(tmp_path / 'out' / 'gray-2.png')).shape[:2] == (40, 50)


def test_help_lists_every_command():
    run = sat_seg('--help')
    assert run.returncode == 0
    for name in ('infer', 'evaluate', 'bench', 'synth', 'label', 'train', 'export', 'bag'):
        assert name in run.stdout
    assert sat_seg('frobnicate').returncode == 2


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from sat_seg_ros import config

    target = tmp_path / 'mask.png'

    def explode(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(config.os, 'replace', explode)
    with pytest.raises(KeyboardInterrupt):
        config.atomic_write_bytes(target, b'data')
    assert list(Path(tmp_path).iterdir()) == []


def test_segmenter_options_are_the_same_everywhere():
    """infer, bag run, evaluate and calibrate declare the shared options from one place."""
    import argparse

    from sat_seg_ros.commands import bag, infer
    from sat_seg_training.commands import calibrate, evaluate

    def options(add):
        parser = argparse.ArgumentParser()
        add(parser)
        return {option for action in parser._actions for option in action.option_strings}

    shared = {'--backend', '--device', '--min-area', '--max-detections', '--tile-overlap',
              '--batch-size', '--prompt', '--flips', '--fuse-sizes'}
    bag_parser = argparse.ArgumentParser()
    bag.add_arguments(bag_parser)  # declares make / run / play
    bag_run = next(a for a in bag_parser._actions if isinstance(
        a, argparse._SubParsersAction)).choices['run']
    bag_options = {o for action in bag_run._actions for o in action.option_strings}
    for found in (options(infer.add_arguments), bag_options, options(evaluate.add_arguments),
                  options(calibrate.add_arguments)):
        assert shared <= found
    for found in (options(infer.add_arguments), bag_options, options(calibrate.add_arguments)):
        assert {'--size', '--model-size'} <= found
    assert '--sizes' in options(evaluate.add_arguments)


def test_model_size_alias_still_works_and_says_it_is_deprecated(capsys):
    import argparse

    from sat_seg_ros.commands.options import add_segmenter_arguments

    parser = argparse.ArgumentParser(prog='sat-seg bag run')
    add_segmenter_arguments(parser)
    assert parser.parse_args(['--size', '1024']).model_size == 1024
    assert capsys.readouterr().err == ''
    assert parser.parse_args(['--model-size', '2048']).model_size == 2048
    assert '--model-size is deprecated' in capsys.readouterr().err


def test_fuse_sizes_option_parses_lists_and_none(capsys):
    import argparse

    from sat_seg_ros.commands.options import add_segmenter_arguments, segmenter_options

    parser = argparse.ArgumentParser(prog='sat-seg infer')
    add_segmenter_arguments(parser)
    assert segmenter_options(parser.parse_args([]))['fuse_sizes'] is None  # the model's
    assert parser.parse_args(['--fuse-sizes', '1024']).fuse_sizes == (1024,)
    assert parser.parse_args(['--fuse-sizes', '1024,2048']).fuse_sizes == (1024, 2048)
    assert parser.parse_args(['--fuse-sizes', 'none']).fuse_sizes == ()
    with pytest.raises(SystemExit):
        parser.parse_args(['--fuse-sizes', 'big'])
    assert "'big' is not a comma-separated list of model sizes" in capsys.readouterr().err
