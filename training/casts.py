"""Colour casts for robustness checks: what a camera's white balance or tone curve does to a frame.

``sat-seg evaluate --cast NAME`` applies one of these to every frame before the Segmenter sees
it, so how much a model leans on colour is measured with one flag on any colour dataset:

- ``white-balance``: each channel scaled by a gain drawn from 0.75-1.25 (per image), the gains
  then scaled together so the frame's mean Rec. 601 luminance is kept;
- ``warm``: a warm tone curve, R^0.8, G, B^1.3 on values in [0, 1];
- ``gray``: the Rec. 601 luminance (0.299 R + 0.587 G + 0.114 B) as an HxW frame, what a gray
  camera delivers.

The draw for ``white-balance`` is seeded by the image's file name, so a cast dataset is the
same on every run and machine. Pure numpy: uint8 or uint16 in, the same dtype out.
"""

from __future__ import annotations

import zlib

import numpy as np

from sat_seg_ros.tiling import to_luma

CASTS = ('white-balance', 'warm', 'gray')
WHITE_BALANCE_GAINS = (0.75, 1.25)
WARM_GAMMAS = (0.8, 1.0, 1.3)


def cast_seed(file_name: str) -> int:
    """Return the per-image seed of a cast: a CRC-32 of the file name."""
    return zlib.crc32(file_name.encode('utf-8'))


def apply_cast(image: np.ndarray, cast: str, seed: int = 0) -> np.ndarray:
    """Return ``image`` (HxW or HxWx3 RGB, uint8 or uint16) under ``cast`` (one of CASTS).

    A gray (HxW) frame is taken as three equal channels. ``gray`` returns HxW, the other casts
    HxWx3; the dtype is kept. Luminance is the runtime's (``sat_seg_ros.tiling.to_luma``, what
    ``input_color: luma`` does). Raises ValueError for an unknown cast or an unsupported image.
    """
    if cast not in CASTS:
        raise ValueError('unknown cast %r; choose one of %s' % (cast, ', '.join(CASTS)))
    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError('cast %r needs a uint8 or uint16 image, got %s' % (cast, image.dtype))
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError('cast %r needs an HxW or HxWx3 image, got shape %s'
                         % (cast, image.shape))
    top = float(np.iinfo(image.dtype).max)
    rgb = image.astype(np.float32) / np.float32(top)
    if cast == 'gray':
        out = to_luma(rgb)
    elif cast == 'warm':
        out = rgb ** np.array(WARM_GAMMAS, np.float32)
    else:
        gains = np.random.default_rng(seed).uniform(*WHITE_BALANCE_GAINS, size=3)
        before = float(to_luma(rgb).mean())
        after = float(to_luma(rgb * gains.astype(np.float32)).mean())
        if after > 0:
            gains = gains * (before / after)
        out = rgb * gains
    return np.round(np.clip(out, 0.0, 1.0) * top).astype(image.dtype)
