"""Reading and writing image files (OpenCV), with clear errors and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List

import cv2
import numpy as np

from sat_seg_ros.config import atomic_write_bytes

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp', '.pgm', '.ppm', '.webp')


class ImageReadError(ValueError):
    """An input file is missing, unreadable or not an image."""


def read_image(path: os.PathLike | str) -> np.ndarray:
    """Return the image at ``path`` as HxW or HxWx3/4 (RGB order), keeping 8 or 16 bits."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError('%s: no such file' % path)
    data = np.fromfile(str(path), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageReadError('%s: not a readable image (empty, truncated or unknown format)'
                             % path)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def write_png(path: os.PathLike | str, image: np.ndarray) -> None:
    """Write HxW (gray) or HxWx3 (RGB) uint8/uint16 ``image`` as PNG, atomically."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode('.png', image)
    if not ok:
        raise ValueError('could not encode %s as PNG' % path)
    atomic_write_bytes(path, encoded.tobytes())


def expand_inputs(inputs: Iterable[os.PathLike | str]) -> List[Path]:
    """Return the files named in ``inputs``; folders contribute their image files, sorted.

    Paths that do not exist are kept, so that the caller reports them by name.
    """
    files: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob('*')
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files
