"""Patches: runtime tiling, tile selection, manifest, and the synth -> patches -> stitch trip."""

import numpy as np
import pytest

from sat_seg_ros.cli import main
from sat_seg_ros.metrics import iou
from sat_seg_ros.tiling import resize, TileGrid
from sat_seg_training import dataset as ds
from sat_seg_training import patches, splits


@pytest.fixture(scope='module')
def synth_set(tmp_path_factory):
    out = tmp_path_factory.mktemp('synth')
    assert main(['synth', '--out', str(out), '--n', '6', '--seed', '11', '--neg-frac', '0.34',
                 '--contact', '0']) == 0
    return out


@pytest.mark.parametrize('overlap', [0, 48])
def test_round_trip_recovers_masks(synth_set, tmp_path, overlap):
    data = ds.load_dataset(synth_set)
    summary = patches.make_patches(data, tmp_path, sizes=(512, 1024), overlap=overlap)
    assert summary['skipped'] == []
    rows = patches.read_manifest(tmp_path)
    assert all(r['satellite_px'] > 0 for r in rows)          # empty_frac 0: satellites only
    for record in data:
        if not record.positive:
            assert not any(r['source'] == record.file_name for r in rows)
            continue
        truth = record.read_mask()
        for size in (512, 1024):
            stitched = patches.stitch_mask(tmp_path, record.file_name, size)
            assert np.array_equal(stitched, patches.resized_mask(truth, size))
        # Back at the image size (the runtime's resize), the 1024 mask matches the original.
        back = resize(patches.stitch_mask(tmp_path, record.file_name, 1024).astype(np.float32),
                      512, 641) >= 0.5
        assert iou(back, truth) > 0.8, record.file_name


def test_tiles_follow_the_runtime_grid_and_images(synth_set, tmp_path):
    data = ds.load_dataset(synth_set)
    patches.make_patches(data, tmp_path, sizes=(512,), empty_frac=1.0)
    rows = patches.read_manifest(tmp_path)
    grid = TileGrid(512, 512, 256, 0)
    assert len(rows) == len(data) * len(grid)
    record = data[0]
    tiles = grid.cut(resize(record.read_image(), 512, 512))
    for row in (r for r in rows if r['source'] == record.file_name):
        k = grid.origins.index((row['y'], row['x']))
        assert np.array_equal(ds.read_image(tmp_path / row['tile']), tiles[k])
        mask_tile = ds.read_image(tmp_path / row['mask']) > 0
        assert mask_tile.sum() == row['satellite_px']
        assert row['image_positive'] == int(record.positive)


def test_split_column_and_no_image_in_two_splits(synth_set, tmp_path):
    data = ds.load_dataset(synth_set)
    assignment = splits.assign_splits(data, (0.5, 0.25, 0.25), seed=0)
    summary = patches.make_patches(data, tmp_path, sizes=(512,), empty_frac=0.5,
                                   assignment=assignment)
    rows = patches.read_manifest(tmp_path)
    for row in rows:
        assert row['split'] == assignment[row['source']]
    assert sum(c['512']['tiles'] for c in summary['counts'].values()) == len(rows)


def test_positive_without_mask_is_listed_not_dropped(tmp_path):
    source = tmp_path / 'src'
    with ds.DatasetWriter(source) as writer:
        writer.add('a.png', np.zeros((300, 300), np.uint8), (10, 10, 20, 20))
    summary = patches.make_patches(ds.load_dataset(source), tmp_path / 'out', sizes=(512,))
    assert summary['skipped'][0]['file'] == 'a.png' and summary['tiles'] == 0
    with pytest.raises(ValueError, match='tile_size'):
        patches.make_patches(ds.load_dataset(source), tmp_path / 'x', sizes=(128,))


def test_patches_command(synth_set, tmp_path):
    assert main(['patches', '--dataset', str(synth_set), '--out', str(tmp_path),
                 '--sizes', '512', '--empty-frac', '0.25']) == 0
    assert (tmp_path / 'manifest.csv').is_file() and (tmp_path / 'patches.json').is_file()
