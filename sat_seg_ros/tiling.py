"""Pure numpy geometry: pixel scaling, resizing and the tile grid (cut and stitch).

Images are HxW (grayscale) or HxWxC (channels last). Tiles are (N, t, t) or (N, t, t, C).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np


def to_float_pixels(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as float32 on SAM's 0..255 pixel scale, keeping its shape.

    uint8 is taken as is, uint16 is divided by 257 (65535 -> 255), bool maps to 0/255 and float
    images are read as intensities in [0, 1] (values outside are clipped; NaN becomes 0).
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(1.0 / 257.0)
    if image.dtype == np.bool_:
        return image.astype(np.float32) * np.float32(255.0)
    if np.issubdtype(image.dtype, np.floating):
        scaled = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.clip(scaled, 0.0, 1.0) * np.float32(255.0)
    raise ValueError(
        'unsupported pixel type %s: use uint8, uint16, bool or float in [0, 1]' % image.dtype)


def check_frame(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is a non-empty HxW, HxWx1, HxWx3 or HxWx4 array."""
    shape = np.shape(image)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise ValueError(
            'frame of shape %s: expected HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA)' % (shape,))
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError('frame of shape %s is empty' % (shape,))


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Return HxWx3 from HxW, HxWx1, HxWx3 or HxWx4 (gray replicated, alpha dropped)."""
    check_frame(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def to_float_rgb(image: np.ndarray) -> np.ndarray:
    """Return any supported frame as HxWx3 float32 in [0, 255] (see to_float_pixels)."""
    return to_rgb(to_float_pixels(image))


def to_luma(image: np.ndarray) -> np.ndarray:
    """Return an HxWx3 RGB float32 frame as HxW Rec. 601 luminance (0.299 R + 0.587 G + 0.114 B).

    The weights OpenCV's colour-to-gray conversion uses, which is how ``sat-seg synth`` turns
    photographs into its gray scenes; HxW frames come back unchanged.
    """
    if image.ndim == 2:
        return image
    return cv2.cvtColor(np.ascontiguousarray(image, np.float32), cv2.COLOR_RGB2GRAY)


def resize(image: np.ndarray, height: int, width: int, interpolation: int = None) -> np.ndarray:
    """Resize HxW or HxWxC to (height, width): area averaging to shrink, else bilinear."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    if interpolation is None:
        shrinking = height < image.shape[0] or width < image.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (int(width), int(height)), interpolation=interpolation)
    if image.ndim == 3 and resized.ndim == 2:  # cv2 drops a single channel axis
        resized = resized[:, :, None]
    return resized


def tile_starts(length: int, tile_size: int, overlap: int) -> List[int]:
    """Start offsets of tiles covering ``length`` pixels; the last tile is flush with the end.

    Neighbouring tiles overlap by at least ``overlap`` pixels. A ``length`` shorter than one tile
    gives the single start 0 (the tile is padded).
    """
    if tile_size <= 0 or overlap < 0 or overlap >= tile_size:
        raise ValueError('need 0 <= overlap (%d) < tile_size (%d)' % (overlap, tile_size))
    if length <= tile_size:
        return [0]
    stride = tile_size - overlap
    starts = list(range(0, length - tile_size, stride))
    starts.append(length - tile_size)
    return starts


class TileGrid:
    """The tiles of a ``height`` x ``width`` image: cut into (N, t, t[, C]) and stitch back.

    Overlapping tiles are blended with weights that fall off linearly over the overlap band, so
    seams do not show; stitching tiles cut from an image returns the image.
    """

    def __init__(self, height: int, width: int, tile_size: int, overlap: int = 0) -> None:
        if height <= 0 or width <= 0:
            raise ValueError('image size %dx%d must be positive' % (height, width))
        self.height = int(height)
        self.width = int(width)
        self.tile_size = int(tile_size)
        self.overlap = int(overlap)
        self.origins: List[Tuple[int, int]] = [
            (y, x)
            for y in tile_starts(self.height, self.tile_size, self.overlap)
            for x in tile_starts(self.width, self.tile_size, self.overlap)]
        self._weight = self._blend_weight()
        self._unit = bool((self._weight == 1).all())
        # Each pixel's summed weight; tiles that cover every pixel once with unit weight (no
        # overlap, a size that the tiles divide) are placed as they are, the blend's result.
        total = np.zeros((max(self.height, tile_size), max(self.width, tile_size)), np.float32)
        for y, x in self.origins:
            total[y:y + tile_size, x:x + tile_size] += self._weight
        self._disjoint = bool(self._unit and (total == 1).all())
        self._shape = total.shape
        self._inverse = None if self._disjoint else np.float32(1.0) / total

    def __len__(self) -> int:
        return len(self.origins)

    def _blend_weight(self) -> np.ndarray:
        ramp = np.ones(self.tile_size, np.float32)
        if self.overlap > 0:
            edge = np.arange(1, self.overlap + 1, dtype=np.float32) / (self.overlap + 1)
            ramp[:self.overlap] = edge
            ramp[-self.overlap:] = np.minimum(ramp[-self.overlap:], edge[::-1])
        return np.outer(ramp, ramp)

    def cut(self, image: np.ndarray, indices: Optional[Sequence[int]] = None) -> np.ndarray:
        """Return the tiles of ``image`` (HxW or HxWxC, this grid's size) as (N, t, t[, C]).

        ``indices`` (a sequence of tile numbers, or a bool per tile) cuts only those tiles.
        Where the image is smaller than a tile, the tile is zero-padded at the bottom/right.
        """
        if image.shape[:2] != (self.height, self.width):
            raise ValueError('image is %s, grid expects %dx%d'
                             % (image.shape[:2], self.height, self.width))
        t = self.tile_size
        pad_h = max(0, t - self.height)
        pad_w = max(0, t - self.width)
        if pad_h or pad_w:
            pad = ((0, pad_h), (0, pad_w)) + ((0, 0),) * (image.ndim - 2)
            image = np.pad(image, pad)
        origins = self.origins
        if indices is not None:
            indices = np.asarray(indices)
            if indices.dtype == np.bool_:
                indices = np.flatnonzero(indices)
            origins = [self.origins[index] for index in indices]
        if not origins:
            return np.empty((0, t, t) + image.shape[2:], image.dtype)
        return np.stack([image[y:y + t, x:x + t] for y, x in origins])

    def stitch(self, tiles: np.ndarray) -> np.ndarray:
        """Blend (N, t, t) per-tile values into one float32 (height, width) map.

        Each pixel is the weighted mean of the tiles over it (unit weights without overlap).
        """
        t = self.tile_size
        if tiles.shape != (len(self.origins), t, t):
            raise ValueError('expected tiles of shape %s, got %s'
                             % ((len(self.origins), t, t), tiles.shape))
        if self._disjoint:
            placed = np.empty(self._shape, np.float32)
            for (y, x), tile in zip(self.origins, tiles):
                placed[y:y + t, x:x + t] = tile
            return np.ascontiguousarray(placed[:self.height, :self.width])
        total = np.zeros(self._shape, np.float32)
        for (y, x), tile in zip(self.origins, tiles):
            if self._unit:
                total[y:y + t, x:x + t] += tile
            else:
                total[y:y + t, x:x + t] += tile * self._weight
        if self._inverse is not None:  # None: every pixel's weights sum to 1
            total *= self._inverse
        return np.ascontiguousarray(total[:self.height, :self.width])
