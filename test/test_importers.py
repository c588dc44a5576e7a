"""Importers: COCO / YOLO / CSV into the dataset layout; every bad label reported by file."""

import json

import cv2
import numpy as np
import pytest

from sat_seg_ros.cli import main
from sat_seg_training import dataset as ds
from sat_seg_training.importers import check_box, import_dataset


def _image(path, height=60, width=80):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width), 100, np.uint8))


def _reasons(report):
    return {entry['file']: entry['reason'] for entry in report.rejected}


def test_check_box_rules():
    assert check_box([1, 2, 10, 20], 80, 60) == ((1.0, 2.0, 10.0, 20.0), '')
    assert check_box([-0.5, 0, 10, 60.4], 80, 60)[0] == (0.0, 0.0, 9.5, 60.0)   # clipped
    assert 'outside' in check_box([75, 0, 10, 10], 80, 60)[1]
    assert 'non-positive' in check_box([5, 5, 0, 10], 80, 60)[1]
    assert 'four numbers' in check_box(['a', 1, 2, 3], 80, 60)[1]


@pytest.fixture
def coco_source(tmp_path):
    images = tmp_path / 'src'
    for name in ('good.png', 'neg.png', 'outside.png', 'dup_a.png', 'dup_b.png', 'two.png'):
        _image(images / name)
    (images / 'broken.png').write_bytes(b'not a png')
    coco = {
        'images': [
            {'id': 1, 'file_name': 'good.png', 'width': 80, 'height': 60},
            {'id': 2, 'file_name': 'neg.png', 'width': 80, 'height': 60},
            {'id': 3, 'file_name': 'outside.png', 'width': 80, 'height': 60},
            {'id': 4, 'file_name': 'missing.png', 'width': 80, 'height': 60},
            {'id': 5, 'file_name': 'broken.png', 'width': 80, 'height': 60},
            {'id': 6, 'file_name': 'dup_a.png', 'width': 80, 'height': 60},
            {'id': 6, 'file_name': 'dup_b.png', 'width': 80, 'height': 60},
            {'id': 7, 'file_name': 'two.png', 'width': 80, 'height': 60},
        ],
        'annotations': [
            {'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [10, 10, 20, 10],
             'segmentation': [[10, 10, 30, 10, 30, 20, 10, 20]]},
            {'id': 2, 'image_id': 3, 'category_id': 1, 'bbox': [70, 50, 20, 20]},
            {'id': 3, 'image_id': 4, 'category_id': 1, 'bbox': [1, 1, 5, 5]},
            {'id': 4, 'image_id': 5, 'category_id': 1, 'bbox': [1, 1, 5, 5]},
            {'id': 5, 'image_id': 99, 'category_id': 1, 'bbox': [1, 1, 5, 5]},
            {'id': 6, 'image_id': 7, 'category_id': 1, 'bbox': [1, 1, 5, 5]},
            {'id': 7, 'image_id': 7, 'category_id': 1, 'bbox': [20, 20, 5, 5]},
        ],
        'categories': [{'id': 1, 'name': 'satellite'}]}
    (tmp_path / 'coco.json').write_text(json.dumps(coco))
    return tmp_path


def test_coco_import_reports_every_bad_label(coco_source, tmp_path):
    out = tmp_path / 'out'
    report = import_dataset('coco', out, coco_source / 'src', coco_source / 'coco.json')
    reasons = _reasons(report)
    assert set(reasons) == {'outside.png', 'missing.png', 'broken.png', 'dup_a.png',
                            'dup_b.png', 'two.png', 'annotation 5'}
    assert 'outside' in reasons['outside.png']
    assert 'missing' in reasons['missing.png']
    assert 'unreadable' in reasons['broken.png']
    assert 'duplicate image id 6' in reasons['dup_a.png']
    assert 'image id 99' in reasons['annotation 5']
    assert 'one satellite per image' in reasons['two.png']
    data = ds.load_dataset(out)
    assert [r.file_name for r in data] == ['good.png', 'neg.png']
    good, neg = data.records
    assert good.bbox_xywh == (10.0, 10.0, 20.0, 10.0) and not neg.positive
    mask = good.read_mask()
    assert ds.mask_bbox(mask) == (10, 10, 21, 11)      # polygon rasterised inclusively
    assert good.image_path.read_bytes() == (coco_source / 'src' / 'good.png').read_bytes()
    saved = json.loads((out / 'import_report.json').read_text())
    assert saved['imported'] == 2 and len(saved['rejected']) == 7


def test_yolo_import(tmp_path):
    images, labels = tmp_path / 'images', tmp_path / 'labels'
    for name in ('a.png', 'b.png', 'c.png', 'd.png', 'sub/e.png'):
        _image(images / name, 100, 200)
    labels.mkdir()
    (labels / 'a.txt').write_text('0 0.5 0.5 0.1 0.2\n')
    (labels / 'b.txt').write_text('0 0.5 0.5 zero 0.2\n')
    (labels / 'c.txt').write_text('0 1.5 0.5 0.1 0.2\n')
    (labels / 'orphan.txt').write_text('0 0.5 0.5 0.1 0.1\n')
    (labels / 'sub').mkdir()
    (labels / 'sub' / 'e.txt').write_text('')
    out = tmp_path / 'out'
    report = import_dataset('yolo', out, images, labels)
    reasons = _reasons(report)
    assert set(reasons) == {'b.png', 'c.png', 'orphan.txt'}
    assert 'class cx cy w h' in reasons['b.png']
    assert 'normalised' in reasons['c.png']
    assert report.notes == [{'file': 'd.png', 'note': 'no label file: imported without a '
                                                      'satellite'}]
    records = {r.file_name: r for r in ds.load_dataset(out)}
    assert set(records) == {'a.png', 'd.png', 'sub/e.png'}
    assert records['a.png'].bbox_xywh == pytest.approx((90.0, 40.0, 20.0, 20.0))
    assert not records['d.png'].positive and not records['sub/e.png'].positive


def test_csv_import_and_cli_exit_codes(tmp_path, capsys):
    images = tmp_path / 'images'
    for name in ('a.png', 'b.png', 'c.png', 'unlisted.png'):
        _image(images / name)
    (tmp_path / 'labels.csv').write_text(
        'file,x,y,w,h\na.png,5,6,10,12\nb.png,,,,\nc.png,70,5,30,5\nmissing.png,1,1,2,2\n'
        'a.png,5,6,10\n')
    out = tmp_path / 'out'
    code = main(['import', '--format', 'csv', '--images', str(images), '--labels',
                 str(tmp_path / 'labels.csv'), '--out', str(out)])
    assert code == 1
    err = capsys.readouterr().err
    for name in ('a.png', 'c.png', 'missing.png', 'unlisted.png'):
        assert f'rejected {name}' in err
    report = json.loads((out / 'import_report.json').read_text())
    reasons = {entry['file']: entry['reason'] for entry in report['rejected']}
    assert 'expected file,x,y,w,h' in reasons['a.png']
    assert 'outside' in reasons['c.png']
    assert 'not listed' in reasons['unlisted.png']
    assert [r.file_name for r in ds.load_dataset(out)] == ['b.png']
    assert main(['import', '--format', 'csv', '--images', str(images), '--labels',
                 str(tmp_path / 'labels.csv'), '--out', str(out), '--allow-rejects']) == 0


def test_missing_inputs_fail_with_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere'):
        import_dataset('csv', tmp_path / 'out', tmp_path, tmp_path / 'nowhere.csv')
