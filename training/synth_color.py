"""Colour for synthetic scenes: per-pixel chroma that keeps each pixel's luminance.

A colour scene (``sat-seg synth --color``) is its gray twin times a chroma map: an HxWx3 field
of RGB factors whose Rec. 601 luminance (0.299 R + 0.587 G + 0.114 B) is 1, so the colour
image's luminance is the gray scene's (up to 8-bit rounding and clipping of saturated
pixels). The chroma comes from the photograph itself for photographic backgrounds, from
palettes of the scene's biomes for procedural ones, and from the satellite's materials
(gold or silver foil, blue or violet solar cells, white paint) where it covers the scene.
Everything here draws from the generator it is given, never from the gray scene's, so a
colour set's pixels and masks are those of the gray set of the same seed, coloured.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import cv2
import numpy as np

from sat_seg_training.synth_satellite import CELLS, FOIL
from sat_seg_training.synth_terrain import fractal_noise

LUMA = np.array([0.299, 0.587, 0.114], np.float32)

#: Typical colours (linear RGB, any scale) of each biome seen from above.
PALETTES: Dict[str, Tuple[Tuple[float, float, float], ...]] = {
    'fields': ((0.45, 0.60, 0.25), (0.75, 0.70, 0.40), (0.55, 0.45, 0.30), (0.50, 0.62, 0.30)),
    'forest': ((0.25, 0.42, 0.20), (0.30, 0.45, 0.25), (0.35, 0.40, 0.25)),
    'desert': ((0.85, 0.72, 0.50), (0.80, 0.65, 0.45), (0.75, 0.60, 0.45)),
    'snow': ((0.95, 0.97, 1.00), (0.85, 0.90, 0.97)),
    'town': ((0.60, 0.60, 0.60), (0.70, 0.45, 0.40), (0.65, 0.62, 0.58)),
    'rock': ((0.55, 0.52, 0.48), (0.60, 0.55, 0.50), (0.50, 0.50, 0.52)),
    'water': ((0.20, 0.35, 0.45), (0.25, 0.40, 0.40)),
    'river': ((0.20, 0.35, 0.45), (0.30, 0.40, 0.35)),
}
NEUTRAL = (1.0, 1.0, 1.0)

#: Satellite surface colours by material, each a list of (name, RGB) choices.
SATELLITE_COLOURS = {
    FOIL: (('gold', (1.00, 0.80, 0.35)), ('silver', (0.90, 0.90, 0.95)),
           ('copper', (0.95, 0.60, 0.40))),
    CELLS: (('blue', (0.25, 0.35, 0.70)), ('violet', (0.35, 0.30, 0.55)),
            ('gray', (0.40, 0.40, 0.42))),
    'plain': (('white', (0.95, 0.95, 0.95)), ('gray-blue', (0.80, 0.85, 0.95)),
              ('beige', (0.95, 0.90, 0.80))),
}


def unit_luma(rgb) -> np.ndarray:
    """Scale RGB colours (..., 3) so that their Rec. 601 luminance is 1."""
    rgb = np.asarray(rgb, np.float32)
    return rgb / np.maximum(rgb @ LUMA, 1e-6)[..., None]


def desaturate(chroma: np.ndarray, saturation: float) -> np.ndarray:
    """Move a chroma map toward neutral (0: gray, 1: unchanged); luminance stays 1."""
    return (1.0 + saturation * (chroma - 1.0)).astype(np.float32)


def terrain_chroma(rng: np.random.Generator, parts: Sequence[str], height: int,
                   width: int) -> np.ndarray:
    """Return an HxWx3 chroma map mixing the palettes of ``parts`` (the scene's biomes).

    Two to four palette colours, each weighted by its own smooth noise field, so colour
    changes across the frame as fields, woods and soils do.
    """
    choices = [colour for part in parts for colour in PALETTES.get(part, ())] or [NEUTRAL]
    count = int(rng.integers(2, 5))
    picked = unit_luma([choices[int(rng.integers(len(choices)))] for _ in range(count)])
    fields = np.stack([fractal_noise(rng, height, width, rng.uniform(1.5, 6), 4)
                       for _ in range(count)])
    weights = np.exp(rng.uniform(2.0, 6.0) * (fields - fields.max(axis=0)))
    weights /= weights.sum(axis=0)
    chroma = np.einsum('khw,kc->hwc', weights, picked)
    return desaturate(chroma, rng.uniform(0.4, 1.0))


def photo_chroma(rgb: np.ndarray) -> np.ndarray:
    """Return the chroma of an HxWx3 RGB float image in [0, 1] (dark pixels: neutral)."""
    luma = np.asarray(rgb, np.float32) @ LUMA
    chroma = rgb / np.maximum(luma, 1.0 / 255.0)[..., None]
    weight = np.clip(luma / 0.05, 0.0, 1.0)[..., None]   # fade to neutral near black
    return np.clip(1.0 + weight * (chroma - 1.0), 0.0, 4.0).astype(np.float32)


def satellite_chroma(rng: np.random.Generator, material: np.ndarray
                     ) -> Tuple[np.ndarray, Dict[str, str]]:
    """Return (hxwx3 chroma of a sprite's material map, the colour names drawn)."""
    chroma = np.ones(material.shape + (3,), np.float32)
    names = {}
    saturation = rng.uniform(0.5, 1.0)
    for key, label in ((FOIL, 'foil'), (CELLS, 'cells'), ('plain', 'paint')):
        options = SATELLITE_COLOURS[key]
        name, colour = options[int(rng.integers(len(options)))]
        where = material == key if key != 'plain' else (material != FOIL) & (material != CELLS)
        if where.any():
            chroma[where] = desaturate(unit_luma(colour), saturation)
            names[label] = name
    return chroma, names


def apply_chroma(gray: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """Return uint8 HxWx3 RGB: a uint8 HxW gray image times its chroma map, rounded.

    Where a channel would pass 255 the pixel's chroma is moved toward neutral just enough to
    fit (highlights lose their colour, as on a sensor), so the luminance stays the gray value.
    """
    value = gray.astype(np.float32)[..., None]
    peak = chroma.max(axis=2, keepdims=True)
    room = (255.0 / np.maximum(value, 1e-3) - 1.0) / np.maximum(peak - 1.0, 1e-6)
    chroma = 1.0 + np.clip(room, 0.0, 1.0) * (chroma - 1.0)
    return np.clip(value * chroma + 0.5, 0, 255).astype(np.uint8)


def soften(chroma: np.ndarray, sigma: float = 0.7) -> np.ndarray:
    """Blur a chroma map slightly, as the optics blur the scene it colours."""
    return cv2.GaussianBlur(chroma, (0, 0), sigma)
