"""``sat-seg evaluate``: Table 1 rows agree with an independent computation via the Segmenter."""

import json

import numpy as np
import pytest

from sat_seg_ros import metrics
from sat_seg_ros.cli import main
from sat_seg_training.dataset import DatasetWriter


def test_table_matches_an_independent_computation(tiny_model_dir, small_dataset, tmp_path):
    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.dataset import load_dataset
    from sat_seg_training.evaluate import evaluate, format_table

    report = evaluate(small_dataset, str(tiny_model_dir), sizes=[256], threshold=0.5,
                      gallery=tmp_path / 'gallery.png')
    row = report['rows'][0]
    segmenter = Segmenter.from_model(tiny_model_dir, model_size=256, threshold=0.5)
    correct, ious = [], []
    for record in load_dataset(small_dataset):
        image = record.read_image()
        truth = record.read_mask() if record.positive else np.zeros(image.shape[:2], bool)
        value = metrics.iou(segmenter.segment(image).mask, truth)
        correct.append(value > 0.5)
        if record.positive:
            ious.append(value)
    assert row['images'] == 3 and row['positives'] == 2 and row['negatives'] == 1
    assert row['accuracy'] == pytest.approx(np.mean(correct))
    assert row['mean_iou'] == pytest.approx(np.mean(ious))
    assert row['seconds_per_image'] > 0
    assert (tmp_path / 'gallery.png').stat().st_size > 500
    assert 'accuracy' in format_table(report)


def test_cli_writes_json(tiny_model_dir, small_dataset, tmp_path, capsys):
    out = tmp_path / 'table.json'
    code = main(['evaluate', '--dataset', str(small_dataset), '--model', str(tiny_model_dir),
                 '--sizes', '256,512', '--json', str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert [r['model_size'] for r in report['rows']] == [256, 512]
    assert (tmp_path / 'table_failures.png').is_file()
    assert 'machine' in capsys.readouterr().out
    assert all(row['breakdown'] for row in report['rows'])
    assert main(['evaluate', '--dataset', str(small_dataset), '--model', str(tiny_model_dir),
                 '--sizes', '256', '--strata']) == 0
    printed = capsys.readouterr().out
    assert 'accuracy at 256 by stratum' in printed and '40-80 px' in printed


def test_rows_count_the_tiles_a_fuse_gate_lets_through(tiny_model_dir, small_dataset):
    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.dataset import load_dataset
    from sat_seg_training.evaluate import evaluate, format_table

    plain, gated = (evaluate(small_dataset, str(tiny_model_dir), sizes=[256], fuse_sizes=(512,),
                             fuse_gate=gate)['rows'][0] for gate in (0, 0.6))
    assert plain['tiles_per_image'] == 5 and plain['fuse_gate'] == 0.0
    segmenter = Segmenter.from_model(tiny_model_dir, model_size=256, fuse_sizes=(512,),
                                     fuse_gate=0.6)
    counts = [segmenter.segment(r.read_image()).tiles for r in load_dataset(small_dataset)]
    assert gated['tiles_per_image'] == pytest.approx(np.mean(counts))
    assert gated['tiles_max'] == max(counts) and plain['tiles_max'] == 5
    assert gated['fuse_gate'] == 0.6 and 1 <= gated['tiles_per_image'] <= 5
    table = format_table({'model': 'm', 'dataset': 'd', 'machine': 'x', 'rows': [gated]})
    assert '512 (gate 0.6)' in table and ' %.1f ' % gated['tiles_per_image'] in table
    # A cap of one fused tile: every frame runs 256's one tile and one of 512's four.
    capped = evaluate(small_dataset, str(tiny_model_dir), sizes=[256], fuse_sizes=(512,),
                      fuse_max_tiles=1)['rows'][0]
    assert (capped['tiles_per_image'], capped['tiles_max'], capped['fuse_max_tiles']) == (2, 2, 1)
    table = format_table({'model': 'm', 'dataset': 'd', 'machine': 'x', 'rows': [capped]})
    assert '512 (at most 1)' in table


def test_cli_refuses_bad_sizes(small_dataset):
    with pytest.raises(SystemExit):
        main(['evaluate', '--dataset', str(small_dataset), '--sizes', '512,abc'])


def test_breakdown_by_satellite_size_and_background(tiny_model_dir, tmp_path):
    """Strata come from the true masks and the synth record; they add up to the whole row."""
    from sat_seg_training.dataset import load_dataset
    from sat_seg_training.evaluate import evaluate, format_table

    root = tmp_path / 'strata'
    rng = np.random.default_rng(5)
    sides = {'small.png': (10, 30), 'mid.png': (50, 20), 'large.png': (90, 170)}  # h, w
    with DatasetWriter(root) as writer:
        for name, (height, width) in sides.items():
            mask = np.zeros((240, 300), bool)
            mask[30:30 + height, 40:40 + width] = True
            terrain = ['photo', 'clouds'] if name == 'mid.png' else ['town', 'roads']
            writer.add(name, rng.integers(0, 255, mask.shape, dtype=np.uint8), mask=mask,
                       extra={'synth': {'terrain': terrain}})
        writer.add('empty.png', rng.integers(0, 255, (240, 300), dtype=np.uint8),
                   extra={'synth': {'terrain': ['photo']}})
        writer.add('imported.png', rng.integers(0, 255, (240, 300), dtype=np.uint8))
    assert load_dataset(root)[0].extra == {'synth': {'terrain': ['town', 'roads']}}

    report = evaluate(root, str(tiny_model_dir), sizes=[256], threshold=0.5)
    row = report['rows'][0]
    table = {(e['group'], e['stratum']): e for e in row['breakdown']}
    assert [key[1] for key in table if key[0] == 'satellite size'] == [
        'no satellite', '20-40 px', '40-80 px', '>= 160 px']
    assert table['satellite size', 'no satellite']['images'] == 2
    assert table['satellite size', 'no satellite']['mean_iou'] is None
    assert table['background', 'photograph']['images'] == 2
    assert table['background', 'procedural']['images'] == 2
    assert table['background', 'not recorded']['images'] == 1
    assert table['background, satellite', 'photograph, no']['images'] == 1
    outcomes = {f['file_name']: f for f in report['failures'][256]}
    assert [key[1] for key in table if key[0] == 'visibility'][0] == 'no satellite'
    assert table['visibility', 'no satellite']['images'] == 2
    for group in ('satellite size', 'visibility', 'background', 'background, satellite'):
        entries = [e for e in row['breakdown'] if e['group'] == group]
        assert sum(e['images'] for e in entries) == row['images']
        weighted = sum(e['accuracy'] * e['images'] for e in entries) / row['images']
        assert weighted == pytest.approx(row['accuracy'])
    for name, found in outcomes.items():
        if name in sides:
            assert found['size_px'] == max(sides[name])
            assert found['visibility'] < 1  # uniform noise on both sides of the mask
    assert 'background, satellite' in format_table(report, strata=True)
    assert 'background, satellite' not in format_table(report)  # the table alone by default


def test_visibility_is_the_luminance_step_over_the_rings_spread():
    """A satellite's visibility: its luminance against its surroundings', not its colour."""
    from sat_seg_training.evaluate import (satellite_visibility, VISIBILITY_NOISE,
                                           visibility_stratum)

    mask = np.zeros((120, 160), bool)
    mask[40:70, 50:90] = True
    flat = np.full(mask.shape, 100, np.uint8)
    flat[mask] = 130
    assert satellite_visibility(flat, mask) == pytest.approx(30 / VISIBILITY_NOISE)
    assert satellite_visibility(255 - flat, mask) == pytest.approx(30 / VISIBILITY_NOISE)

    rng = np.random.default_rng(3)
    noisy = np.clip(100 + rng.normal(0, 10, mask.shape), 0, 255)
    noisy[mask] += 20
    assert satellite_visibility(noisy.astype(np.uint8), mask) == pytest.approx(
        20 / (10 + VISIBILITY_NOISE), rel=0.1)

    colour = np.full(mask.shape + (3,), 100, np.uint8)
    colour[mask] = (200, 49, 100)  # red-purple of the ground's luminance (Rec. 601: 99.96)
    assert satellite_visibility(colour, mask) < 0.05
    assert satellite_visibility(flat.astype(np.float32) / 255, mask) == pytest.approx(
        30 / VISIBILITY_NOISE, rel=0.02)  # float frames in [0, 1] too

    assert satellite_visibility(flat, np.zeros(mask.shape, bool)) is None
    assert satellite_visibility(flat, np.ones(mask.shape, bool)) is None  # no ring left
    assert [visibility_stratum(v) for v in (0.3, 1.0, 2.5, 3.0, 40.0, None)] == [
        '< 1 sd', '1-2 sd', '2-3 sd', '>= 3 sd', '>= 3 sd', 'not measured']
    assert visibility_stratum(None, positive=False) == 'no satellite'


def test_a_satellite_without_a_mask_is_refused_and_skipped_with_reasons(tmp_path):
    # evaluate needs every satellite's mask for the IoU; the patch cutter skips such an image
    # and says why; the record itself tells them apart.
    from sat_seg_training import dataset, patches
    from sat_seg_training.evaluate import evaluate

    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / 'data') as writer:
        writer.add('masked.png', rng.integers(0, 255, (48, 64), dtype=np.uint8),
                   mask=np.pad(np.ones((8, 8), bool), ((10, 30), (10, 46))))
        writer.add('boxed.png', rng.integers(0, 255, (48, 64), dtype=np.uint8),
                   bbox_xywh=(1, 2, 3, 4))
    records = {r.file_name: r for r in dataset.load_dataset(tmp_path / 'data')}
    assert records['boxed.png'].missing_mask and not records['masked.png'].missing_mask
    with pytest.raises(ValueError, match='satellites without masks'):
        evaluate(tmp_path / 'data', sizes=(512,))
    summary = patches.make_patches(dataset.load_dataset(tmp_path / 'data'), tmp_path / 'out',
                                   sizes=(512,))
    assert [s['file'] for s in summary['skipped']] == ['boxed.png']
    assert 'sat-seg label' in summary['skipped'][0]['reason']


def test_a_cast_puts_every_frame_under_it_before_the_segmenter(tiny_model_dir, tmp_path,
                                                               capsys):
    """--cast gray on colour frames scores exactly what the Segmenter gives their luminance."""
    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.casts import apply_cast, cast_seed
    from sat_seg_training.dataset import load_dataset

    root = tmp_path / 'colour'
    rng = np.random.default_rng(5)
    with DatasetWriter(root) as writer:
        for index in range(3):
            image = rng.integers(0, 255, (200, 250, 3), dtype=np.uint8)
            image[..., 0] //= 3  # a strong tint, so the gray frame differs from each channel
            mask = np.zeros((200, 250), bool)
            mask[50:90, 40 + 60 * index:100 + 60 * index] = True
            writer.add('c%d.png' % index, image, mask=mask)
    out = tmp_path / 'cast.json'
    assert main(['evaluate', '--dataset', str(root), '--model', str(tiny_model_dir), '--sizes',
                 '256', '--threshold', '0.5', '--cast', 'gray', '--json', str(out)]) == 0
    assert 'cast: gray' in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report['rows'][0]['cast'] == 'gray'
    segmenter = Segmenter.from_model(tiny_model_dir, model_size=256, threshold=0.5)
    ious = []
    for record in load_dataset(root):
        frame = apply_cast(record.read_image(), 'gray', cast_seed(record.file_name))
        assert frame.ndim == 2
        ious.append(metrics.iou(segmenter.segment(frame).mask, record.read_mask()))
    assert report['rows'][0]['mean_iou'] == pytest.approx(np.mean(ious))
    with pytest.raises(SystemExit):
        main(['evaluate', '--dataset', str(root), '--cast', 'sepia'])
