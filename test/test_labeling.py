"""`sat-seg label`: report structure, IoU against an independent computation, method parts.

The SAM models here have random weights: tests check structure and bookkeeping, not quality.
"""

import json

import cv2
import numpy as np
import pytest

from sat_seg_ros.cli import main
from sat_seg_training import dataset as ds
from sat_seg_training import labeling

REPORT_KEYS = {'method', 'images', 'labelled', 'yield', 'mean_iou_vs_truth', 'models',
               'unlabelled', 'positives', 'negatives', 'truth_images'}


@pytest.fixture(scope='module')
def synth_set(tmp_path_factory):
    out = tmp_path_factory.mktemp('synth')
    assert main(['synth', '--out', str(out), '--n', '8', '--seed', '21', '--neg-frac', '0.25',
                 '--contact', '0']) == 0
    return out


@pytest.fixture(scope='module')
def second_model_dir(tmp_path_factory):
    from sat_seg_ros.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp('tiny_b'), image_size=256, seed=1)


def independent_mean_iou(source, out):
    """Mean IoU over the source's positives, recomputed from the files; missing masks = 0."""
    labelled = {r.file_name: r for r in ds.load_dataset(out)}
    scores = []
    for record in ds.load_dataset(source):
        if not record.positive:
            continue
        truth = cv2.imread(str(record.mask_path), cv2.IMREAD_GRAYSCALE) > 0
        got = labelled.get(record.file_name)
        if got is None or got.mask_path is None:
            scores.append(0.0)
            continue
        mask = cv2.imread(str(got.mask_path), cv2.IMREAD_GRAYSCALE) > 0
        scores.append((mask & truth).sum() / (mask | truth).sum())
    return float(np.mean(scores))


def check_report(report, source, out):
    assert REPORT_KEYS <= set(report)
    assert report == json.loads((out / 'label_report.json').read_text())
    data = ds.load_dataset(source)
    positives = [r for r in data if r.positive]
    assert report['images'] == len(data) and report['positives'] == len(positives)
    assert report['labelled'] + len(report['unlabelled']) == len(positives)
    assert report['yield'] == pytest.approx(report['labelled'] / len(positives), abs=1e-4)
    assert report['mean_iou_vs_truth'] == pytest.approx(independent_mean_iou(source, out),
                                                        abs=1e-4)
    written = ds.load_dataset(out)
    assert sum(r.positive for r in written) == report['labelled']
    assert sum(not r.positive for r in written) == report['negatives']
    for record in written:
        if record.positive:
            original = next(r for r in positives if r.file_name == record.file_name)
            assert record.bbox_xywh == original.bbox_xywh and record.mask_path is not None


def test_grabcut_report_matches_independent_iou(synth_set, tmp_path):
    out = tmp_path / 'gc'
    assert main(['label', '--dataset', str(synth_set), '--method', 'grabcut',
                 '--out', str(out)]) == 0
    report = json.loads((out / 'label_report.json').read_text())
    check_report(report, synth_set, out)
    assert report['models'][0]['model'] == 'grabcut'


def test_box_with_two_models_side_by_side(synth_set, tmp_path, tiny_model_dir,
                                          second_model_dir):
    out = tmp_path / 'box'
    assert main(['label', '--dataset', str(synth_set), '--method', 'box', '--model',
                 str(tiny_model_dir), '--model', str(second_model_dir), '--out', str(out)]) == 0
    report = json.loads((out / 'label_report.json').read_text())
    check_report(report, synth_set, out)
    assert [m['model'] for m in report['models']] == [str(tiny_model_dir), str(second_model_dir)]
    # Box masks are clipped to the label box.
    for record in ds.load_dataset(out):
        if record.positive:
            x, y, w, h = record.bbox_xywh
            mx, my, mw, mh = ds.mask_bbox(record.read_mask())
            assert mx >= int(x) and my >= int(y)
            assert mx + mw <= np.ceil(x + w) and my + mh <= np.ceil(y + h)


def test_auto_report_structure(synth_set, tmp_path, tiny_model_dir):
    out = tmp_path / 'auto'
    data = ds.load_dataset(synth_set)
    params = labeling.AutoParams(points_per_side=4, pred_iou_thresh=-1e9,
                                 stability_thresh=0.0, min_box_iou=0.0)
    report = labeling.label_dataset(data, out, 'auto', [tiny_model_dir], params=params)
    check_report(report, synth_set, out)
    assert report['auto_params']['points_per_side'] == 4


def test_no_true_masks_gives_null_iou(tmp_path):
    source = tmp_path / 'src'
    image = np.full((64, 80, 3), 40, np.uint8)
    image[20:40, 30:50] = 220
    with ds.DatasetWriter(source) as writer:
        writer.add('a.png', image, (30, 20, 20, 20))
    report = labeling.label_dataset(ds.load_dataset(source), tmp_path / 'out', 'grabcut')
    assert report['mean_iou_vs_truth'] is None and report['truth_images'] == 0
    assert report['labelled'] == 1
    assert 'grabcut' in labeling.yield_table(report)


def test_grabcut_finds_a_clear_object():
    rng = np.random.default_rng(0)
    image = rng.normal(60, 8, (120, 160)).clip(0, 255).astype(np.uint8)
    truth = np.zeros((120, 160), bool)
    cv2.circle(image, (80, 60), 20, 200, -1)
    cv2.circle(truth.view(np.uint8), (80, 60), 20, 1, -1)
    mask = labeling.grabcut_mask(image, (55, 35, 50, 50))
    assert (mask & truth).sum() / (mask | truth).sum() > 0.8


def test_pick_mask_prefers_the_best_box_match_inside_the_label():
    def rect(x0, y0, x1, y1):
        mask = np.zeros((100, 100), bool)
        mask[y0:y1, x0:x1] = True
        return mask

    label = (20, 20, 40, 40)
    params = labeling.AutoParams(min_box_iou=0.5)
    good, small, outside = rect(22, 22, 58, 58), rect(30, 30, 40, 40), rect(0, 0, 100, 100)
    mask, score = labeling.pick_mask([small, outside, good], label, params)
    assert mask is good and score == pytest.approx(36 * 36 / 1600)
    assert labeling.pick_mask([small, outside], label, params) == (None, pytest.approx(0.0625))


def test_stability_score_and_box_iou():
    logits = np.zeros((2, 4, 4), np.float32)
    logits[0] = 5.0                       # confidently on everywhere: stable
    logits[1, :2] = 0.5                   # weak: disappears at +offset
    assert labeling.stability_score(logits, 1.0).tolist() == [1.0, 0.0]
    assert labeling.box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_sam_methods_check_the_model_folder(synth_set, tmp_path):
    with pytest.raises(FileNotFoundError, match='config.json'):
        labeling.label_dataset(ds.load_dataset(synth_set), tmp_path / 'out', 'box',
                               models=[tmp_path])


@pytest.mark.parametrize('method', ['box', 'auto'])
def test_a_compact_sam_with_mask_features_labels(synth_set, tmp_path, cnn_hq_model_dir, method):
    """Its prompts reach the decoder with the image's mask features (box and point batches)."""
    out = tmp_path / method
    data = ds.load_dataset(synth_set)
    params = labeling.AutoParams(points_per_side=4, pred_iou_thresh=-1e9,
                                 stability_thresh=0.0, min_box_iou=0.0)
    report = labeling.label_dataset(data, out, method, [cnn_hq_model_dir], params=params)
    check_report(report, synth_set, out)
