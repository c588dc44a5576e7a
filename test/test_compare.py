"""``sat-seg compare``: paired counts of two evaluate reports, McNemar's test, and refusals."""

import json

import numpy as np
import pytest

from sat_seg_ros import metrics
from sat_seg_ros.cli import main
from sat_seg_training.compare import mcnemar_p, paired, total, z_score


def report(images, wrong, size=512, model='m'):
    """Return a minimal evaluate report: ``images`` scored at ``size``, ``wrong`` failed."""
    return {'dataset': 'd', 'model': model, 'images': list(images),
            'rows': [{'model_size': size, 'images': len(images),
                      'accuracy': 1 - len(wrong) / len(images)}],
            'failures': {str(size): [{'file_name': name, 'iou': 0.0} for name in wrong]}}


@pytest.mark.parametrize('gain,loss', [(8, 2), (2, 8), (5, 5), (0, 3), (40, 17), (0, 0),
                                       (1, 0)])
def test_mcnemar_p_is_the_exact_binomial_test(gain, loss):
    from scipy.stats import binomtest

    expected = 1.0 if gain + loss == 0 else binomtest(gain, gain + loss, 0.5).pvalue
    assert mcnemar_p(gain, loss) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_p(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)


def test_z_score():
    assert z_score(48, 39) == pytest.approx(9 / np.sqrt(87))
    assert z_score(0, 0) == 0.0
    with pytest.raises(ValueError):
        mcnemar_p(-1, 2)


def test_paired_counts_scenes_right_with_one_model_only():
    names = ['a.png', 'b.png', 'c.png', 'd.png', 'e.png', 'f.png']
    candidate = report(names, ['a.png', 'b.png'])
    reference = report(list(reversed(names)), ['b.png', 'c.png', 'd.png'])  # order may differ
    result = paired(candidate, reference)
    assert (result['gain'], result['loss'], result['both']) == (2, 1, 2)  # e, f
    assert result['candidate_accuracy'] == pytest.approx(4 / 6)
    assert result['reference_accuracy'] == pytest.approx(3 / 6)
    assert result['z'] == pytest.approx(1 / np.sqrt(3))
    summed = total([result, paired(report(['x.png'], []), report(['x.png'], ['x.png']))])
    assert (summed['gain'], summed['loss'], summed['images']) == (3, 1, 7)
    assert summed['candidate_accuracy'] == pytest.approx(5 / 7)
    assert summed['p'] == pytest.approx(mcnemar_p(3, 1))


def test_reports_of_different_images_or_sizes_are_refused():
    with pytest.raises(ValueError, match='scored different images'):
        paired(report(['a.png', 'b.png'], []), report(['a.png', 'c.png'], []))
    with pytest.raises(ValueError, match='no row for model size 1024'):
        paired(report(['a.png'], []), report(['a.png'], []), size=1024)
    old = report(['a.png'], [])
    del old['images']
    with pytest.raises(ValueError, match='run sat-seg evaluate --json again'):
        paired(old, report(['a.png'], []))
    with pytest.raises(ValueError, match='did not score'):
        paired(report(['a.png'], ['z.png']), report(['a.png'], []))
    uncounted = report(['a.png'], [])
    del uncounted['rows'][0]['images']
    with pytest.raises(ValueError, match='counts None images but it lists 1'):
        paired(uncounted, report(['a.png'], []))
    odd = report(['a.png'], [])
    odd['failures']['512'] = [{'iou': 0.0}]
    with pytest.raises(ValueError, match='each needs a file_name'):
        paired(odd, report(['a.png'], []))


def correct_per_image(model_dir, dataset, threshold):
    """Each image's correctness, computed with the Segmenter directly (not via evaluate)."""
    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.dataset import load_dataset

    segmenter = Segmenter.from_model(model_dir, model_size=256, threshold=threshold)
    outcome = {}
    for record in load_dataset(dataset):
        image = record.read_image()
        truth = record.read_mask() if record.positive else np.zeros(image.shape[:2], bool)
        outcome[record.file_name] = metrics.iou(segmenter.segment(image).mask, truth) > 0.5
    return outcome


def test_cli_matches_an_independent_computation(tiny_model_dir, small_dataset, tmp_path,
                                                capsys):
    reports = {}
    for threshold in (0.001, 0.999):  # everything foreground / nothing: they must disagree
        reports[threshold] = tmp_path / ('t%s.json' % threshold)
        assert main(['evaluate', '--dataset', str(small_dataset), '--model', str(tiny_model_dir),
                     '--sizes', '256', '--threshold', str(threshold), '--json',
                     str(reports[threshold])]) == 0
        assert json.loads(reports[threshold].read_text())['images'] == [
            'img0.png', 'img1.png', 'img2.png']
    low = correct_per_image(tiny_model_dir, small_dataset, 0.001)
    high = correct_per_image(tiny_model_dir, small_dataset, 0.999)
    gain = sum(low[name] and not high[name] for name in low)
    loss = sum(high[name] and not low[name] for name in low)
    assert gain + loss > 0
    capsys.readouterr()
    out = tmp_path / 'paired.json'
    assert main(['compare', '--candidate', str(reports[0.001]), str(reports[0.001]),
                 '--reference', str(reports[0.999]), str(reports[0.999]), '--size', '256',
                 '--json', str(out)]) == 0
    printed = capsys.readouterr().out
    assert '+%d / -%d' % (gain, loss) in printed and '+%d / -%d' % (2 * gain, 2 * loss) in printed
    written = json.loads(out.read_text())
    assert [(p['gain'], p['loss']) for p in written['pairs']] == [(gain, loss)] * 2
    assert (written['total']['gain'], written['total']['loss']) == (2 * gain, 2 * loss)
    assert written['total']['p'] == pytest.approx(mcnemar_p(2 * gain, 2 * loss))


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    good = tmp_path / 'good.json'
    good.write_text(json.dumps(report(['a.png'], [])))
    other = tmp_path / 'other.json'
    other.write_text(json.dumps(report(['b.png'], [])))
    broken = tmp_path / 'broken.json'
    broken.write_text('{"rows": [')
    binary = tmp_path / 'binary.json'
    binary.write_bytes(b'\xff\xfe\x00\x81')
    out = tmp_path / 'paired.json'
    cases = [(['--candidate', str(good), '--reference', str(other)], 'different images'),
             (['--candidate', str(good), str(good), '--reference', str(good)],
              '2 candidate reports but 1 reference'),
             (['--candidate', str(broken), '--reference', str(good)],
              'broken.json is not readable JSON'),
             (['--candidate', str(tmp_path / 'none.json'), '--reference', str(good)],
              'none.json not found: expected a sat-seg evaluate'),
             (['--candidate', str(binary), '--reference', str(good)],
              'binary.json is not readable JSON'),
             (['--candidate', str(tmp_path), '--reference', str(good)],
              '%s is not readable JSON' % tmp_path)]
    for arguments, message in cases:
        capsys.readouterr()
        assert main(['compare'] + arguments + ['--json', str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
