"""Splits by image: deterministic, disjoint, test keeps images without a satellite."""

import json

import pytest

from sat_seg_ros.cli import main
from sat_seg_training import dataset as ds
from sat_seg_training import splits


def _fake_dataset(tmp_path, positives, negatives):
    records = [ds.Record(f'p{i}.png', tmp_path / f'p{i}.png', 8, 8, (1, 1, 2, 2), None)
               for i in range(positives)]
    records += [ds.Record(f'n{i}.png', tmp_path / f'n{i}.png', 8, 8, None, None)
                for i in range(negatives)]
    return ds.Dataset(tmp_path, records)


def test_assignment_is_deterministic_disjoint_and_complete(tmp_path):
    data = _fake_dataset(tmp_path, 50, 10)
    first = splits.assign_splits(data, (0.8, 0.1, 0.1), seed=1)
    assert first == splits.assign_splits(data, (0.8, 0.1, 0.1), seed=1)
    assert first != splits.assign_splits(data, (0.8, 0.1, 0.1), seed=2)
    assert set(first) == {r.file_name for r in data}
    counts = {s: sum(v == s for v in first.values()) for s in splits.SPLITS}
    assert counts == {'train': 48, 'val': 6, 'test': 6}
    assert sum(v == 'test' for k, v in first.items() if k.startswith('n')) == 1


def test_test_split_keeps_negatives_even_when_few(tmp_path):
    data = _fake_dataset(tmp_path, 20, 2)
    assignment = splits.assign_splits(data, (0.8, 0.1, 0.1), seed=0)
    assert any(v == 'test' for k, v in assignment.items() if k.startswith('n'))
    everything = splits.assign_splits(data, (0.8, 0.1, 0.1), seed=0, negatives='test')
    assert all(v == 'test' for k, v in everything.items() if k.startswith('n'))


def test_parse_fractions_errors():
    assert splits.parse_fractions('0.7,0.2,0.1') == [0.7, 0.2, 0.1]
    for bad in ('0.5,0.5', '0.5,0.5,0.5', 'a,b,c', '-0.1,0.6,0.5'):
        with pytest.raises(ValueError, match='fractions'):
            splits.parse_fractions(bad)


def test_split_command_writes_loadable_folders(tmp_path):
    src = tmp_path / 'src'
    assert main(['synth', '--out', str(src), '--n', '12', '--neg-frac', '0.25',
                 '--contact', '0']) == 0
    out = tmp_path / 'split'
    assert main(['split', '--dataset', str(src), '--out', str(out),
                 '--fractions', '0.5,0.25,0.25']) == 0
    summary = json.loads((out / 'splits.json').read_text())
    names = [n for s in splits.SPLITS for n in summary['splits'][s]]
    assert sorted(names) == sorted(r.file_name for r in ds.load_dataset(src))
    assert summary['counts']['test']['negatives'] >= 1
    for split in splits.SPLITS:
        data = ds.load_dataset(out / split)
        assert [r.file_name for r in data] == summary['splits'][split]
        for record in data:
            assert record.read_image().shape == (512, 641)
            assert record.positive == (record.mask_path is not None)
    assert splits.load_assignment(out / 'splits.json')[names[0]] in splits.SPLITS
