"""Threshold calibration: the sweep finds the best threshold; the choice lands in sat_seg.json."""

import json

import numpy as np
import pytest

from sat_seg_training.calibrate import calibrate, sweep


def constructed_case():
    """Satellite at 0.8, a 100 px distractor at 0.55, background at 0.2.

    Any threshold in [0.55, 0.8) is perfect; below 0.55 the distractor becomes a detection
    (a false positive on the empty image), at 0.8 and above the satellite vanishes.
    """
    positive = np.full((64, 64), 0.2, np.float32)
    positive[10:30, 10:30] = 0.8
    positive[50:60, 50:60] = 0.55
    negative = np.full((64, 64), 0.2, np.float32)
    negative[5:15, 40:50] = 0.55
    truth_pos = np.zeros((64, 64), bool)
    truth_pos[10:30, 10:30] = True
    return [positive, negative], [truth_pos, np.zeros((64, 64), bool)]


def test_sweep_finds_the_threshold_that_separates():
    probabilities, truths = constructed_case()
    result = sweep(probabilities, truths, thresholds=[0.3, 0.5, 0.6, 0.7, 0.85], min_area_px=16)
    by_threshold = {row['threshold']: row['accuracy'] for row in result['table']}
    # Below 0.55 the positive image is still right (IoU 400 / 500) but the empty one is not.
    assert by_threshold == {0.3: 0.5, 0.5: 0.5, 0.6: 1.0, 0.7: 1.0, 0.85: 0.5}
    assert result['best_threshold'] == 0.6  # ties go to the threshold nearest 0.5
    assert result['best']['accuracy'] == 1.0


def test_min_area_filters_small_distractors():
    probabilities, truths = constructed_case()
    result = sweep(probabilities, truths, thresholds=[0.5], min_area_px=101)
    assert result['table'][0]['accuracy'] == 1.0


def test_seed_threshold_rescues_a_low_mask_threshold():
    """The constructed case with the satellite at 0.6 around a 0.95 core.

    Without a seed no threshold is right: below 0.55 the distractor fires, at 0.6 and above the
    satellite shrinks to its core (IoU 16 / 400). With a low threshold and a seed, both are.
    """
    probabilities, truths = constructed_case()
    probabilities[0][10:30, 10:30] = 0.6
    probabilities[0][18:22, 18:22] = 0.95
    plain = sweep(probabilities, truths, thresholds=[0.3, 0.5, 0.65], min_area_px=1)
    assert plain['best']['accuracy'] == 0.5 and plain['best_seed_threshold'] is None
    seeded = sweep(probabilities, truths, thresholds=[0.3, 0.5, 0.65], min_area_px=1,
                   seed_thresholds=[None, 0.9, 0.99])
    assert seeded['best']['accuracy'] == 1.0
    assert (seeded['best_threshold'], seeded['best_seed_threshold']) == (0.5, 0.9)
    # Seeds at or below a threshold gate nothing and are not listed; 0.99 removes everything.
    rows = {(r['threshold'], r['seed_threshold']): r['accuracy'] for r in seeded['table']}
    assert len(rows) == 9 and rows[(0.65, 0.99)] == 0.5


@pytest.mark.parametrize('seed', range(4))
def test_sweep_scores_exactly_as_the_runtime_post_processing(seed):
    """The component-table sweep equals summarize() over find_detections' masks."""
    import cv2

    from sat_seg_ros import metrics
    from sat_seg_ros.postprocess import find_detections

    rng = np.random.default_rng(seed)
    probabilities, truths = [], []
    for index in range(6):
        noise = cv2.GaussianBlur(rng.random((48, 56)).astype(np.float32), (0, 0), 2.5)
        noise = (noise - noise.min()) / (np.ptp(noise) + 1e-6)
        probabilities.append(noise)
        truth = np.zeros((48, 56), bool)
        if index % 3:
            y, x = rng.integers(0, 36, 2)
            truth[y:y + 12, x:x + 14] = True
        truths.append(truth)
    thresholds, seeds = [0.3, 0.5, 0.7], [None, 0.6, 0.8, 0.9]
    for min_area in (1, 20):
        for max_detections in (0, 1, 2):
            result = sweep(probabilities, truths, thresholds, min_area, max_detections, seeds)
            for row in result['table']:
                t, s = row['threshold'], row['seed_threshold']
                expected = metrics.summarize(
                    (find_detections(p, p > t, min_area, max_detections, s)[1], m)
                    for p, m in zip(probabilities, truths))
                for key, value in expected.items():
                    assert row[key] == pytest.approx(value, nan_ok=True), (t, s, key)


def test_sweep_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match='as many'):
        sweep([np.zeros((4, 4))], [], thresholds=[0.5])


def test_calibrate_writes_threshold_and_plot(tiny_model_dir, tmp_path):
    import shutil

    from sat_seg_training.dataset import DatasetWriter

    model = tmp_path / 'model'
    shutil.copytree(tiny_model_dir, model)
    (model / 'sat_seg.json').write_text(json.dumps({'prompt_mode': 'box', 'threshold': 0.65,
                                                    'model_size': 256,
                                                    'provenance': {'kept': True}}))
    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / 'val') as writer:
        image = rng.integers(0, 255, (300, 280), dtype=np.uint8)
        mask = np.zeros((300, 280), bool)
        mask[100:140, 100:150] = True
        writer.add('a.png', image, mask=mask)
        writer.add('b.png', rng.integers(0, 255, (300, 280), dtype=np.uint8))
    result = calibrate(model, tmp_path / 'val', model_size=256, thresholds=[0.3, 0.5, 0.7],
                       plot=tmp_path / 'sweep.png')
    info = json.loads((model / 'sat_seg.json').read_text())
    assert info['threshold'] == result['best_threshold'] in (0.3, 0.5, 0.7)
    assert result['written'] == 'top level' and 'by_model_size' not in info
    assert info['calibration']['images'] == 2
    assert info['provenance'] == {'kept': True}
    assert (tmp_path / 'sweep.png').stat().st_size > 1000
    assert info['min_area_px'] == 16 and info['max_detections'] == 0
    # Sweeping the component filter too: the pair that was best is the pair that is written.
    swept = calibrate(model, tmp_path / 'val', model_size=256, thresholds=[0.3, 0.5, 0.7],
                      min_areas=[1, 5000], max_detections=1)
    info = json.loads((model / 'sat_seg.json').read_text())
    assert [row['min_area_px'] for row in swept['min_area_sweep']] == [1, 5000]
    best = max(swept['min_area_sweep'], key=lambda r: (r['accuracy'], r['mean_iou']))
    assert swept['best']['accuracy'] == best['accuracy']
    assert info['min_area_px'] == swept['min_area_px'] and info['max_detections'] == 1
    assert info['threshold'] == swept['best_threshold']
    assert info['seed_threshold'] == swept['best_seed_threshold']
    assert info['calibration']['seed_thresholds'] == [None, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995,
                                                      0.998, 0.999]
    assert info['fuse_sizes'] == [] == info['calibration']['fuse_sizes']
    # Calibrated on maps fused with 512: a mode of its own, written with the thresholds it was
    # measured with; the Segmenter uses them when it runs fused, the top level otherwise.
    top = dict(info)
    fused = calibrate(model, tmp_path / 'val', model_size=256, thresholds=[0.3, 0.5, 0.7],
                      seed_thresholds=[0.99], fuse_sizes=(512,))
    info = json.loads((model / 'sat_seg.json').read_text())
    assert fused['written'] == 'by_model_size[256+512]'
    entry = info.pop('by_model_size')['256+512']
    assert info == top  # the unfused mode's values are kept
    assert entry['fuse_sizes'] == [512] == fused['fuse_sizes']
    assert entry['calibration']['fuse_sizes'] == [512]
    assert (entry['threshold'], entry['seed_threshold']) == (fused['best_threshold'], 0.99)
    from sat_seg_ros.segmenter import Segmenter
    plain, both = Segmenter.from_model(model), Segmenter.from_model(model, fuse_sizes=(512,))
    assert plain.config.fuse_sizes == () and plain.config.seed_threshold == top['seed_threshold']
    assert both.config.fuse_sizes == (512,) and len(both.fuse_grids) == 1
    assert (both.config.threshold, both.config.seed_threshold) == (entry['threshold'], 0.99)
    plain.close()
    both.close()


def model_and_val(tiny_model_dir, tmp_path, info, empty_image=True):
    """Return (model, validation set): the tiny model with ``info`` as its sat_seg.json.

    The validation set holds one 300x280 image with a 40x50 satellite (and one empty image).
    """
    import shutil

    from sat_seg_training.dataset import DatasetWriter

    model = tmp_path / 'model'
    shutil.copytree(tiny_model_dir, model)
    (model / 'sat_seg.json').write_text(json.dumps(info))
    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / 'val') as writer:
        mask = np.zeros((300, 280), bool)
        mask[100:140, 100:150] = True
        writer.add('a.png', rng.integers(0, 255, (300, 280), dtype=np.uint8), mask=mask)
        if empty_image:
            writer.add('b.png', rng.integers(0, 255, (300, 280), dtype=np.uint8))
    return model, tmp_path / 'val'


def test_calibrating_another_size_writes_that_sizes_entry_and_the_segmenter_uses_it(
        tiny_model_dir, tmp_path):
    from sat_seg_ros.segmenter import Segmenter

    model, val = model_and_val(tiny_model_dir, tmp_path, {
        'prompt_mode': 'box', 'threshold': 0.65, 'seed_threshold': 0.99, 'model_size': 256,
        'min_area_px': 16})
    result = calibrate(model, val, model_size=512, thresholds=[0.3, 0.5],
                       min_areas=[1, 5000], seed_thresholds=[None])
    info = json.loads((model / 'sat_seg.json').read_text())
    assert result['written'] == 'by_model_size[512]'
    assert (info['threshold'], info['seed_threshold'], info['min_area_px']) == (0.65, 0.99, 16)
    entry = info['by_model_size']['512']
    assert entry['threshold'] == result['best_threshold'] and entry['seed_threshold'] is None
    assert entry['min_area_px'] == result['min_area_px']
    assert entry['calibration']['model_size'] == 512 and entry['flips'] == 1

    at_512 = Segmenter.from_model(model, model_size=512)
    at_256 = Segmenter.from_model(model)
    try:
        assert at_512.config.threshold == entry['threshold']
        assert at_512.config.seed_threshold is None
        assert at_512.config.min_area_px == entry['min_area_px']
        assert at_512.model_info['calibration']['model_size'] == 512  # what the node resets to
        assert (at_256.config.threshold, at_256.config.seed_threshold) == (0.65, 0.99)
        assert at_256.config.min_area_px == 16
        explicit = Segmenter.from_model(model, model_size=512, threshold=0.42)
        assert explicit.config.threshold == 0.42  # an explicit setting still wins
        explicit.close()
    finally:
        at_512.close()
        at_256.close()


def test_calibrating_with_tile_overlap_records_it_with_the_thresholds(tiny_model_dir, tmp_path):
    # Thresholds chosen on maps stitched from overlapping tiles hold for that overlap only, so
    # calibrate writes the overlap beside them (as it writes flips and the input colour) and
    # the Segmenter that loads the folder runs with it; another model size's entry keeps its own.
    from sat_seg_ros.segmenter import Segmenter

    model, val = model_and_val(tiny_model_dir, tmp_path,
                               {'prompt_mode': 'box', 'threshold': 0.65, 'model_size': 256},
                               empty_image=False)
    result = calibrate(model, val, model_size=256, thresholds=[0.3, 0.5],
                       seed_thresholds=[None], tile_overlap=0)
    assert result['tile_overlap'] == 0
    calibrate(model, val, model_size=512, thresholds=[0.3, 0.5],
              seed_thresholds=[None], tile_overlap=64, input_color='luma')
    info = json.loads((model / 'sat_seg.json').read_text())
    assert info['tile_overlap'] == 0 == info['calibration']['tile_overlap']
    assert info['input_color'] == 'rgb' == info['calibration']['input_color']
    entry = info['by_model_size']['512']
    assert entry['tile_overlap'] == 64 == entry['calibration']['tile_overlap']
    assert entry['input_color'] == 'luma' == entry['calibration']['input_color']
    at_512, at_256 = Segmenter.from_model(model, model_size=512), Segmenter.from_model(model)
    try:
        assert at_512.config.tile_overlap == 64 and len(at_512.grid) == 9
        assert at_256.config.tile_overlap == 0 and len(at_256.grid) == 1
        assert (at_512.config.input_color, at_256.config.input_color) == ('luma', 'rgb')
    finally:
        at_512.close()
        at_256.close()


def test_a_named_mode_is_calibrated_beside_the_default_and_chosen_by_name(tiny_model_dir,
                                                                          tmp_path):
    # calibrate --mode accurate --flips 4 writes modes.accurate and leaves the top level alone;
    # the Segmenter (and evaluate, infer, the node) apply it only when asked for by name.
    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.evaluate import evaluate

    model, val = model_and_val(tiny_model_dir, tmp_path,
                               {'prompt_mode': 'box', 'threshold': 0.65, 'model_size': 256})
    before = json.loads((model / 'sat_seg.json').read_text())
    result = calibrate(model, val, thresholds=[0.3, 0.5], seed_thresholds=[None],
                       mode='accurate', flips=4, tile_overlap=32)
    assert result['written'] == 'modes[accurate]' and result['flips'] == 4
    info = json.loads((model / 'sat_seg.json').read_text())
    assert {k: v for k, v in info.items() if k != 'modes'} == before  # the default is untouched
    entry = info['modes']['accurate']
    assert (entry['flips'], entry['tile_overlap'], entry['threshold']) == (
        4, 32, result['best_threshold'])
    default, accurate = Segmenter.from_model(model), Segmenter.from_model(model, mode='accurate')
    try:
        assert (default.config.flips, default.config.tile_overlap) == (1, 0)
        assert (accurate.config.flips, accurate.config.tile_overlap) == (4, 32)
        assert accurate.config.threshold == result['best_threshold']
        assert Segmenter.from_model(model, mode='accurate', flips=2).config.flips == 2
    finally:
        default.close()
        accurate.close()
    row = evaluate(val, model, [256], mode='accurate')['rows'][0]
    assert (row['mode'], row['flips'], row['tile_overlap']) == ('accurate', 4, 32)
    again = calibrate(model, val, thresholds=[0.3, 0.5], seed_thresholds=[None],
                      mode='accurate')  # recalibrating a mode starts from its own settings
    assert again['flips'] == 4 and again['tile_overlap'] == 32
    with pytest.raises(ValueError, match="mode 'fast' is not among the modes of this model: "
                                         'accurate'):
        Segmenter.from_model(model, mode='fast')
    with pytest.raises(ValueError, match='calibrated at model size 256, not 512'):
        Segmenter.from_model(model, mode='accurate', model_size=512)
    with pytest.raises(ValueError, match='at the model size 256, not 512'):
        calibrate(model, val, model_size=512, mode='other')
    # A mode may fuse further model sizes (bundle_model.sh's 'multiscale'): the fusion is
    # recorded with the mode's thresholds and runs only when the mode is asked for.
    fused = calibrate(model, val, thresholds=[0.3, 0.5], seed_thresholds=[None],
                      mode='multiscale', fuse_sizes=(512,))
    assert fused['written'] == 'modes[multiscale]' and fused['fuse_sizes'] == [512]
    info = json.loads((model / 'sat_seg.json').read_text())
    assert info['modes']['multiscale']['fuse_sizes'] == [512]
    assert info['modes']['accurate']['fuse_sizes'] == [] and 'by_model_size' not in info
    multiscale, default = (Segmenter.from_model(model, mode='multiscale'),
                           Segmenter.from_model(model))
    try:
        assert multiscale.config.fuse_sizes == (512,) and default.config.fuse_sizes == ()
        assert multiscale.config.threshold == fused['best_threshold']
        assert Segmenter.from_model(model, mode='multiscale',
                                    fuse_sizes=()).config.fuse_sizes == ()
    finally:
        multiscale.close()
        default.close()
    for bad, message in (([1], 'modes must map mode names'),
                         ({'Fast!': {}}, 'lower-case letters'),
                         ({'fast': {'model_size': 1024}}, r"modes\['fast'\] must be an object")):
        (model / 'sat_seg.json').write_text(json.dumps(dict(info, modes=bad)))
        with pytest.raises(ValueError, match=message):
            Segmenter.from_model(model)


@pytest.mark.parametrize('sizes, message', [
    ([1024], 'must map model sizes'),
    ({'big': {'threshold': 0.5}}, 'is not a model size'),
    ({'512': {'threshold': 0.5}}, "model's own model_size 512"),
    ({'1024': {'tile_size': 128}}, 'keys among'),
    ({'1024': 0.5}, 'keys among'),
    ({'512+x': {'threshold': 0.5}}, 'or fused sizes'),
    ({'512+1024': {'fuse_sizes': [2048]}}, 'its key fuses'),
])
def test_a_bad_by_model_size_entry_is_named(tmp_path, sizes, message):
    from sat_seg_ros.config import load_model_info

    (tmp_path / 'sat_seg.json').write_text(json.dumps({'model_size': 512,
                                                       'by_model_size': sizes}))
    with pytest.raises(ValueError, match=message):
        load_model_info(tmp_path)


def test_a_fuse_gate_sweep_writes_the_largest_gate_keeping_the_accuracy(tiny_model_dir,
                                                                        tmp_path):
    from sat_seg_ros.segmenter import Segmenter

    model, val = model_and_val(tiny_model_dir, tmp_path,
                               {'prompt_mode': 'box', 'threshold': 0.65, 'model_size': 256})
    result = calibrate(model, val, thresholds=[0.3, 0.5], seed_thresholds=[None],
                       mode='multiscale', fuse_sizes=(512,), fuse_gates=[0.9999, 0, 0.5])
    sweep = result['fuse_gate_sweep']
    assert [row['fuse_gate'] for row in sweep] == [0.0, 0.5, 0.9999]
    assert sweep[0]['tiles_per_image'] == 5  # 256's one tile and 512's four
    assert sweep[-1]['tiles_per_image'] < 5  # nothing in a random map peaks above 0.9999
    tiles = [row['tiles_per_image'] for row in sweep]
    assert tiles == sorted(tiles, reverse=True)
    assert sweep[0]['changed'] == 0
    kept = [row['fuse_gate'] for row in sweep
            if row['accuracy'] >= sweep[0]['accuracy'] and row['changed'] <= 0.01 * 2]
    assert result['fuse_gate'] == max(kept)
    entry = json.loads((model / 'sat_seg.json').read_text())['modes']['multiscale']
    assert entry['fuse_gate'] == result['fuse_gate'] == entry['calibration']['fuse_gate']
    chosen = next(row for row in sweep if row['fuse_gate'] == result['fuse_gate'])
    assert entry['threshold'] == chosen['threshold']
    assert entry['min_area_px'] == chosen['min_area_px']
    multiscale = Segmenter.from_model(model, mode='multiscale')
    try:
        assert multiscale.config.fuse_gate == result['fuse_gate']
    finally:
        multiscale.close()
    assert entry['fuse_max_tiles'] == entry['calibration']['fuse_max_tiles'] == 0
    with pytest.raises(ValueError, match='need fused sizes'):
        calibrate(model, val, thresholds=[0.5], fuse_gates=[0.5])
    # A cap calibrates with it: the maps had at most that many fused tiles, and so will use.
    capped = calibrate(model, val, thresholds=[0.3, 0.5], seed_thresholds=[None],
                       mode='capped', fuse_sizes=(512,), fuse_max_tiles=2)
    assert capped['tiles_per_image'] == 3  # 256's one tile and two of 512's four
    entry = json.loads((model / 'sat_seg.json').read_text())['modes']['capped']
    assert entry['fuse_max_tiles'] == entry['calibration']['fuse_max_tiles'] == 2
    segmenter = Segmenter.from_model(model, mode='capped')
    try:
        assert segmenter.config.fuse_max_tiles == 2
    finally:
        segmenter.close()


def test_the_gate_kept_loses_nothing_and_changes_few_outcomes():
    from sat_seg_training.calibrate import choose_fuse_gate

    base = [True] * 50 + [False] * 50
    same = list(base)
    one_more = [True] * 51 + [False] * 49                    # one image changed, +1 right
    swapped = [False] + [True] * 50 + [False] * 49           # two changed, accuracy the same
    worse = [True] * 49 + [False] * 51                       # one changed, -1 right
    assert choose_fuse_gate([base, same, one_more, swapped], 0.01) == 2
    assert choose_fuse_gate([base, same, one_more, swapped], 0.02) == 3
    assert choose_fuse_gate([base, same, one_more, swapped], 0.0) == 1
    assert choose_fuse_gate([base, worse], 1.0) == 0  # never a gate that loses accuracy
    assert choose_fuse_gate([base, worse, one_more], 0.01) == 2


def test_calibrate_command_parses_fuse_gates():
    import argparse

    from sat_seg_training.commands.calibrate import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(['--model', 'm', '--dataset', 'd', '--fuse-gates', '0, 0.7,0.8'])
    assert args.fuse_gates == [0.0, 0.7, 0.8]
    assert parser.parse_args(['--model', 'm', '--dataset', 'd']).fuse_gates == []
    for bad in ('1.5', 'often', '-0.1'):
        with pytest.raises(SystemExit):
            parser.parse_args(['--model', 'm', '--dataset', 'd', '--fuse-gates', bad])


def test_calibrate_command_parses_seed_thresholds():
    import argparse

    from sat_seg_training.commands.calibrate import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(['--model', 'm', '--dataset', 'd',
                              '--seed-thresholds', 'none, 0.99,0.995'])
    assert args.seed_thresholds == [None, 0.99, 0.995]
    for bad in ('1.5', 'often', ','):
        with pytest.raises(SystemExit):
            parser.parse_args(['--model', 'm', '--dataset', 'd', '--seed-thresholds', bad])


def test_calibrate_dry_run_writes_nothing_into_the_model_folder(tiny_model_dir, tmp_path, capsys):
    import argparse
    import shutil

    from sat_seg_training.commands.calibrate import add_arguments, run
    from sat_seg_training.dataset import DatasetWriter

    model = tmp_path / 'model'
    shutil.copytree(tiny_model_dir, model)
    rng = np.random.default_rng(1)
    with DatasetWriter(tmp_path / 'val') as writer:
        mask = np.zeros((300, 280), bool)
        mask[100:140, 100:150] = True
        writer.add('a.png', rng.integers(0, 255, (300, 280), dtype=np.uint8), mask=mask)
    before = {path.name: path.read_bytes() for path in model.iterdir()}
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ['--model', str(model), '--dataset', str(tmp_path / 'val'), '--size', '256',
            '--seed-thresholds', 'none']
    assert run(parser.parse_args(base + ['--dry-run'])) == 0
    assert {path.name: path.read_bytes() for path in model.iterdir()} == before
    assert 'plot:' not in capsys.readouterr().out
    # An explicit --plot is still honoured by a dry run, and the model folder stays untouched.
    assert run(parser.parse_args(base + ['--dry-run', '--plot', str(tmp_path / 's.png')])) == 0
    assert (tmp_path / 's.png').stat().st_size > 1000
    assert {path.name: path.read_bytes() for path in model.iterdir()} == before
