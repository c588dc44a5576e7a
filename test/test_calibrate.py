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


def test_sweep_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match='as many'):
        sweep([np.zeros((4, 4))], [], thresholds=[0.5])


def test_calibrate_writes_threshold_and_plot(tiny_model_dir, tmp_path):
    import shutil

    from sat_seg_training.dataset import DatasetWriter

    model = tmp_path / 'model'
    shutil.copytree(tiny_model_dir, model)
    (model / 'sat_seg.json').write_text(json.dumps({'prompt_mode': 'box', 'threshold': 0.65,
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
