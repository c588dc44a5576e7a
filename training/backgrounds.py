"""Real aerial backgrounds for `sat-seg synth --backgrounds DIR`: crops of photographs.

A :class:`BackgroundBank` holds a folder of aerial photographs (e.g. the FlightGear terrain
textures, docs/data.md) as grayscale float32 images and cuts HxW crops out of them at a random
scale, rotation and mirror. Crops are drawn from the generator they are given, so a synthetic
set stays a function of (seed, index) whatever bank it is made with.

Files are selected by name and content: names that mark a non-photographic variant (masks,
relief and overlay layers, colour tables, normal maps) and near-constant images are skipped, and
so is every name that starts with a stem of an exclude list (e.g. images kept for independent
testing).
"""

from __future__ import annotations

import hashlib
import logging
import math
import pathlib
import shutil
from typing import Dict, Iterable, List, Optional, Sequence

import cv2
import numpy as np

LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
#: Name fragments of texture variants that are not photographs of the ground.
NON_PHOTO_MARKERS = ('mask', 'relief', 'overlay', 'colors', 'structure', 'void', 'unknown',
                     'grain_texture', '-nm', '_nm', 'normal')
MIN_SIDE_PX = 256
PHOTO_TERRAIN = 'photo'      # the terrain layer a photograph crop records in its scene's entry
CHROMA_SCALE = 63.75          # uint8 chroma cache: 0..4 in steps of 1/64
MIN_GRAY_STD = 0.03          # 0..1 scale: flatter images are colour swatches, not scenes
SCALE_RANGE = (0.35, 1.6)    # crop pixels per source pixel, log-uniform


def read_exclude_list(path: Optional[pathlib.Path]) -> List[str]:
    """Return the stems of an exclude list (one file name per line, '#' comments)."""
    if path is None:
        return []
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f'exclude list {path} does not exist')
    stems = []
    for line in path.read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            stems.append(pathlib.Path(line).stem)
    return stems


def _excluded(name: str, stems: Iterable[str]) -> bool:
    return any(name.startswith(stem) for stem in stems)


def _is_variant(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in NON_PHOTO_MARKERS)


def read_gray(path: pathlib.Path) -> Optional[np.ndarray]:
    """Return an image file as HxW float32 gray in [0, 1], or None when it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        return None
    if image.dtype == np.uint16:
        image = (image / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        return None
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[:, :, :3]
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return image.astype(np.float32) / 255.0


def select_backgrounds(folder: pathlib.Path, exclude_stems: Sequence[str] = ()
                       ) -> List[pathlib.Path]:
    """Return the usable photographs of ``folder`` (sorted), or raise ValueError saying why not.

    Usable: an image suffix, no variant marker in the name, no excluded stem, readable, at
    least MIN_SIDE_PX on its shorter side and not near-constant.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise ValueError(f'backgrounds folder {folder} does not exist')
    candidates = sorted(p for p in folder.iterdir()
                        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    chosen, skipped = [], {'variant': 0, 'excluded': 0, 'unreadable': 0, 'small': 0, 'flat': 0}
    for path in candidates:
        if _excluded(path.name, exclude_stems):
            skipped['excluded'] += 1
            continue
        if _is_variant(path.name):
            skipped['variant'] += 1
            continue
        image = read_gray(path)
        if image is None:
            skipped['unreadable'] += 1
        elif min(image.shape) < MIN_SIDE_PX:
            skipped['small'] += 1
        elif float(image.std()) < MIN_GRAY_STD:
            skipped['flat'] += 1
        else:
            chosen.append(path)
    if not chosen:
        raise ValueError(f'backgrounds folder {folder} has no usable image ({len(candidates)} '
                         f'image files; skipped: {skipped}); give a folder of aerial photographs '
                         f'at least {MIN_SIDE_PX} px on a side')
    LOG.info('backgrounds: %d of %d images from %s (skipped %s)', len(chosen), len(candidates),
             folder, skipped)
    return chosen


def fingerprint(paths: Sequence[pathlib.Path]) -> str:
    """Return a short hash of the chosen file names and sizes (for a dataset's provenance)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f'{path.name}:{path.stat().st_size}\n'.encode())
    return digest.hexdigest()[:16]


class BackgroundBank:
    """Photographs as gray float32 images, cropped at random scale, rotation and mirror."""

    def __init__(self, paths: Sequence[pathlib.Path], cache_size: int = 400) -> None:
        if not paths:
            raise ValueError('a BackgroundBank needs at least one image')
        self.paths = list(paths)
        self.cache_size = cache_size
        self._cache: Dict[int, np.ndarray] = {}
        self._chroma: Dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        """Return photograph ``index`` as HxW float32 gray (cached)."""
        if index not in self._cache:
            image = read_gray(self.paths[index])
            if image is None:
                raise ValueError(f'background {self.paths[index]} can no longer be read')
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = image
        return self._cache[index]

    def chroma(self, index: int) -> np.ndarray:
        """Return photograph ``index``'s HxWx3 chroma as uint8 (CHROMA_SCALE per unit; cached).

        8 bits (steps of 1/64) keep the cache of large photographs small.
        """
        from sat_seg_training.synth_color import photo_chroma

        if index not in self._chroma:
            image = cv2.imread(str(self.paths[index]), cv2.IMREAD_COLOR)  # 8-bit BGR
            if image is None:
                raise ValueError(f'background {self.paths[index]} can no longer be read')
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
            if len(self._chroma) >= self.cache_size:
                self._chroma.pop(next(iter(self._chroma)))
            scaled = photo_chroma(rgb) * CHROMA_SCALE + 0.5
            self._chroma[index] = np.clip(scaled, 0, 255).astype(np.uint8)
        return self._chroma[index]

    def crop(self, rng: np.random.Generator, height: int, width: int, chroma: bool = False):
        """Return (HxW float32 crop in [0, 1], description) from a random photograph.

        With ``chroma`` also the crop's HxWx3 chroma, cut with the same warp and mirror (a
        third item; the draws from ``rng`` are the same either way).
        """
        index = int(rng.integers(len(self.paths)))
        source = self.image(index)
        scale = math.exp(rng.uniform(math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1])))
        angle = float(rng.uniform(0.0, 360.0))
        sh, sw = source.shape
        # The crop's centre, in source pixels; textures tile seamlessly, so wrap at the edges.
        cx, cy = rng.uniform(0, sw), rng.uniform(0, sh)
        matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        matrix[:, 2] += (width / 2.0 - cx, height / 2.0 - cy)
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        crop = cv2.warpAffine(source, matrix, (width, height), flags=interpolation,
                              borderMode=cv2.BORDER_WRAP)
        colour = None
        if chroma:
            colour = cv2.warpAffine(self.chroma(index), matrix, (width, height),
                                    flags=interpolation, borderMode=cv2.BORDER_WRAP
                                    ).astype(np.float32) / CHROMA_SCALE
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
            colour = None if colour is None else colour[:, ::-1]
        # Photographs differ in exposure; stretch toward the procedural scenes' range.
        lo, hi = np.percentile(crop, (1, 99))
        if hi - lo > 1e-3:
            gain = rng.uniform(0.6, 1.0) / (hi - lo)
            crop = (crop - lo) * gain + rng.uniform(0.05, max(0.06, 0.95 - gain * (hi - lo)))
        crop = np.clip(crop, 0, 1).astype(np.float32)
        description = {'terrain': [PHOTO_TERRAIN], 'photo': self.paths[index].name,
                       'scale': round(scale, 3), 'angle': round(angle, 1)}
        if chroma:
            return np.ascontiguousarray(crop), description, np.ascontiguousarray(colour)
        return np.ascontiguousarray(crop), description


def pack_backgrounds(folder: pathlib.Path, out: pathlib.Path, exclude_stems: Sequence[str] = (),
                     quality: int = 80, halve_from: int = 2048) -> List[pathlib.Path]:
    """Write JPEG copies of ``folder``'s usable photographs to ``out`` and return their paths.

    A compact copy of a backgrounds folder for a machine the originals are too large to carry
    to: each photograph :func:`select_backgrounds` keeps, in colour, as ``<stem>.jpg`` at
    ``quality``, halved (area interpolation) when its longer side is ``halve_from`` px or more.
    The folder is written whole or not at all: into ``<out>.tmp``, renamed at the end; an
    existing ``out`` is refused. A copy may fail the flatness check that its original passed
    (compression smooths a nearly flat image), so select again on the copy.
    """
    out = pathlib.Path(out)
    if out.exists():
        raise ValueError(f'{out} exists: remove it or choose another folder')
    if not 1 <= int(quality) <= 100:
        raise ValueError(f'quality={quality!r} must be a JPEG quality in 1..100')
    paths = select_backgrounds(folder, exclude_stems)
    stems = [path.stem for path in paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f'{folder} holds photographs that differ only in their suffix; their '
                         f'JPEG copies would overwrite each other')
    staging = out.with_name(out.name + '.tmp')
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    written = []
    try:
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if max(image.shape[:2]) >= halve_from:
                image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2),
                                   interpolation=cv2.INTER_AREA)
            target = staging / (path.stem + '.jpg')
            if not cv2.imwrite(str(target), image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)]):
                raise ValueError(f'could not write {target}')
            written.append(out / target.name)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written
