"""Generic synthetic shapes for promptable pretraining (pure numpy + cv2).

A scene is a grayscale clutter background (multi-scale noise, gradients, faint strokes and blobs)
with at most one foreground object: an ellipse, a polygon, a star, or a composite of rectangles
(a bus with panels). The object differs from its surroundings in brightness and/or texture and
its mask is exact. This teaches a from-scratch encoder and mask decoder what "the object in this
box" means before they see satellite scenes; it is not meant to look like aerial photography.
"""

from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Return float32 noise in about [-1, 1] varying over ``scale`` pixels (bicubic upsampling)."""
    small_h = max(2, int(round(height / scale)) + 2)
    small_w = max(2, int(round(width / scale)) + 2)
    small = rng.standard_normal((small_h, small_w)).astype(np.float32)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(big, -2.5, 2.5) / 2.5


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Return a float32 clutter background in [0, 1]."""
    base = rng.uniform(0.15, 0.85)
    image = np.full((height, width), base, np.float32)
    for scale in (160.0, 48.0, 12.0, 3.0):
        image += rng.uniform(0.0, 0.18) * smooth_noise(rng, height, width, scale)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / max(height, width)
    image += rng.uniform(-0.15, 0.15) * ramp
    for _ in range(rng.integers(0, 12)):  # faint strokes: roads, field edges
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        value = float(np.clip(base + rng.uniform(-0.25, 0.25), 0, 1))
        cv2.line(image, p0, p1, value, int(rng.integers(1, 6)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 8)):  # soft blobs: trees, ponds, clouds
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(4, 60)), int(rng.integers(4, 60)))
        value = float(np.clip(base + rng.uniform(-0.2, 0.2), 0, 1))
        cv2.ellipse(image, center, axes, float(rng.uniform(0, 180)), 0, 360, value, -1,
                    cv2.LINE_AA)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.5))
    return np.clip(image, 0.0, 1.0)


def _polygon(rng: np.random.Generator, radius: float) -> np.ndarray:
    count = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    radii = radius * rng.uniform(0.5, 1.0, count)
    if rng.random() < 0.3:  # star
        count *= 2
        angles = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, np.pi)
        radii = np.where(np.arange(count) % 2 == 0, radius, radius * rng.uniform(0.3, 0.6))
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _rectangle(cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]], np.float64) / 2
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return corners @ rot.T + [cx, cy]


def object_mask(rng: np.random.Generator, height: int, width: int,
                size_px: float) -> np.ndarray:
    """Return a bool mask with one object of about ``size_px`` extent, fully inside the frame."""
    mask = np.zeros((height, width), np.uint8)
    margin = size_px / 2 + 2
    cx = rng.uniform(margin, max(margin + 1, width - margin))
    cy = rng.uniform(margin, max(margin + 1, height - margin))
    kind = rng.integers(0, 3)
    shift = 4  # sub-pixel vertices for cv2
    if kind == 0:
        axes = (max(1, int(size_px / 2 * 16)), max(1, int(size_px / 2 * rng.uniform(0.3, 1) * 16)))
        cv2.ellipse(mask, (int(cx * 16), int(cy * 16)), axes, float(rng.uniform(0, 180)), 0, 360,
                    1, -1, cv2.LINE_8, shift)
    elif kind == 1:
        points = _polygon(rng, size_px / 2) + [cx, cy]
        cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, cv2.LINE_8, shift)
    else:  # a bus with 0-2 panels, like a satellite seen from above
        angle = rng.uniform(0, np.pi)
        span = size_px
        bus = span * rng.uniform(0.2, 0.45)
        parts = [_rectangle(cx, cy, bus, bus * rng.uniform(0.6, 1.4), angle)]
        panels = rng.integers(0, 3)
        panel_w = (span - bus) / 2
        panel_h = bus * rng.uniform(0.4, 1.0)
        for side in range(panels):
            sign = 1 if side == 0 else -1
            offset = sign * (bus / 2 + panel_w / 2)
            parts.append(_rectangle(cx + offset * np.cos(angle), cy + offset * np.sin(angle),
                                    panel_w, panel_h, angle))
        for part in parts:
            cv2.fillPoly(mask, [np.round(part * 16).astype(np.int32)], 1, cv2.LINE_8, shift)
    return mask.astype(bool)


def make_scene(rng: np.random.Generator, height: int = 512, width: int = 641,
               positive: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Return (image HxW uint8, mask HxW bool); ``positive=False`` gives an empty mask.

    Object extent is log-uniform from 8 px to 40 % of the shorter side.
    """
    image = background(rng, height, width)
    mask = np.zeros((height, width), bool)
    if positive:
        size = float(np.exp(rng.uniform(np.log(8.0), np.log(0.4 * min(height, width)))))
        mask = object_mask(rng, height, width, size)
        local = float(image[mask].mean()) if mask.any() else 0.5
        sign = rng.choice([-1.0, 1.0]) if 0.25 < local < 0.75 else (1.0 if local < 0.5 else -1.0)
        value = np.clip(local + sign * rng.uniform(0.12, 0.5), 0.0, 1.0)
        texture = rng.uniform(0.0, 0.15) * smooth_noise(rng, height, width, rng.uniform(2, 8))
        alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.6)
        image = image * (1 - alpha) + np.clip(value + texture, 0, 1) * alpha
    image = image + rng.normal(0, rng.uniform(0.0, 0.04), image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), mask
