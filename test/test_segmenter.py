"""The Segmenter: geometry end to end, configuration, and a real small SamModel."""

import json

import numpy as np
import pytest

from sat_seg_ros.backends import Backend
from sat_seg_ros.config import fusion_label, SegmenterConfig
from sat_seg_ros.postprocess import find_detections
from sat_seg_ros.segmenter import Segmenter, sigmoid


class BrightnessBackend(Backend):
    """A transparent stand-in for SAM that calls bright pixels satellite: logit = (v - 128) / 8.

    It checks the geometry (resize, tiles, batches, stitch, resize back, components) with a known
    answer; the real-model tests below check the same path with SAM.
    """

    name = 'brightness'

    def __init__(self):
        super().__init__('brightness-model')
        self.input_size = 256
        self.batches = []

    def predict(self, tiles):
        self.batches.append(len(tiles))
        return (tiles.mean(axis=3) - 128.0) / 8.0


def scene(height=512, width=641, box=(100, 200, 180, 300), value=250, dtype=np.uint8):
    image = np.full((height, width), 30, np.float32)
    y0, x0, y1, x1 = box
    image[y0:y1, x0:x1] = value
    if dtype == np.uint16:
        return (image * 257).astype(np.uint16)
    if dtype == np.float32:
        return image / 255.0
    return image.astype(dtype)


@pytest.mark.parametrize('model_size, overlap', [(512, 0), (1024, 32), (2048, 0), (768, 64)])
@pytest.mark.parametrize('dtype', [np.uint8, np.uint16, np.float32])
def test_bright_square_is_found_where_it_is(model_size, overlap, dtype):
    segmenter = Segmenter(BrightnessBackend(), SegmenterConfig(model_size=model_size,
                                                               tile_overlap=overlap,
                                                               batch_size=5))
    result = segmenter.segment(scene(dtype=dtype))
    assert result.probability.shape == result.mask.shape == (512, 641)
    truth = np.zeros((512, 641), bool)
    truth[100:180, 200:300] = True
    iou = (result.mask & truth).sum() / (result.mask | truth).sum()
    assert iou > 0.95
    assert result.detected and len(result.detections) == 1
    x0, y0, x1, y1 = result.detections[0].bbox_xyxy
    assert abs(x0 - 200) <= 2 and abs(y0 - 100) <= 2 and abs(x1 - 300) <= 2 and abs(y1 - 180) <= 2
    assert result.detections[0].score == pytest.approx(result.probability.max())
    assert max(segmenter.backend.batches) <= 5  # every tile went through, in batches of 5
    assert sum(segmenter.backend.batches) == len(segmenter.grid)


def test_rgb_rgba_and_gray_agree():
    gray = scene()
    segmenter = Segmenter(BrightnessBackend(), SegmenterConfig())
    masks = [segmenter.segment(image).mask for image in (
        gray, np.dstack([gray] * 3), np.dstack([gray] * 3 + [np.zeros_like(gray)]))]
    assert (masks[0] == masks[1]).all() and (masks[0] == masks[2]).all()


def test_empty_scene_gives_no_detection():
    result = Segmenter(BrightnessBackend(), SegmenterConfig()).segment(scene(value=30))
    assert not result.detected and not result.mask.any() and result.detections == []


def test_min_area_and_threshold_change_at_run_time():
    segmenter = Segmenter(BrightnessBackend(), SegmenterConfig())
    image = scene(box=(10, 10, 14, 14))  # a 4x4 px blob
    assert segmenter.segment(image).detected
    segmenter.set_min_area(50)
    result = segmenter.segment(image)
    assert not result.detected and not result.mask.any()  # the mask agrees with the detections
    segmenter.set_min_area(0)
    segmenter.set_threshold(0.999)
    assert not segmenter.segment(scene(value=140)).detected
    with pytest.raises(ValueError, match='threshold'):
        segmenter.set_threshold(1.0)
    with pytest.raises(ValueError, match='min_area_px'):
        segmenter.set_min_area(-1)


@pytest.mark.parametrize('kwargs, field', [
    ({'tile_size': 0}, 'tile_size'), ({'model_size': 100}, 'model_size'),
    ({'threshold': 1.5}, 'threshold'), ({'prompt_mode': 'points'}, 'prompt_mode'),
    ({'tile_overlap': 200}, 'tile_overlap'), ({'batch_size': 0}, 'batch_size'),
    ({'flips': 3}, 'flips'), ({'flips': True}, 'flips'), ({'fuse_sizes': 1024}, 'fuse_sizes'),
    ({'input_color': 'bgr'}, 'input_color'),
    ({'fuse_sizes': [512]}, 'fuse_sizes'), ({'fuse_sizes': [1024, 1024]}, 'fuse_sizes'),
    ({'fuse_sizes': [100]}, 'tile_size'), ({'fuse_sizes': ['1024']}, 'fuse_sizes')])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SegmenterConfig(**kwargs)


def test_detections_are_sorted_and_match_the_mask():
    probability = np.zeros((50, 60), np.float32)
    probability[5:10, 5:10] = 0.7
    probability[20:40, 20:50] = 0.9
    probability[45:46, 0:2] = 0.99  # 2 px: below min area
    detections, mask = find_detections(probability, probability > 0.5, min_area_px=4)
    assert [d.score for d in detections] == pytest.approx([0.9, 0.7])
    assert detections[0].bbox_xyxy == (20, 20, 50, 40) and detections[0].area_px == 600
    assert mask.sum() == 625 and not mask[45, 0]
    top, top_mask = find_detections(probability, probability > 0.5, min_area_px=4,
                                    max_detections=1)
    assert len(top) == 1 and top[0] == detections[0]
    assert top_mask.sum() == 600 and not top_mask[7, 7]


def test_seed_threshold_keeps_the_extent_and_drops_faint_blobs():
    """Hysteresis: the mask's threshold draws a component, its peak must pass the seed."""
    probability = np.full((40, 60), 0.1, np.float32)
    probability[5:25, 5:25] = 0.6            # the satellite's extent ...
    probability[12:16, 12:16] = 0.99         # ... around a confident core
    probability[30:38, 40:58] = 0.8          # a blob that never gets confident
    detections, mask = find_detections(probability, probability > 0.5, 4, seed_threshold=0.95)
    assert [d.bbox_xyxy for d in detections] == [(5, 5, 25, 25)]
    assert mask.sum() == 400 and not mask[32, 45]
    # No seed (None) or a seed at or below the mask threshold gates nothing.
    for seed in (None, 0.5, 0.3):
        assert len(find_detections(probability, probability > 0.5, 4, seed_threshold=seed)[0]) == 2
    # The seed alone as the threshold would keep only the 16 px core.
    assert find_detections(probability, probability > 0.95, 4)[1].sum() == 16
    assert find_detections(probability, probability > 0.5, 4, seed_threshold=0.995)[0] == []


def test_seed_threshold_comes_from_the_model_and_changes_at_run_time(tmp_path):
    from sat_seg_ros.testing import make_tiny_model

    path = make_tiny_model(tmp_path / 'm', info={'threshold': 0.4, 'seed_threshold': 0.9})
    segmenter = Segmenter.from_model(path)
    assert segmenter.config.seed_threshold == 0.9
    assert Segmenter.from_model(path, seed_threshold=0.97).config.seed_threshold == 0.97
    assert Segmenter.from_model(make_tiny_model(tmp_path / 'n')).config.seed_threshold is None
    frame = np.random.default_rng(3).integers(0, 256, (256, 256), dtype=np.uint8)
    segmenter.set_threshold(0.01)
    segmenter.set_min_area(0)
    segmenter.set_seed_threshold(None)
    peak = float(segmenter.segment(frame).probability.max())
    assert segmenter.segment(frame).detected
    segmenter.set_seed_threshold(min(0.999999, peak + 1e-4))
    assert not segmenter.segment(frame).detected
    with pytest.raises(ValueError, match='seed_threshold'):
        segmenter.set_seed_threshold(1.0)
    with pytest.raises(ValueError, match='seed_threshold'):
        Segmenter.from_model(path, seed_threshold=-0.2)


def test_max_detections_comes_from_the_model_and_changes_at_run_time(tiny_model_dir, tmp_path):
    import shutil

    from sat_seg_ros.config import load_model_info, write_model_info

    folder = tmp_path / 'model'
    shutil.copytree(tiny_model_dir, folder)
    write_model_info(folder, dict(load_model_info(folder), max_detections=1))
    segmenter = Segmenter.from_model(folder, model_size=256)
    assert segmenter.config.max_detections == 1
    unlimited = Segmenter.from_model(folder, model_size=256, max_detections=0)
    assert unlimited.config.max_detections == 0
    segmenter.set_max_detections(3)
    assert segmenter.config.max_detections == 3
    with pytest.raises(ValueError, match='max_detections'):
        segmenter.set_max_detections(-1)


# ---- a real (small, random-weight) SamModel through the whole path -------------------------

def test_real_model_every_input_kind(tiny_model_dir):
    segmenter = Segmenter.from_model(tiny_model_dir)
    assert segmenter.config.threshold == 0.65 and segmenter.config.prompt_mode == 'grid'
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (512, 641), dtype=np.uint8),
              rng.integers(0, 256, (300, 200, 3), dtype=np.uint8),
              rng.integers(0, 65536, (257, 999), dtype=np.uint16),
              rng.random((64, 64)).astype(np.float32)]
    for frame in frames:
        result = segmenter.segment(frame)
        assert result.probability.shape == result.mask.shape == frame.shape[:2]
        assert result.probability.dtype == np.float32 and result.mask.dtype == bool
        assert 0.0 <= result.probability.min() <= result.probability.max() <= 1.0
        assert result.detected == bool(result.detections)
        assert set(result.timings) >= {'preprocess', 'model', 'stitch', 'postprocess', 'total'}


def test_real_model_batch_size_does_not_change_the_result(tiny_model_dir):
    frame = np.random.default_rng(1).integers(0, 256, (512, 641), dtype=np.uint8)
    one = Segmenter.from_model(tiny_model_dir, batch_size=1).segment(frame).probability
    many = Segmenter.from_model(tiny_model_dir, batch_size=16).segment(frame).probability
    np.testing.assert_allclose(one, many, atol=1e-5)


@pytest.mark.parametrize('flips', [2, 4])
def test_flips_average_the_mirrored_frames(tiny_model_dir, flips):
    """Tile views mirrored back and averaged equal the mean map of the mirrored frames.

    A real (not mirror-symmetric) SAM on a 2x2 grid.
    """
    frame = np.random.default_rng(2).integers(0, 256, (512, 512), dtype=np.uint8)
    plain = Segmenter.from_model(tiny_model_dir, batch_size=3)
    averaged = Segmenter.from_model(tiny_model_dir, flips=flips, batch_size=3)
    try:
        views = [plain.probability(frame),
                 plain.probability(frame[:, ::-1].copy())[:, ::-1]]
        if flips == 4:
            views += [plain.probability(frame[::-1].copy())[::-1],
                      plain.probability(frame[::-1, ::-1].copy())[::-1, ::-1]]
        expected = np.mean(views, axis=0)
        got = averaged.probability(frame)
        assert np.abs(views[0] - views[1]).max() > 1e-3  # the views do differ
        np.testing.assert_allclose(got, expected, atol=2e-6)
        tiles = plain.model_tiles(frame)
        np.testing.assert_array_equal(plain.tile_probabilities(tiles),  # flips 1: as before
                                      sigmoid(plain.tile_logits(tiles)))
    finally:
        plain.close()
        averaged.close()


def test_flips_come_from_the_model_and_overrides_win(tmp_path):
    from sat_seg_ros.testing import make_tiny_model

    path = make_tiny_model(tmp_path / 'm', info={'flips': 4})
    assert Segmenter.from_model(path).config.flips == 4
    assert Segmenter.from_model(path, flips=1).config.flips == 1
    backend = BrightnessBackend()
    Segmenter(backend, SegmenterConfig(flips=4)).segment(scene())
    assert backend.batches == [16]  # four tiles, four views, one batch


def test_luma_input_runs_colour_frames_as_their_luminance(cnn_model_dir, tmp_path):
    """'luma' runs a colour frame as its Rec. 601 gray; 'rgb' lets its colour reach the model.

    'luma' is what a model trained on gray scenes declares; with 'rgb' the colour differences
    reach the model and change its output.
    """
    import shutil

    import cv2

    from sat_seg_ros.config import load_model_info, write_model_info

    rng = np.random.default_rng(5)
    colour = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    gray = cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)  # rounded to uint8, as a mono8 camera would
    rgb = Segmenter.from_model(cnn_model_dir)
    assert rgb.config.input_color == 'rgb'  # the package default: a user's SAM sees colour
    luma_dir = tmp_path / 'luma'
    shutil.copytree(cnn_model_dir, luma_dir)
    write_model_info(luma_dir, dict(load_model_info(luma_dir), input_color='luma'))
    luma = Segmenter.from_model(luma_dir)
    assert luma.config.input_color == 'luma'
    try:
        tiles = luma.model_tiles(colour)
        assert tiles.shape[-1] == 1  # one channel: resized and cut as a gray frame is
        np.testing.assert_allclose(tiles, luma.model_tiles(gray), atol=0.51)  # gray was rounded
        from_gray = luma.tile_logits(luma.model_tiles(gray))
        luma_error = np.abs(luma.tile_logits(tiles) - from_gray).max()
        rgb_error = np.abs(rgb.tile_logits(rgb.model_tiles(colour)) - from_gray).max()
        assert rgb_error > 10 * luma_error  # the colour differences do reach an 'rgb' model
        np.testing.assert_array_equal(rgb.probability(gray), luma.probability(gray))
        assert Segmenter.from_model(luma_dir, input_color='rgb').config.input_color == 'rgb'
    finally:
        rgb.close()
        luma.close()


def test_to_luma_uses_the_rec601_weights():
    from sat_seg_ros.tiling import to_luma

    frame = np.zeros((2, 3, 3), np.float32)
    frame[0, 0] = (255, 0, 0)
    frame[0, 1] = (0, 255, 0)
    frame[0, 2] = (0, 0, 255)
    frame[1] = 100.0
    np.testing.assert_allclose(to_luma(frame),
                               [[76.245, 149.685, 29.07], [100, 100, 100]], atol=1e-3)
    plain = np.ones((4, 5), np.float32)
    assert to_luma(plain) is plain


def test_fuse_sizes_average_the_maps_of_each_model_size(tiny_model_dir):
    """512 fused with 1024 is the mean of the two sizes' maps at the frame's resolution."""
    frame = np.random.default_rng(3).integers(0, 256, (300, 410), dtype=np.uint8)
    at_512 = Segmenter.from_model(tiny_model_dir, model_size=512)
    at_1024 = Segmenter.from_model(tiny_model_dir, model_size=1024)
    fused = Segmenter.from_model(tiny_model_dir, model_size=512, fuse_sizes=(1024,))
    try:
        maps = [at_512.probability(frame), at_1024.probability(frame)]
        assert np.abs(maps[0] - maps[1]).max() > 1e-3  # the sizes do differ
        timings = {}
        got = fused.probability(frame, timings)
        assert got.shape == frame.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, np.mean(maps, axis=0), atol=1e-6)
        assert timings['model'] > 0 and set(timings) == {'preprocess', 'model', 'stitch'}
        np.testing.assert_array_equal(fused.segment(frame).probability, got)  # masks use it
    finally:
        for segmenter in (at_512, at_1024, fused):
            segmenter.close()


def test_fuse_sizes_come_from_the_model_for_its_own_size(tmp_path):
    from sat_seg_ros.testing import make_tiny_model

    path = make_tiny_model(tmp_path / 'm', info={'fuse_sizes': [1024], 'model_size': 512})
    backend = BrightnessBackend()
    assert Segmenter.from_model(path).config.fuse_sizes == (1024,)
    assert Segmenter.from_model(path, fuse_sizes=()).config.fuse_sizes == ()
    # Fusion belongs to the model's own size: at 1024 it is off unless by_model_size sets it.
    assert Segmenter.from_model(path, model_size=1024).config.fuse_sizes == ()
    Segmenter(backend, SegmenterConfig(fuse_sizes=(1024,))).segment(scene())
    assert backend.batches == [4, 16]  # 512's four tiles, then 1024's sixteen


def test_fuse_gate_runs_only_the_fused_tiles_over_which_the_model_size_map_peaks():
    """Gate 0.5 with 1024: only the 1024 tiles over the bright box run (2 of 16)."""
    ungated, gated, empty = BrightnessBackend(), BrightnessBackend(), BrightnessBackend()
    frame = scene()  # box rows 100-180, columns 200-300 of 512 x 641
    plain = Segmenter(ungated, SegmenterConfig(fuse_sizes=(1024,))).segment(frame)
    result = Segmenter(gated, SegmenterConfig(fuse_sizes=(1024,), fuse_gate=0.5)).segment(frame)
    # The 1024 tiles cover 128 frame rows and 160.25 columns each: rows 0-1, column 1.
    assert (ungated.batches, gated.batches) == ([4, 16], [4, 2])
    assert (plain.tiles, result.tiles) == (20, 6)
    assert result.mask.sum() > 0
    np.testing.assert_array_equal(result.mask, plain.mask)
    inside = (slice(0, 256), slice(161, 320))  # the frame under the two tiles that ran
    np.testing.assert_array_equal(result.probability[inside], plain.probability[inside])
    # Nothing above the gate: only the model size runs, and the map is its own.
    dark = scene(value=30)
    alone = Segmenter(BrightnessBackend(), SegmenterConfig()).segment(dark)
    nothing = Segmenter(empty, SegmenterConfig(fuse_sizes=(1024,), fuse_gate=0.5)).segment(dark)
    assert empty.batches == [4] and nothing.tiles == 4 and not nothing.detected
    np.testing.assert_allclose(nothing.probability, alone.probability, atol=1e-6)


def test_fuse_gate_zero_is_the_plain_fusion_and_a_bad_gate_is_named(tiny_model_dir):
    frame = np.random.default_rng(5).integers(0, 256, (300, 410), dtype=np.uint8)
    plain = Segmenter.from_model(tiny_model_dir, model_size=512, fuse_sizes=(1024,))
    off = Segmenter.from_model(tiny_model_dir, model_size=512, fuse_sizes=(1024,), fuse_gate=0)
    gated = Segmenter.from_model(tiny_model_dir, model_size=512, fuse_sizes=(1024,))
    try:
        reference, count = plain.probability_and_tiles(frame)
        np.testing.assert_array_equal(off.probability(frame), reference)
        assert count == 20
        # A gate between the tiles' peaks: the tiles that ran give the fusion's values exactly.
        base = Segmenter.from_model(tiny_model_dir, model_size=512).probability(frame)
        grid = gated.fuse_grids[0]
        peaks = [base[region].max() for region in _tile_regions(grid, frame.shape)]
        gate = float(np.median(peaks))
        gated.set_fuse_gate(gate)
        run, = gated.fused_tiles(base)
        assert 0 < run.sum() < len(run)
        np.testing.assert_array_equal(run, np.array(peaks) > gate)
        got, count = gated.probability_and_tiles(frame)
        assert count == 4 + int(run.sum())
        for region, ran in zip(_tile_regions(grid, frame.shape, inset=3), run):
            if ran:
                np.testing.assert_allclose(got[region], reference[region], atol=1e-6)
    finally:
        for segmenter in (plain, off, gated):
            segmenter.close()
    for bad in (1.0, -0.1, True, '0.5'):
        with pytest.raises(ValueError, match='fuse_gate='):
            SegmenterConfig(fuse_sizes=(1024,), fuse_gate=bad)
    with pytest.raises(ValueError, match='fuse_gate='):
        gated.set_fuse_gate(1.5)


def test_fuse_max_tiles_runs_the_fused_tiles_over_the_highest_peaks_first():
    """A cap of 3 of the 6 gated 1024 tiles: the bright box's 2, then the dim box's first."""
    frame = scene()  # the bright box: 1024 tiles (0, 1) and (1, 1)
    frame[350:420, 450:560] = 170  # a dimmer one: tiles (2, 2), (2, 3), (3, 2), (3, 3)
    gated, capped, roomy = BrightnessBackend(), BrightnessBackend(), BrightnessBackend()
    config = {'fuse_sizes': (1024,), 'fuse_gate': 0.5}
    plain = Segmenter(gated, SegmenterConfig(**config)).segment(frame)
    segmenter = Segmenter(capped, SegmenterConfig(fuse_max_tiles=3, **config))
    result = segmenter.segment(frame)
    assert (gated.batches, capped.batches, plain.tiles, result.tiles) == ([4, 6], [4, 3], 10, 7)
    base = Segmenter(BrightnessBackend(), SegmenterConfig()).probability(frame)
    run, = segmenter.fused_tiles(base)
    assert sorted(np.flatnonzero(run)) == [1, 5, 10]
    regions = list(_tile_regions(segmenter.fuse_grids[0], frame.shape, inset=3))
    for index in (1, 5, 10):  # the tiles that ran: the gated fusion's values
        np.testing.assert_allclose(result.probability[regions[index]],
                                   plain.probability[regions[index]], atol=1e-6)
    # Gated through, capped out: the model size's map alone (off the dim box's edges, where
    # resampling that map to 1024 and back blurs it).
    far = np.ones(frame.shape, bool)
    for edge in (350, 420):
        far[edge - 4:edge + 4] = False
    for edge in (450, 560):
        far[:, edge - 4:edge + 4] = False
    for index in (11, 14, 15):
        here = far[regions[index]]
        np.testing.assert_allclose(result.probability[regions[index]][here],
                                   base[regions[index]][here], atol=1e-6)
        assert np.abs(plain.probability[regions[index]] - result.probability[regions[index]]
                      ).max() > 1e-3  # and not what running the tile gives
    # A cap above what the gate lets through changes nothing.
    roomier = Segmenter(roomy, SegmenterConfig(fuse_max_tiles=6, **config)).segment(frame)
    assert roomy.batches == [4, 6]
    np.testing.assert_array_equal(roomier.probability, plain.probability)


def test_fuse_max_tiles_spans_the_fused_sizes_and_works_without_a_gate():
    backend = BrightnessBackend()
    config = SegmenterConfig(fuse_sizes=(768, 1024), fuse_max_tiles=5)
    result = Segmenter(backend, config).segment(scene())
    assert result.tiles == 4 + 5 and sum(backend.batches[1:]) == 5
    # Without a gate every fused tile is a candidate. Six lie over the box (768: 0, 1, 3, 4;
    # 1024: 1, 5) with the same peak: the earlier size's go first, then the tile order.
    base = Segmenter(BrightnessBackend(), SegmenterConfig()).probability(scene())
    runs = Segmenter(BrightnessBackend(), config).fused_tiles(base)
    assert [list(np.flatnonzero(run)) for run in runs] == [[0, 1, 3, 4], [1]]
    assert config.fuse_gate == 0 and fusion_label(config) == ' + 768 + 1024 (fuse_max_tiles 5)'
    assert fusion_label(SegmenterConfig(fuse_sizes=(1024,), fuse_gate=0.7, fuse_max_tiles=12)
                        ) == ' + 1024 (fuse_gate 0.70, fuse_max_tiles 12)'
    for bad in (-1, 2.5, True, '4'):
        with pytest.raises(ValueError, match='fuse_max_tiles='):
            SegmenterConfig(fuse_sizes=(1024,), fuse_max_tiles=bad)
    with pytest.raises(ValueError, match='fuse_max_tiles='):
        Segmenter(backend, config).set_fuse_max_tiles(-2)


def _tile_regions(grid, shape, inset=0):
    """Yield the frame region under each of ``grid``'s tiles, shrunk by ``inset`` pixels."""
    height, width = shape
    t = grid.tile_size
    for y, x in grid.origins:
        y0, y1 = y * height // grid.height, -(-(y + t) * height // grid.height)
        x0, x1 = x * width // grid.width, -(-(x + t) * width // grid.width)
        yield (slice(y0 + inset, y1 - inset), slice(x0 + inset, x1 - inset))


def test_fuse_gate_comes_from_the_model_and_an_override_turns_it_off(tmp_path):
    from sat_seg_ros.testing import make_tiny_model

    path = make_tiny_model(tmp_path / 'm', info={
        'model_size': 512, 'modes': {'multiscale': {'fuse_sizes': [1024], 'fuse_gate': 0.8}}})
    assert Segmenter.from_model(path).config.fuse_gate == 0.0
    assert Segmenter.from_model(path, mode='multiscale').config.fuse_gate == 0.8
    assert Segmenter.from_model(path, mode='multiscale', fuse_gate=0).config.fuse_gate == 0.0
    (path / 'sat_seg.json').write_text(json.dumps({'modes': {'x': {'fuse_gate': 2}}}))
    with pytest.raises(ValueError, match='fuse_gate=2'):
        Segmenter.from_model(path, mode='x')


def test_model_info_is_used_and_overrides_win(tmp_path):
    from sat_seg_ros.testing import make_tiny_model

    path = make_tiny_model(tmp_path / 'm', info={'threshold': 0.4, 'prompt_mode': 'box',
                                                 'model_size': 1024, 'min_area_px': 3})
    segmenter = Segmenter.from_model(path)
    assert (segmenter.config.threshold, segmenter.config.prompt_mode) == (0.4, 'box')
    assert (segmenter.config.model_size, segmenter.config.min_area_px) == (1024, 3)
    assert len(segmenter.grid) == 16
    segmenter = Segmenter.from_model(path, threshold=0.7, model_size=512)
    assert (segmenter.config.threshold, segmenter.config.model_size) == (0.7, 512)
    with pytest.raises(ValueError, match='unknown Segmenter setting'):
        Segmenter.from_model(path, treshold=0.5)


def test_bad_model_folders_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        Segmenter.from_model(tmp_path / 'nope')
    with pytest.raises(FileNotFoundError, match='no config.json'):
        Segmenter.from_model(tmp_path)
    from sat_seg_ros.testing import make_tiny_model

    path = make_tiny_model(tmp_path / 'm')
    (path / 'sat_seg.json').write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match='JSON object'):
        Segmenter.from_model(path)
    with pytest.raises(ValueError, match="backend='tensorflow'"):
        Segmenter.from_model(make_tiny_model(tmp_path / 'm2'), backend='tensorflow')


@pytest.mark.parametrize('image', [np.full((20, 30), 100, np.uint8),
                                   np.full((20, 30, 3), 100, np.uint8),
                                   np.full((20, 30), 100 / 255.0, np.float32)])
def test_overlay_tints_only_the_mask_and_leaves_the_input_alone(image):
    from sat_seg_ros.postprocess import overlay

    before = image.copy()
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:10] = True
    picture = overlay(image, mask, color=(255, 0, 0), alpha=0.5)
    assert picture.shape == (20, 30, 3) and picture.dtype == np.uint8
    assert (picture[~mask] == 100).all()
    assert (picture[mask] == [178, 50, 50]).all()
    np.testing.assert_array_equal(image, before)


def test_a_model_warning_is_logged_at_load(tmp_path, caplog):
    from sat_seg_ros.testing import make_tiny_model

    path = make_tiny_model(tmp_path / 'm', info={'warning': 'trained for 5 minutes only'})
    with caplog.at_level('WARNING', logger='sat_seg_ros.segmenter'):
        Segmenter.from_model(path)
    assert 'trained for 5 minutes only' in caplog.text


def test_a_fusion_limit_without_fused_sizes_is_warned_about(tiny_model_dir, caplog):
    with caplog.at_level('WARNING', logger='sat_seg_ros.segmenter'):
        Segmenter.from_model(tiny_model_dir, model_size=256, fuse_max_tiles=3)
    assert 'fuse_max_tiles given, but no further model size is fused at model size 256' in (
        caplog.text)
    caplog.clear()
    with caplog.at_level('WARNING', logger='sat_seg_ros.segmenter'):
        Segmenter.from_model(tiny_model_dir, model_size=256, fuse_sizes=(512,), fuse_gate=0.5,
                             fuse_max_tiles=3)
        Segmenter.from_model(tiny_model_dir, model_size=256, fuse_gate=0, fuse_max_tiles=0)
    assert 'no further model size is fused' not in caplog.text
