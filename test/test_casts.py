"""Colour casts of ``sat-seg evaluate --cast``: what each does to a frame, seeded per image."""

import numpy as np
import pytest

from sat_seg_training.casts import apply_cast, cast_seed, CASTS


def luma(rgb):
    return rgb.astype(float) @ np.array([0.299, 0.587, 0.114])


@pytest.fixture
def frame():
    return np.random.default_rng(0).integers(40, 160, (24, 32, 3), dtype=np.uint8)


def test_gray_is_rec601_luminance(frame):
    assert apply_cast(np.array([[[255, 0, 0]]], np.uint8), 'gray')[0, 0] == 76
    out = apply_cast(frame, 'gray')
    assert out.shape == frame.shape[:2] and out.dtype == np.uint8
    assert np.abs(out - luma(frame)).max() <= 0.5
    plain = frame[..., 1]
    assert np.array_equal(apply_cast(plain, 'gray'), plain)  # a gray frame stays as it is


def test_warm_curve_lifts_red_and_lowers_blue():
    out = apply_cast(np.full((2, 2, 3), 128, np.uint8), 'warm')[0, 0]
    assert out[0] == round((128 / 255) ** 0.8 * 255) and out[1] == 128
    assert out[2] == round((128 / 255) ** 1.3 * 255)


def test_white_balance_is_seeded_by_name_and_keeps_mean_luminance(frame):
    seed = cast_seed('synth_000001.png')
    first, again = (apply_cast(frame, 'white-balance', seed) for _ in range(2))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, apply_cast(frame, 'white-balance', cast_seed('other.png')))
    assert abs(luma(first).mean() - luma(frame).mean()) < 0.01 * luma(frame).mean()
    gains = first.reshape(-1, 3).mean(0) / frame.reshape(-1, 3).mean(0)
    assert gains.max() - gains.min() > 0.02  # the channels really moved apart
    gray = np.repeat(frame[..., :1], 3, axis=2)
    assert np.ptp(apply_cast(gray, 'white-balance', seed).astype(int), axis=2).max() > 0


def test_sixteen_bit_frames_keep_their_dtype(frame):
    wide = frame.astype(np.uint16) * 257
    for cast in CASTS:
        out = apply_cast(wide, cast, 1)
        assert out.dtype == np.uint16
        assert np.abs(out.astype(float) / 257 - apply_cast(frame, cast, 1)).max() <= 1


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match='unknown cast'):
        apply_cast(np.zeros((4, 4, 3), np.uint8), 'sepia')
    with pytest.raises(ValueError, match='uint8 or uint16'):
        apply_cast(np.zeros((4, 4, 3), np.float32), 'warm')
    with pytest.raises(ValueError, match='HxW or HxWx3'):
        apply_cast(np.zeros((4, 4, 2), np.uint8), 'warm')
