"""Synthetic aerial scenes with pasted satellites and exact masks (`sat-seg synth`).

Each image is a grayscale 512 x 641 aerial scene (synth_terrain) with, for positives, exactly
one satellite (synth_satellite) at a random attitude, size, position and contrast, then sensor
effects (gamma, blur, noise, film grain, vignetting, JPEG); with ``color``, the same scene in RGB
(synth_color: the gray image times a chroma map). Image i depends only on (seed, i)
and on whether it holds a satellite; which images do is a draw over all n (negative_indices),
so a set is reproducible, any image can be regenerated alone, and the first images of a larger
set of the same seed have the same backgrounds but not always the same satellites.

The mask is the set of pixels at least half covered by the satellite, computed from the
supersampled render before any blur; the bbox is the mask's tight box.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import pathlib
import time
from typing import Callable, Optional, Tuple

import cv2
import numpy as np

from sat_seg_training import dataset as ds
from sat_seg_training.backgrounds import (BackgroundBank, fingerprint, read_exclude_list,
                                          select_backgrounds)
from sat_seg_training.synth_color import (apply_chroma, satellite_chroma, soften,
                                          terrain_chroma)
from sat_seg_training.synth_satellite import render_satellite
from sat_seg_training.synth_terrain import clouds, fractal_noise, scene

HEIGHT = 512
WIDTH = 641
SIZE_RANGE = (16.0, 200.0)        # log-uniform, most satellites
TAIL_RANGE = (10.0, 256.0)        # log-uniform, the rest: ~10 px to 40 % of the width
TAIL_FRACTION = 0.2
POOL_MIN_IMAGES = 50
MIN_SIDE_PX = 8                   # re-draw satellites whose mask is smaller
COLOR_STREAM = 3                  # colour draws: default_rng([seed, index, COLOR_STREAM])


@dataclasses.dataclass
class Sample:
    """One synthetic image: uint8 HxW, bool mask (None for negatives), bbox, description."""

    image: np.ndarray
    mask: Optional[np.ndarray]
    bbox_xywh: Optional[Tuple[int, int, int, int]]
    description: dict


def sample_size(rng: np.random.Generator) -> float:
    """Draw the satellite's longer projected side in pixels (log-uniform mixture)."""
    lo, hi = TAIL_RANGE if rng.random() < TAIL_FRACTION else SIZE_RANGE
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _paste(rng, background, sprite):
    """Composite a sprite at a random position; return (image, mask, description, (y, x))."""
    height, width = background.shape
    sh, sw = sprite.coverage.shape
    sh, sw = min(sh, height), min(sw, width)
    coverage = sprite.coverage[:sh, :sw]
    y = int(rng.integers(0, height - sh + 1))
    x = int(rng.integers(0, width - sw + 1))
    window = background[y:y + sh, x:x + sw]
    weight = coverage.sum() + 1e-6
    ground = float((window * coverage).sum() / weight)
    brighter = rng.random() < 0.55
    delta = rng.uniform(0.08, 0.45)
    if (brighter and ground + delta > 0.97) or (not brighter and ground - delta < 0.03):
        brighter = not brighter
    target = float(np.clip(ground + delta if brighter else ground - delta, 0.03, 0.97))
    intensity = sprite.intensity[:sh, :sw]
    mean = float((intensity * coverage).sum() / weight)
    satellite = np.clip(target + (intensity - mean) * rng.uniform(0.5, 1.6), 0, 1)
    if rng.random() < 0.3:          # pasted object softer than the scene
        satellite = cv2.GaussianBlur(satellite, (0, 0), rng.uniform(0.5, 1.2))
    image = background.copy()
    image[y:y + sh, x:x + sw] = window * (1 - coverage) + satellite * coverage
    mask = np.zeros((height, width), bool)
    mask[y:y + sh, x:x + sw] = coverage >= 0.5
    return image, mask, {'polarity': 'brighter' if brighter else 'darker',
                         'contrast': round(abs(target - ground), 3)}, (y, x)


def _sensor(rng, image):
    """Apply gamma, blur, vignetting, noise, film grain and JPEG; return uint8."""
    height, width = image.shape
    effects = []
    gamma = rng.uniform(0.7, 1.4)
    image = np.power(np.clip(image, 0, 1), gamma)
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.3))
        effects.append('blur')
    if rng.random() < 0.1:
        length = int(rng.integers(3, 8))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2] = 1.0 / length
        rotation = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2),
                                           rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rotation, (length, length))
        image = cv2.filter2D(image, -1, kernel / max(kernel.sum(), 1e-6))
        effects.append('motion')
    if rng.random() < 0.3:
        ys, xs = np.ogrid[-1:1:height * 1j, -1:1:width * 1j]
        image = image * (1 - rng.uniform(0.1, 0.35) * (xs * xs + ys * ys) / 2)
        effects.append('vignette')
    noise = np.empty((height, width), np.float32)
    cv2.setRNGSeed(int(rng.integers(2 ** 31)))     # OpenCV's RNG is ~5x faster than numpy's
    cv2.randn(noise, 0.0, rng.uniform(0.003, 0.03))
    image = image + noise
    if rng.random() < 0.4:
        image = image + rng.uniform(0.01, 0.04) * fractal_noise(rng, height, width, 160, 1)
        effects.append('grain')
    out = cv2.convertScaleAbs(np.maximum(image, 0.0), alpha=255.0)   # rounds, saturates
    if rng.random() < 0.3:
        quality = int(rng.integers(40, 90))
        _, encoded = cv2.imencode('.jpg', out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        out = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
        effects.append(f'jpeg{quality}')
    return out, {'gamma': round(gamma, 2), 'effects': effects}


def make_sample(seed: int, index: int, positive: bool, height: int = HEIGHT,
                width: int = WIDTH, bank: Optional[BackgroundBank] = None,
                photo_fraction: float = 0.0, color: bool = False) -> Sample:
    """Generate image `index` of the set with `seed` (deterministic in (seed, index)).

    With a ``bank``, a share ``photo_fraction`` of the backgrounds are crops of its photographs
    instead of procedural scenes (deterministic in (seed, index) for the same bank). With
    ``color`` the image is RGB: the gray image times a chroma map (synth_color) drawn from
    its own generator, so its luminance and its mask are the gray image's.
    """
    rng = np.random.default_rng([seed, index])
    tint = np.random.default_rng([seed, index, COLOR_STREAM]) if color else None
    chroma = None
    if bank is not None and rng.random() < photo_fraction:
        background, description, *rest = bank.crop(rng, height, width, chroma=color)
        chroma = rest[0] if color else None
        if rng.random() < 0.25:
            background = clouds(rng, background)
            description['terrain'].append('clouds')
    else:
        background, description = scene(rng, height, width)
        if color:
            chroma = terrain_chroma(tint, description['terrain'], height, width)
    mask = bbox = None
    if positive:
        for _ in range(10):
            sprite = render_satellite(rng, min(sample_size(rng), 0.9 * min(height, width)))
            box = ds.mask_bbox(sprite.coverage >= 0.5)
            if box is not None and max(box[2:]) >= MIN_SIDE_PX:
                break
        background, mask, pasted, (y, x) = _paste(rng, background, sprite)
        bbox = ds.mask_bbox(mask)
        description['satellite'] = dict(sprite.design, **pasted)
        if color:
            paint, names = satellite_chroma(tint, sprite.material)
            sh, sw = min(paint.shape[0], height), min(paint.shape[1], width)
            cover = sprite.coverage[:sh, :sw, None]
            window = chroma[y:y + sh, x:x + sw]
            chroma[y:y + sh, x:x + sw] = window * (1 - cover) + paint[:sh, :sw] * cover
            description['satellite']['colours'] = names
    image, sensor = _sensor(rng, background)
    description.update(sensor)
    if color:
        image = apply_chroma(image, soften(chroma))
    return Sample(image, mask, bbox, description)


_WORKER_BANK: Optional[BackgroundBank] = None


def _init_worker(paths) -> None:
    global _WORKER_BANK
    _WORKER_BANK = BackgroundBank(paths) if paths else None


def _make(job):
    seed, index, positive, photo_fraction, color = job
    return make_sample(seed, index, positive, bank=_WORKER_BANK, photo_fraction=photo_fraction,
                       color=color)


def negative_indices(n: int, neg_frac: float, seed: int) -> set:
    """Return the indices of the images without a satellite (round(n * neg_frac) of them)."""
    count = int(round(n * neg_frac))
    order = np.random.default_rng([seed, 2 ** 31]).permutation(n)
    return {int(i) for i in order[:count]}


def generate(out, n: int, seed: int = 0, neg_frac: float = 0.2, workers: int = 1,
             contact: int = 30, progress: Optional[Callable[[int, int], None]] = None,
             backgrounds=None, photo_fraction: float = 0.6,
             exclude_list: Optional[pathlib.Path] = None, color: bool = False) -> dict:
    """Write a synthetic dataset to `out`; return a summary (counts, seconds, images/s).

    workers > 1 generates in a process pool (images are identical whatever the count); the
    pool starts only for sets of at least POOL_MIN_IMAGES per worker, below which starting it
    costs more than it saves. ``backgrounds`` (a folder of aerial photographs) replaces a share
    ``photo_fraction`` of the procedural backgrounds with crops of them; names starting with a
    stem of ``exclude_list`` are never used. ``color`` writes RGB images, the gray set of the
    same seed coloured (make_sample). Every check runs before anything is written.
    """
    if n < 1:
        raise ValueError(f'n={n}: ask for at least one image')
    if not 0.0 <= neg_frac <= 1.0:
        raise ValueError(f'neg_frac={neg_frac}: use a fraction between 0 and 1')
    if not 0.0 <= photo_fraction <= 1.0:
        raise ValueError(f'photo_fraction={photo_fraction}: use a fraction between 0 and 1')
    out = pathlib.Path(out)
    negatives = negative_indices(n, neg_frac, seed)
    info = {'generator': 'sat-seg synth', 'seed': seed, 'n': n, 'neg_frac': neg_frac,
            'height': HEIGHT, 'width': WIDTH}
    if color:
        info['color'] = True
    paths: list = []
    if backgrounds is not None:
        paths = select_backgrounds(pathlib.Path(backgrounds), read_exclude_list(exclude_list))
        info['backgrounds'] = {'folder': pathlib.Path(backgrounds).name, 'images': len(paths),
                               'fingerprint': fingerprint(paths),
                               'photo_fraction': photo_fraction}
    share = photo_fraction if paths else 0.0
    jobs = [(seed, i, i not in negatives, share, bool(color)) for i in range(n)]
    start = time.perf_counter()
    workers = max(1, min(workers, n // POOL_MIN_IMAGES))
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context('spawn').Pool(workers, _init_worker, (paths,))
    else:
        _init_worker(paths)
    try:
        samples = pool.imap(_make, jobs, chunksize=4) if pool else map(_make, jobs)
        with ds.DatasetWriter(out, info=info) as writer:
            for index, sample in enumerate(samples):
                writer.add(f'synth_{seed}_{index:06d}.png', sample.image, sample.bbox_xywh,
                           sample.mask, extra={'synth': sample.description})
                if progress:
                    progress(index + 1, n)
    finally:
        if pool:
            pool.close()
            pool.join()
    elapsed = time.perf_counter() - start
    summary = {'images': n, 'negatives': len(negatives), 'seconds': round(elapsed, 2),
               'images_per_s': round(n / elapsed, 1), 'workers': workers}
    if contact:
        summary['contact_sheet'] = str(contact_sheet(out, out / 'contact_sheet.png', contact))
    return summary


def _inset(image: np.ndarray, bbox, side: int) -> np.ndarray:
    """Return a side x side crop around `bbox` (x, y, w, h), enlarged; black when bbox is None."""
    if bbox is None:
        return np.zeros((side, side, 3), np.uint8)
    x, y, w, h = bbox
    half = int(max(w, h) * 0.7) + 4
    cx, cy = int(x + w / 2), int(y + h / 2)
    padded = cv2.copyMakeBorder(image, half, half, half, half, cv2.BORDER_REPLICATE)
    crop = padded[cy:cy + 2 * half, cx:cx + 2 * half]
    shrinking = crop.shape[0] > side
    return cv2.resize(crop, (side, side),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_NEAREST)


def contact_sheet(root, path, count: int = 30, columns: int = 6, thumb_width: int = 214
                  ) -> pathlib.Path:
    """Write a PNG grid of the first `count` images with mask outlines (red) and boxes (green).

    Masks come from DIR/masks when present; a record without mask shows its bbox only. Each
    positive also gets an inset (yellow frame) with its satellite enlarged and unmarked.
    """
    dataset = ds.load_dataset(root)
    records = dataset.records[:count]
    tiles = []
    for record in records:
        image = record.read_image()
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        image = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
        scale = thumb_width / image.shape[1]
        thumb = cv2.resize(image, (thumb_width, int(round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
        inset = _inset(image, record.bbox_xywh, thumb.shape[0] // 3)
        mask = record.read_mask()
        if mask is not None:
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_NONE)
            contours = [np.round(c * scale).astype(np.int32) for c in contours]
            cv2.drawContours(thumb, contours, -1, (255, 0, 0), 1)
        if record.bbox_xywh is not None:
            x, y, w, h = (v * scale for v in record.bbox_xywh)
            cv2.rectangle(thumb, (int(x) - 3, int(y) - 3), (int(x + w) + 3, int(y + h) + 3),
                          (0, 255, 0), 1)
            side = inset.shape[0]
            left = 2 if x + w / 2 > thumb_width / 2 else thumb_width - side - 2
            thumb[2:2 + side, left:left + side] = inset
            cv2.rectangle(thumb, (left - 1, 1), (left + side, 2 + side), (255, 255, 0), 1)
        tiles.append(thumb)
    if not tiles:
        raise ValueError(f'{root} has no images for a contact sheet')
    th, tw = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / columns)
    sheet = np.full((rows * (th + 4), columns * (tw + 4), 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        tile = cv2.resize(tile, (tw, th)) if tile.shape[:2] != (th, tw) else tile
        sheet[r * (th + 4):r * (th + 4) + th, c * (tw + 4):c * (tw + 4) + tw] = tile
    ds.write_image(path, sheet)
    return pathlib.Path(path)
