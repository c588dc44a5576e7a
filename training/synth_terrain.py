"""Procedural aerial terrain for the synthetic data set (vectorised numpy + cv2).

Every function takes a numpy Generator and the frame size and returns an HxW float32
reflectance map in [0, 1]. No per-pixel Python: noise is made at low resolution and resized,
shapes are drawn with cv2.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np


def fractal_noise(rng: np.random.Generator, height: int, width: int, cells: float,
                  octaves: int = 4, persistence: float = 0.5) -> np.ndarray:
    """Return zero-mean, unit-std fractal noise; `cells` = grid cells across the long side.

    Octaves are summed at the smallest resolution that still holds the finest one (4 pixels
    per cell), then resized once: the cost is one full-size resize whatever the octaves.
    """
    scale = max(height, width)
    finest = cells * 2 ** (octaves - 1)
    shrink = min(1.0, 4.0 * finest / scale)
    work_h = max(2, int(round(height * shrink)))
    work_w = max(2, int(round(width * shrink)))
    total = np.zeros((work_h, work_w), np.float32)
    amplitude = 1.0
    for _ in range(octaves):
        gh = max(2, int(round(cells * height / scale)) + 2)
        gw = max(2, int(round(cells * width / scale)) + 2)
        grid = rng.standard_normal((gh, gw)).astype(np.float32)
        total += amplitude * cv2.resize(grid, (work_w, work_h), interpolation=cv2.INTER_CUBIC)
        amplitude *= persistence
        cells *= 2.0
    if (work_h, work_w) != (height, width):
        total = cv2.resize(total, (width, height), interpolation=cv2.INTER_CUBIC)
    mean, std = cv2.meanStdDev(total)
    total -= float(mean[0, 0])
    total /= float(std[0, 0]) + 1e-6
    return total


def warp(rng: np.random.Generator, image: np.ndarray, amount: float, cells: float = 6.0
         ) -> np.ndarray:
    """Displace `image` by smooth noise of `amount` pixels (natural, irregular borders)."""
    height, width = image.shape[:2]
    xs, ys = _pixel_grid(height, width)
    dx = fractal_noise(rng, height, width, cells, 3) * amount
    dy = fractal_noise(rng, height, width, cells, 3) * amount
    return cv2.remap(image, xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def hillshade(rng: np.random.Generator, height: int, width: int, strength: float) -> np.ndarray:
    """Return a multiplicative relief shading map around 1 (sun from a random azimuth)."""
    relief = fractal_noise(rng, height, width, rng.uniform(2, 6), 5, 0.55)
    gy, gx = np.gradient(relief)
    azimuth = rng.uniform(0, 2 * math.pi)
    shade = gx * math.cos(azimuth) + gy * math.sin(azimuth)
    shade /= shade.std() + 1e-6
    return 1.0 + strength * np.tanh(shade * 0.7)


@functools.lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int):
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


def _rotated_coords(rng, height, width):
    angle = rng.uniform(0, math.pi)
    xs, ys = _pixel_grid(height, width)
    u = xs * math.cos(angle) + ys * math.sin(angle)
    v = -xs * math.sin(angle) + ys * math.cos(angle)
    return u, v


def fields(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Agricultural patchwork: parcels of varied tone with plough stripes and dark hedges."""
    u, v = _rotated_coords(rng, height, width)
    u = warp(rng, u, rng.uniform(0, 6))
    v = warp(rng, v, rng.uniform(0, 6))
    size_u = rng.uniform(40, 160)
    size_v = rng.uniform(25, 110)
    # Irregular strip widths along v, staggered parcel lengths along u per strip.
    widths = rng.uniform(0.4, 1.6, 64) * size_v
    edges = np.cumsum(widths) - 2000.0
    iv = np.searchsorted(edges, v).astype(np.int64)
    shift = rng.uniform(0, size_u, 256)[iv % 256]
    uu = (u + shift) / size_u
    iu = np.floor(uu).astype(np.int64)
    parcel = (iu * 73856093 ^ iv * 19349663) % 1024
    tone = rng.beta(2.0, 2.0, 1024).astype(np.float32) * rng.uniform(0.2, 0.6) + rng.uniform(
        0.15, 0.4)
    period = rng.uniform(2.0, 6.0, 1024).astype(np.float32)
    stripe_amp = (rng.uniform(0, 0.05, 1024) * (rng.random(1024) < 0.6)).astype(np.float32)
    along = rng.random(1024) < 0.5
    coord = np.where(along[parcel], u, v)
    image = tone[parcel] + stripe_amp[parcel] * np.sin(2 * math.pi * coord / period[parcel])
    # Hedges / tracks along parcel borders.
    frac_u = np.abs(uu - np.round(uu)) * size_u
    strip_lo = np.concatenate([[-1e9], edges])[np.clip(iv, 0, len(edges))]
    frac_v = np.minimum(np.abs(v - strip_lo),
                        np.abs(edges[np.clip(iv, 0, len(edges) - 1)] - v))
    border = np.minimum(frac_u, frac_v)
    hedge_width = rng.uniform(0.5, 3.0)
    hedge_tone = rng.uniform(-0.25, 0.2)
    image = image + hedge_tone * np.clip(1.0 - border / hedge_width, 0, 1)
    image += 0.05 * fractal_noise(rng, height, width, 12, 4, 0.6)
    return image.astype(np.float32)


def forest(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Tree canopy: sunlit crowns with shadowed sides and gaps, clearings with soft edges."""
    crown = rng.uniform(4, 10)
    fine = fractal_noise(rng, height, width, max(height, width) / crown, 2, 0.4)
    canopy = np.tanh(fine * rng.uniform(0.8, 2.0))
    # Crowns are domes: shade them along a sun direction (bright side, dark side).
    sun = rng.uniform(0, 2 * math.pi)
    gy, gx = np.gradient(canopy)
    relief = np.clip(gx * math.cos(sun) + gy * math.sin(sun), -1, 1)
    base = rng.uniform(0.12, 0.35)
    image = base + rng.uniform(0.04, 0.1) * canopy + rng.uniform(0.1, 0.3) * relief
    density = fractal_noise(rng, height, width, rng.uniform(2, 5), 4)
    clearing = np.clip((density - rng.uniform(0.6, 2.0)) * 4.0, 0, 1)
    meadow = base + rng.uniform(0.1, 0.4) + 0.03 * fine
    image = image * (1 - clearing) + meadow * clearing
    return image.astype(np.float32)


def desert(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Sand with wind-blown dunes (asymmetric ridges) and fine grain."""
    u, _ = _rotated_coords(rng, height, width)
    u = warp(rng, u, rng.uniform(5, 30), rng.uniform(2, 5))
    period = rng.uniform(15, 70)
    phase = (u / period) % 1.0
    ridge = np.where(phase < 0.75, phase / 0.75, (1.0 - phase) / 0.25)
    base = rng.uniform(0.45, 0.8)
    image = base + rng.uniform(0.03, 0.15) * (ridge - 0.5)
    image += 0.04 * fractal_noise(rng, height, width, 3, 4)
    image += 0.02 * rng.standard_normal((height, width)).astype(np.float32)
    return image.astype(np.float32)


def snow(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Snow fields with dark rock outcrops and scattered trees."""
    image = np.full((height, width), rng.uniform(0.75, 0.95), np.float32)
    rock = fractal_noise(rng, height, width, rng.uniform(3, 8), 5, 0.6)
    image -= np.clip(rock - rng.uniform(0.8, 2.0), 0, 1) * rng.uniform(0.3, 0.7)
    trees = fractal_noise(rng, height, width, max(height, width) / 4.0, 1)
    density = fractal_noise(rng, height, width, 3, 2) > rng.uniform(0.3, 2.5)
    image -= (trees > 1.2) * density * rng.uniform(0.3, 0.6)
    return np.clip(image, 0, 1)


def town(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Built-up area: street grid, buildings with roofs and cast shadows, some trees."""
    image = np.full((height, width), rng.uniform(0.3, 0.55), np.float32)
    image += 0.04 * fractal_noise(rng, height, width, 10, 3)
    angle = rng.uniform(0, math.pi)
    block = rng.uniform(40, 110)
    street = rng.uniform(0.25, 0.6)
    road_width = int(rng.integers(3, 9))
    center = np.array([width / 2, height / 2])
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    reach = math.hypot(width, height)
    for axis, other in ((direction, normal), (normal, direction)):
        for k in np.arange(-reach / block, reach / block + 1):
            origin = center + other * k * block
            p0 = (origin - axis * reach).astype(int)
            p1 = (origin + axis * reach).astype(int)
            cv2.line(image, tuple(int(c) for c in p0), tuple(int(c) for c in p1), street,
                     road_width)
    count = int(rng.integers(150, 600))
    centers = rng.uniform([0, 0], [width, height], (count, 2))
    sizes = rng.uniform(5, block * 0.35, (count, 2))
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) / 2
    rotation = np.stack([direction, normal])
    polygons = centers[:, None, :] + (corners[None] * sizes[:, None, :]) @ rotation
    sun = rng.uniform(0, 2 * math.pi)
    shadow_offset = np.array([math.cos(sun), math.sin(sun)]) * rng.uniform(1, 6)
    shadow_tone = rng.uniform(0.05, 0.2)
    cv2.fillPoly(image, [np.round(p + shadow_offset).astype(np.int32) for p in polygons],
                 shadow_tone)
    tones = rng.uniform(0.2, 0.95, count)
    for lo in np.linspace(0.2, 0.9, 8):
        chosen = (tones >= lo) & (tones < lo + 0.0875)
        if chosen.any():
            cv2.fillPoly(image, [np.round(p).astype(np.int32) for p in polygons[chosen]],
                         float(lo + 0.04))
    trees = fractal_noise(rng, height, width, max(height, width) / 5.0, 1)
    image = np.where(trees > rng.uniform(1.3, 2.5), rng.uniform(0.1, 0.25), image)
    return image.astype(np.float32)


def roads(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Draw 1-4 curving roads or tracks across the frame, in place; return the image."""
    height, width = image.shape
    for _ in range(int(rng.integers(1, 5))):
        start = rng.uniform([0, 0], [width, height])
        heading = rng.uniform(0, 2 * math.pi)
        turns = np.cumsum(rng.normal(0, 0.15, 40))
        steps = np.stack([np.cos(heading + turns), np.sin(heading + turns)], 1) * 30
        points = start + np.cumsum(np.concatenate([[[0, 0]], steps]), 0)
        points = np.concatenate([start - np.cumsum(steps[::-1], 0)[::-1], points])
        cv2.polylines(image, [np.round(points).astype(np.int32)], False,
                      float(rng.uniform(0.1, 0.9)), int(rng.integers(1, 7)))
    return image


def rock(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Bare mountains: strong relief shading, scree texture, dark gullies."""
    shade = hillshade(rng, height, width, rng.uniform(0.3, 0.6))
    base = rng.uniform(0.3, 0.6)
    grain = fractal_noise(rng, height, width, rng.uniform(40, 120), 2)
    gullies = np.abs(fractal_noise(rng, height, width, rng.uniform(4, 10), 4)) < 0.08
    image = base * shade + 0.04 * grain - gullies * rng.uniform(0.05, 0.2)
    return image.astype(np.float32)


def river(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Return the image crossed by a winding stream of dark water with soft banks."""
    height, width = image.shape
    water = np.zeros((height, width), np.float32)
    start = rng.uniform([0, 0], [width, height])
    heading = rng.uniform(0, 2 * math.pi)
    turns = np.cumsum(rng.normal(0, 0.25, 60))
    steps = np.stack([np.cos(heading + turns), np.sin(heading + turns)], 1) * 20
    points = np.concatenate([start - np.cumsum(steps[::-1], 0)[::-1],
                             start + np.cumsum(steps, 0)])
    cv2.polylines(water, [np.round(points).astype(np.int32)], False, 1.0,
                  int(rng.integers(6, 40)))
    water = cv2.GaussianBlur(water, (0, 0), rng.uniform(1, 4))
    tone = rng.uniform(0.05, 0.3) + 0.02 * fractal_noise(rng, height, width, 8, 2)
    return image * (1 - water) + tone * water


def coast(rng: np.random.Generator, height: int, width: int, land: np.ndarray) -> np.ndarray:
    """Water against `land`: irregular shoreline, beach strip, waves and sun glint."""
    shape = fractal_noise(rng, height, width, rng.uniform(1.5, 4), 6, 0.55)
    across, _ = _rotated_coords(rng, height, width)
    across = (across - across.mean()) / (np.ptp(across) / 2 + 1e-6)
    gradient = across * rng.uniform(0, 2.5)
    is_land = (shape + gradient) > rng.uniform(-0.8, 0.8)
    water = rng.uniform(0.04, 0.3) + 0.015 * fractal_noise(rng, height, width, 4, 3)
    u, _ = _rotated_coords(rng, height, width)
    water += rng.uniform(0, 0.03) * np.sin(2 * math.pi * warp(rng, u, 4) / rng.uniform(3, 9))
    if rng.random() < 0.3:
        glint = fractal_noise(rng, height, width, 40, 2)
        water += np.clip(glint - 1.5, 0, None) * rng.uniform(0.2, 0.6)
    distance = cv2.distanceTransform(is_land.astype(np.uint8), cv2.DIST_L2, 3)
    beach = (distance > 0) & (distance < rng.uniform(0, 10))
    image = np.where(is_land, land, water)
    image = np.where(beach, rng.uniform(0.55, 0.9), image)
    return image.astype(np.float32)


def clouds(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Add cumulus or thin clouds and their offset shadows."""
    height, width = image.shape
    density = fractal_noise(rng, height, width, rng.uniform(1.5, 5), 6, 0.6)
    cover = np.clip((density - rng.uniform(0.3, 1.8)) * rng.uniform(0.5, 2.5), 0, 1)
    opacity = rng.uniform(0.4, 1.0)
    shift = np.float32([[1, 0, rng.uniform(-40, 40)], [0, 1, rng.uniform(-40, 40)]])
    shadow = cv2.warpAffine(cover, shift, (width, height), borderMode=cv2.BORDER_REFLECT)
    image = image * (1 - rng.uniform(0.2, 0.6) * shadow)
    return image * (1 - opacity * cover) + opacity * cover * rng.uniform(0.8, 1.0)


def haze(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Blend toward a veiling brightness, stronger in parts of the frame."""
    height, width = image.shape
    amount = rng.uniform(0.1, 0.45) * (0.6 + 0.4 * np.tanh(
        fractal_noise(rng, height, width, 1.5, 2)))
    return image * (1 - amount) + amount * rng.uniform(0.5, 0.9)


def _half_resolution(biome):
    """Run a smooth biome at half resolution and resize (its detail survives; 4x cheaper)."""
    def render(rng, height, width):
        small = biome(rng, (height + 1) // 2, (width + 1) // 2)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    render.__doc__ = biome.__doc__
    return render


BIOMES = {
    'fields': _half_resolution(fields),
    'forest': forest,
    'desert': _half_resolution(desert),
    'snow': snow,
    'town': town,
    'rock': rock,
}


def scene(rng: np.random.Generator, height: int, width: int):
    """Return (reflectance HxW float32 in [0, 1], description dict) of a random aerial scene."""
    names = list(BIOMES)
    primary = names[int(rng.integers(len(names)))]
    image = BIOMES[primary](rng, height, width)
    parts = [primary]
    if rng.random() < 0.45:
        secondary = names[int(rng.integers(len(names)))]
        other = BIOMES[secondary](rng, height, width)
        blend = fractal_noise(rng, height, width, rng.uniform(1.5, 4), 5)
        edge = np.clip((blend - rng.uniform(-0.7, 0.7)) * rng.uniform(1, 8) + 0.5, 0, 1)
        image = image * (1 - edge) + other * edge
        parts.append(secondary)
    if primary != 'town' and rng.random() < 0.4:
        image = roads(rng, image)
        parts.append('roads')
    if rng.random() < 0.15:
        image = river(rng, image)
        parts.append('river')
    if rng.random() < 0.25:
        image = coast(rng, height, width, image)
        parts.append('water')
    if rng.random() < 0.6:
        image = image * hillshade(rng, height, width, rng.uniform(0.03, 0.2))
    if rng.random() < 0.25:
        image = clouds(rng, image)
        parts.append('clouds')
    if rng.random() < 0.25:
        image = haze(rng, image)
        parts.append('haze')
    return np.clip(image, 0, 1).astype(np.float32), {'terrain': parts}
