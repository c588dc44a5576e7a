"""Geometry of tiling and stitching: property tests over odd sizes, overlaps and dtypes."""

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from sat_seg_ros.tiling import (resize, tile_starts, TileGrid, to_float_pixels, to_float_rgb)


@settings(max_examples=150, deadline=None)
@given(length=st.integers(1, 3000), tile=st.integers(16, 512), overlap_frac=st.floats(0, 0.49))
def test_tile_starts_cover_every_pixel_and_stay_inside(length, tile, overlap_frac):
    overlap = int(tile * overlap_frac)
    starts = tile_starts(length, tile, overlap)
    assert starts == sorted(set(starts))
    covered = np.zeros(max(length, tile), bool)
    for start in starts:
        covered[start:start + tile] = True
    assert covered[:length].all()
    if length >= tile:
        assert starts[-1] == length - tile  # last tile flush with the end, never past it
        gaps = np.diff(starts)
        assert (gaps <= tile - overlap).all()  # neighbours overlap by at least `overlap`


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 700), width=st.integers(1, 700), tile=st.sampled_from([32, 64, 256]),
       overlap_frac=st.floats(0, 0.45), seed=st.integers(0, 2**16))
def test_cut_then_stitch_is_identity(height, width, tile, overlap_frac, seed):
    overlap = int(tile * overlap_frac)
    image = np.random.default_rng(seed).random((height, width)).astype(np.float32)
    grid = TileGrid(height, width, tile, overlap)
    tiles = grid.cut(image)
    assert tiles.shape == (len(grid), tile, tile)
    np.testing.assert_allclose(grid.stitch(tiles), image, rtol=0, atol=1e-6)


def test_cut_keeps_channels_and_pads_small_images():
    image = np.arange(20 * 30 * 3, dtype=np.float32).reshape(20, 30, 3)
    grid = TileGrid(20, 30, 32, 0)
    tiles = grid.cut(image)
    assert tiles.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(tiles[0, :20, :30], image)
    assert (tiles[0, 20:] == 0).all() and (tiles[0, :, 30:] == 0).all()


def test_overlap_blending_hides_seams():
    # Two tiles that disagree by a constant: with overlap, the blend ramps smoothly between them.
    grid = TileGrid(64, 112, 64, 16)
    assert grid.origins == [(0, 0), (0, 48)]
    tiles = np.stack([np.zeros((64, 64)), np.ones((64, 64))]).astype(np.float32)
    row = grid.stitch(tiles)[32]
    assert row[0] == 0 and row[-1] == 1
    assert (np.diff(row) >= 0).all() and np.diff(row).max() < 0.2


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 300), width=st.integers(1, 300), tile=st.sampled_from([32, 64]),
       overlap_frac=st.floats(0, 0.45), seed=st.integers(0, 2**16))
def test_stitch_is_the_weighted_mean_of_the_tiles_over_each_pixel(height, width, tile,
                                                                  overlap_frac, seed):
    # Tiles that disagree (not cut from one image), against the mean written out pixel by pixel.
    grid = TileGrid(height, width, tile, int(tile * overlap_frac))
    tiles = np.random.default_rng(seed).random((len(grid), tile, tile)).astype(np.float32)
    ramp = np.ones(tile)
    if grid.overlap:
        edge = np.arange(1, grid.overlap + 1) / (grid.overlap + 1)
        ramp[:grid.overlap] = edge
        ramp[-grid.overlap:] = np.minimum(ramp[-grid.overlap:], edge[::-1])
    weight = np.outer(ramp, ramp)
    total = np.zeros((max(height, tile), max(width, tile)))
    norm = np.zeros_like(total)
    for (y, x), values in zip(grid.origins, tiles):
        total[y:y + tile, x:x + tile] += values * weight
        norm[y:y + tile, x:x + tile] += weight
    stitched = grid.stitch(tiles)
    assert stitched.dtype == np.float32 and stitched.flags['C_CONTIGUOUS']
    np.testing.assert_allclose(stitched, (total / norm)[:height, :width], rtol=0, atol=1e-6)


@pytest.mark.parametrize('channels', [(), (3,)])
def test_cut_some_tiles(channels):
    image = np.random.default_rng(2).random((100, 150) + channels).astype(np.float32)
    grid = TileGrid(100, 150, 64, 8)
    every = grid.cut(image)
    assert len(every) == 6
    np.testing.assert_array_equal(grid.cut(image, [4, 1]), every[[4, 1]])
    run = np.array([True, False, False, True, False, True])
    np.testing.assert_array_equal(grid.cut(image, run), every[run])
    assert grid.cut(image, np.zeros(6, bool)).shape == (0, 64, 64) + channels
    small = TileGrid(20, 30, 32)  # padded tiles too
    np.testing.assert_array_equal(small.cut(image[:20, :30], [0]), small.cut(image[:20, :30]))


def test_stitch_rejects_wrong_tile_count():
    grid = TileGrid(512, 512, 256)
    with pytest.raises(ValueError, match='expected tiles of shape'):
        grid.stitch(np.zeros((3, 256, 256), np.float32))


@pytest.mark.parametrize('image, expected', [
    (np.array([[0, 255]], np.uint8), [0.0, 255.0]),
    (np.array([[0, 65535]], np.uint16), [0.0, 255.0]),
    (np.array([[0.0, 1.0]], np.float32), [0.0, 255.0]),
    (np.array([[-1.0, 2.0]], np.float64), [0.0, 255.0]),
    (np.array([[np.nan, 0.5]], np.float32), [0.0, 127.5]),
    (np.array([[False, True]]), [0.0, 255.0]),
])
def test_pixel_scaling(image, expected):
    np.testing.assert_allclose(to_float_pixels(image)[0], expected, rtol=1e-6)


def test_pixel_scaling_rejects_int32():
    with pytest.raises(ValueError, match='unsupported pixel type int32'):
        to_float_pixels(np.zeros((2, 2), np.int32))


@pytest.mark.parametrize('shape', [(5, 7), (5, 7, 1), (5, 7, 3), (5, 7, 4)])
def test_to_float_rgb_shapes(shape):
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    rgb = to_float_rgb(image)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.float32
    np.testing.assert_array_equal(rgb[..., 0], image.reshape(5, 7, -1)[..., 0])


@pytest.mark.parametrize('shape', [(0, 4), (4, 0, 3), (4, 4, 2), (4,), (2, 2, 2, 2)])
def test_bad_frame_shapes_are_refused(shape):
    with pytest.raises(ValueError, match='frame of shape'):
        to_float_rgb(np.zeros(shape, np.uint8))


def test_resize_keeps_single_channel_axis():
    assert resize(np.zeros((10, 10, 1), np.float32), 20, 30).shape == (20, 30, 1)
    assert resize(np.zeros((10, 10), np.float32), 5, 7).shape == (5, 7)


@pytest.mark.parametrize('height, width, overlap', [(512, 512, 0), (512, 768, 0), (300, 700, 0),
                                                    (512, 512, 32), (100, 90, 0)])
def test_fast_placement_equals_the_blend(height, width, overlap):
    """Disjoint unit-weight grids take the direct path; it must equal the weighted blend."""
    grid = TileGrid(height, width, 256, overlap)
    tiles = np.random.default_rng(4).random((len(grid), 256, 256), dtype=np.float32)
    fast = grid.stitch(tiles)
    grid._disjoint = False
    blended = grid.stitch(tiles)
    assert fast.dtype == blended.dtype == np.float32 and fast.shape == (height, width)
    assert np.array_equal(fast, blended)
