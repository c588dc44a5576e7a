"""`sat-seg synth`: layout, exact masks, determinism, size and contrast variety."""

import json

import numpy as np
import pytest

from sat_seg_ros.cli import main
from sat_seg_training import dataset as ds
from sat_seg_training import synth


@pytest.fixture(scope='module')
def synth_set(tmp_path_factory):
    out = tmp_path_factory.mktemp('synth')
    assert main(['synth', '--out', str(out), '--n', '40', '--seed', '5', '--neg-frac', '0.2',
                 '--workers', '1', '--contact', '12']) == 0
    return out


def test_layout_grayscale_512x641_masks_agree_with_boxes(synth_set):
    data = ds.load_dataset(synth_set)
    assert len(data) == 40
    negatives = [r for r in data if not r.positive]
    assert len(negatives) == 8
    for record in data:
        image = record.read_image()
        assert image.dtype == np.uint8 and image.shape == (512, 641)
        assert (record.height, record.width) == (512, 641)
        if record.positive:
            mask = record.read_mask()
            assert mask is not None and mask.shape == (512, 641)
            assert ds.mask_bbox(mask) == tuple(int(v) for v in record.bbox_xywh)
        else:
            assert record.mask_path is None
    assert (synth_set / 'contact_sheet.png').is_file()
    coco = json.loads((synth_set / 'annotations.json').read_text())
    assert coco['categories'] == [{'id': 1, 'name': 'satellite'}]
    assert len(coco['annotations']) == 32
    assert ds.validate_dataset(data) == []


def test_one_satellite_per_positive_with_varied_polarity_and_terrain(synth_set):
    coco = json.loads((synth_set / 'annotations.json').read_text())
    sats = [im['synth']['satellite'] for im in coco['images'] if 'satellite' in im['synth']]
    assert len(sats) == 32
    assert {s['polarity'] for s in sats} == {'brighter', 'darker'}
    terrains = {part for im in coco['images'] for part in im['synth']['terrain']}
    assert len(terrains) >= 4


def test_satellite_differs_from_ground_where_masked(synth_set):
    # The pasted satellite changes the pixels it covers: mean |image - local ground| > 0.
    for record in ds.load_dataset(synth_set):
        if record.positive:
            image = record.read_image().astype(float)
            mask = record.read_mask()
            x, y, w, h = (int(v) for v in record.bbox_xywh)
            ring = np.zeros_like(mask)
            ring[max(0, y - 6):y + h + 6, max(0, x - 6):x + w + 6] = True
            ring &= ~mask
            assert abs(image[mask].mean() - image[ring].mean()) > 1.0, record.file_name


def test_deterministic_by_seed_and_index():
    a = synth.make_sample(3, 7, True)
    b = synth.make_sample(3, 7, True)
    c = synth.make_sample(4, 7, True)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


def test_worker_pool_gives_identical_files(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, 'POOL_MIN_IMAGES', 1)
    single = synth.generate(tmp_path / 'one', 4, seed=2, workers=1, contact=0)
    pooled = synth.generate(tmp_path / 'two', 4, seed=2, workers=2, contact=0)
    assert (single['workers'], pooled['workers']) == (1, 2)
    for name in sorted(p.name for p in (tmp_path / 'one' / 'images').iterdir()):
        assert (tmp_path / 'one' / 'images' / name).read_bytes() == \
            (tmp_path / 'two' / 'images' / name).read_bytes()


def test_size_distribution_leans_to_mid_sizes():
    rng = np.random.default_rng(0)
    sizes = np.array([synth.sample_size(rng) for _ in range(5000)])
    assert sizes.min() >= 10 and sizes.max() <= 256
    assert 35 < np.median(sizes) < 80
    assert (sizes < 16).mean() < 0.05 and (sizes > 200).mean() < 0.05


def test_negative_fraction_and_argument_errors(tmp_path):
    assert len(synth.negative_indices(10, 0.3, 0)) == 3
    with pytest.raises(ValueError, match='neg_frac'):
        synth.generate(tmp_path, 2, neg_frac=1.5)
    with pytest.raises(ValueError, match='n=0'):
        synth.generate(tmp_path, 0)


def test_validate_dataset_reports_inconsistencies(tmp_path):
    image = np.zeros((20, 30), np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:10, 6:12] = True
    with ds.DatasetWriter(tmp_path) as writer:
        writer.add('good.png', image, None, mask)
        writer.add('shifted.png', image, (0, 0, 6, 5), mask)
        writer.add('outside.png', image, (25, 0, 10, 5))
        writer.add('gone.png', image)
    (tmp_path / 'images' / 'gone.png').unlink()
    problems = ds.validate_dataset(ds.load_dataset(tmp_path))
    assert len(problems) == 3
    assert problems[0].startswith('shifted.png: bbox') and 'mask box [6, 5, 6, 5]' in problems[0]
    assert problems[1].startswith('outside.png: bbox') and 'not inside' in problems[1]
    assert problems[2].startswith('gone.png') and 'no such file' in problems[2]


def _photo_folder(root, count=3, side=300):
    """Write a few textured 'photographs' (and files that must be skipped) into ``root``."""
    import cv2

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for index in range(count):
        noise = rng.normal(0.5, 0.2, (side // 10, side // 10))
        photo = cv2.resize(noise, (side, side), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(root / f'field{index}.png'), np.clip(photo * 255, 0, 255).astype(np.uint8))
    cv2.imwrite(str(root / 'field0.mask.png'), np.zeros((side, side), np.uint8))  # a variant
    cv2.imwrite(str(root / 'flat.png'), np.full((side, side), 128, np.uint8))  # no content
    (root / 'broken.png').write_bytes(b'not a png')
    return root


def test_backgrounds_folder_gives_photo_scenes(tmp_path):
    photos = _photo_folder(tmp_path / 'photos')
    exclude = tmp_path / 'reserved.txt'
    exclude.write_text('# kept for testing\nfield2.png\n')
    out = tmp_path / 'set'
    assert main(['synth', '--out', str(out), '--n', '12', '--seed', '3', '--backgrounds',
                 str(photos), '--photo-fraction', '1.0', '--exclude-backgrounds', str(exclude),
                 '--contact', '0']) == 0
    data = ds.load_dataset(out)
    assert len(data) == 12 and ds.validate_dataset(data) == []
    coco = json.loads((out / 'annotations.json').read_text())
    assert coco['info']['backgrounds']['images'] == 2  # field0, field1: not the excluded field2
    used = {image['synth']['photo'] for image in coco['images']}
    assert used <= {'field0.png', 'field1.png'} and used
    for record in data:
        image = record.read_image()
        assert image.shape == (512, 641) and image.std() > 5
        if record.positive:
            assert ds.mask_bbox(record.read_mask()) == tuple(int(v) for v in record.bbox_xywh)
    again = tmp_path / 'again'
    assert main(['synth', '--out', str(again), '--n', '12', '--seed', '3', '--backgrounds',
                 str(photos), '--photo-fraction', '1.0', '--exclude-backgrounds', str(exclude),
                 '--contact', '0']) == 0
    for name in ('synth_3_000004.png', 'synth_3_000011.png'):
        assert (out / 'images' / name).read_bytes() == (again / 'images' / name).read_bytes()


def test_backgrounds_folder_without_usable_image_is_refused(tmp_path, capsys):
    import cv2

    empty = tmp_path / 'nothing'
    empty.mkdir()
    (empty / 'broken.png').write_bytes(b'not a png')
    cv2.imwrite(str(empty / 'tiny.png'), np.zeros((20, 20), np.uint8))
    out = tmp_path / 'set'
    assert main(['synth', '--out', str(out), '--n', '4', '--backgrounds', str(empty)]) == 2
    message = capsys.readouterr().err
    assert 'has no usable image' in message and "'unreadable': 1" in message
    assert not out.exists()  # nothing half-written
    assert main(['synth', '--out', str(out), '--n', '4', '--backgrounds',
                 str(tmp_path / 'missing')]) == 2
    assert 'does not exist' in capsys.readouterr().err and not out.exists()


def test_color_scenes_are_the_gray_scenes_coloured(tmp_path):
    """--color: RGB scenes whose luminance and masks are the gray set's of the same seed.

    A photograph that is green keeps its green; procedural scenes take their biomes'
    palettes and the satellite its materials' colours.
    """
    import cv2

    root = tmp_path / 'photos'
    root.mkdir()
    rng = np.random.default_rng(8)
    noise = cv2.resize(rng.normal(0.5, 0.2, (30, 30)), (300, 300), interpolation=cv2.INTER_CUBIC)
    green = np.clip(np.dstack([noise * 0.4, noise, noise * 0.5]) * 255, 0, 255).astype(np.uint8)
    cv2.imwrite(str(root / 'meadow.png'), green)  # BGR on disk: blue 0.4, green 1, red 0.5
    gray_out, colour_out = tmp_path / 'gray', tmp_path / 'colour'
    common = ['--n', '10', '--seed', '3', '--backgrounds', str(root), '--photo-fraction', '0.5',
              '--contact', '0']
    assert main(['synth', '--out', str(gray_out)] + common) == 0
    assert main(['synth', '--out', str(colour_out), '--color'] + common) == 0
    gray_set, colour_set = ds.load_dataset(gray_out), ds.load_dataset(colour_out)
    coco = json.loads((colour_out / 'annotations.json').read_text())
    assert coco['info']['color'] is True and ds.validate_dataset(colour_set) == []
    kinds = set()
    for plain, coloured, entry in zip(gray_set, colour_set, coco['images']):
        gray, rgb = plain.read_image(), coloured.read_image()
        assert gray.shape == (512, 641) and rgb.shape == (512, 641, 3)
        luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(int)
        assert np.percentile(np.abs(luma - gray), 99) <= 2  # rounding, a few saturated pixels
        assert plain.bbox_xywh == coloured.bbox_xywh
        if plain.positive:
            assert np.array_equal(plain.read_mask(), coloured.read_mask())
            assert set(entry['synth']['satellite']['colours']) <= {'foil', 'cells', 'paint'}
            assert entry['synth']['satellite']['colours']
        red, green_channel = rgb[..., 0].astype(float), rgb[..., 1].astype(float)
        if entry['synth'].get('photo') == 'meadow.png':
            kinds.add('photo')
            assert green_channel.mean() > 1.3 * red.mean()
        else:
            kinds.add('procedural')
            assert np.abs(red - green_channel).mean() > 1.0  # a palette, not gray
    assert kinds == {'photo', 'procedural'}
    # the colour draws have their own generator: the gray sample is unchanged by them
    assert np.array_equal(synth.make_sample(3, 4, True).image,
                          synth.make_sample(3, 4, True, color=False).image)
    sprite = synth.render_satellite(np.random.default_rng(0), 60.0)
    assert sprite.material.shape == sprite.coverage.shape


def test_pack_backgrounds_script_writes_jpeg_copies_of_the_selected_photographs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import cv2

    photos = _photo_folder(tmp_path / 'photos', side=300)
    big = cv2.resize(cv2.imread(str(photos / 'field1.png')), (2100, 2100))
    cv2.imwrite(str(photos / 'wide.png'), big)
    exclude = tmp_path / 'reserved.txt'
    exclude.write_text('field2.png\n')
    script = Path(__file__).resolve().parents[1] / 'scripts' / 'pack_backgrounds.py'
    out = tmp_path / 'packed'

    def run(*args):
        return subprocess.run([sys.executable, str(script), *map(str, args)],
                              capture_output=True, text=True, timeout=120)

    done = run(photos, out, '--exclude', exclude, '--quality', '70')
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ['field0.jpg', 'field1.jpg', 'wide.jpg']
    assert cv2.imread(str(out / 'field0.jpg')).shape == (300, 300, 3)
    assert cv2.imread(str(out / 'wide.jpg')).shape == (1050, 1050, 3)  # 2048 px or more: halved
    original = cv2.imread(str(photos / 'field0.png')).astype(float)
    assert np.abs(cv2.imread(str(out / 'field0.jpg')) - original).mean() < 3
    # the copies are a backgrounds folder that synth takes as it is
    scenes = tmp_path / 'set'
    assert main(['synth', '--out', str(scenes), '--n', '4', '--seed', '3', '--backgrounds',
                 str(out), '--photo-fraction', '1.0', '--contact', '0']) == 0
    assert json.loads((scenes / 'annotations.json').read_text())['info']['backgrounds'][
        'images'] == 3
    # an existing folder is refused, and a folder with nothing usable leaves nothing behind
    again = run(photos, out)
    assert again.returncode == 2 and 'exists' in again.stderr
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'broken.png').write_bytes(b'not a png')
    failed = run(empty, tmp_path / 'none')
    assert failed.returncode == 2 and 'has no usable image' in failed.stderr
    assert not (tmp_path / 'none').exists() and not (tmp_path / 'none.tmp').exists()
