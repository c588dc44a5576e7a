"""Procedural 3D satellites rendered to an intensity patch and an exact coverage map.

A satellite is a list of planar faces in its body frame (bus box or prism, 0-2 solar wings
with cell grids, dish, booms). It is rotated to a random attitude, projected orthographically,
shaded with a Lambert + specular model under a random light, drawn back to front with cv2 at
2-4x supersampling and reduced with area averaging, so the coverage is exact to 1/ss^2.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Tuple

import cv2
import numpy as np

# Materials: coverage-independent texture applied after shading.
PLAIN, FOIL, CELLS = 0, 1, 2


@dataclasses.dataclass
class Face:
    """A planar polygon in the body frame: vertices (k, 3), albedo, material, two-sided."""

    vertices: np.ndarray
    albedo: float
    material: int = PLAIN
    two_sided: bool = False
    grid: Tuple[int, int] = (0, 0)   # cell rows/cols drawn on CELLS faces (quads only)


@dataclasses.dataclass
class Boom:
    """A thin rod from p0 to p1 (body frame) with a radius relative to the bus size."""

    p0: np.ndarray
    p1: np.ndarray
    radius: float
    albedo: float


@dataclasses.dataclass
class Sprite:
    """A rendered satellite: intensity (h, w) float32 in [0, 1] and coverage in [0, 1].

    ``material`` (h, w) uint8 is the material seen at each pixel (PLAIN, FOIL or CELLS; the
    nearest supersampled one), for colouring.
    """

    intensity: np.ndarray
    coverage: np.ndarray
    design: dict
    material: Optional[np.ndarray] = None


def _box(center, size, albedo, material) -> List[Face]:
    cx, cy, cz = center
    sx, sy, sz = (s / 2 for s in size)
    corners = np.array([[cx + a * sx, cy + b * sy, cz + c * sz]
                        for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return [Face(corners[list(q)], albedo, material) for q in quads]


def _prism(sides, radius, length, albedo, material) -> List[Face]:
    angles = np.linspace(0, 2 * math.pi, sides, endpoint=False)
    ring = np.stack([np.zeros(sides), radius * np.cos(angles), radius * np.sin(angles)], 1)
    low = ring + [-length / 2, 0, 0]
    high = ring + [length / 2, 0, 0]
    faces = [Face(np.stack([low[i], low[(i + 1) % sides], high[(i + 1) % sides], high[i]]),
                  albedo, material) for i in range(sides)]
    faces.append(Face(low[::-1].copy(), albedo * 0.9, PLAIN))
    faces.append(Face(high.copy(), albedo * 0.9, PLAIN))
    return faces


def _disc(center, normal, radius, albedo, points=20) -> Face:
    normal = normal / np.linalg.norm(normal)
    helper = np.array([1.0, 0, 0]) if abs(normal[0]) < 0.9 else np.array([0, 1.0, 0])
    a = np.cross(normal, helper)
    a /= np.linalg.norm(a)
    b = np.cross(normal, a)
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    ring = center + radius * (np.cos(t)[:, None] * a + np.sin(t)[:, None] * b)
    return Face(ring, albedo, PLAIN, two_sided=True)


def design_satellite(rng: np.random.Generator):
    """Return (faces, booms, description) of a random satellite in its body frame.

    The bus spans about 1 unit along x; wings extend along +-y.
    """
    faces: List[Face] = []
    booms: List[Boom] = []
    bus_albedo = rng.uniform(0.35, 0.95)
    bus_material = FOIL if rng.random() < 0.6 else PLAIN
    bus_kind = ['box', 'prism'][int(rng.random() < 0.35)]
    if bus_kind == 'box':
        size = (1.0, rng.uniform(0.5, 1.2), rng.uniform(0.5, 1.2))
        faces += _box((0, 0, 0), size, bus_albedo, bus_material)
        half_y = size[1] / 2
    else:
        radius = rng.uniform(0.25, 0.6)
        faces += _prism(int(rng.choice([6, 8, 12])), radius, 1.0, bus_albedo, bus_material)
        half_y = radius
    wings = int(rng.choice([0, 1, 2], p=[0.15, 0.2, 0.65]))
    panel_albedo = rng.uniform(0.05, 0.35)
    panel_back = rng.uniform(0.5, 0.95)
    span = rng.uniform(1.0, 3.5)
    panels = int(rng.integers(1, 5))
    chord = rng.uniform(0.4, 1.0)
    tilt = rng.uniform(0, math.pi)
    yoke = rng.uniform(0.05, 0.4)
    for side in [1, -1][:wings]:
        root = half_y + yoke
        booms.append(Boom(np.array([0, side * half_y, 0.0]), np.array([0, side * root, 0.0]),
                          0.02, 0.6))
        gap = 0.04 * span / panels
        length = span / panels - gap
        c, s = math.cos(tilt), math.sin(tilt)
        for k in range(panels):
            y0 = side * (root + k * (length + gap))
            y1 = y0 + side * length
            corners = np.array([[-chord / 2, y0], [chord / 2, y0], [chord / 2, y1],
                                [-chord / 2, y1]])
            verts = np.stack([corners[:, 0] * c, corners[:, 1], corners[:, 0] * s], 1)
            front = Face(verts, panel_albedo, CELLS, grid=(int(rng.integers(2, 5)),
                                                           int(rng.integers(3, 9))))
            back = Face(verts[::-1].copy(), panel_back, PLAIN)
            faces += [front, back]
    dish = rng.random() < 0.45
    if dish:
        face_side = rng.choice([-1, 1])
        radius = rng.uniform(0.2, 0.6)
        normal = np.array([face_side, rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)])
        center = np.array([face_side * (0.5 + rng.uniform(0.05, 0.3)), 0, 0])
        faces.append(_disc(center, normal, radius, rng.uniform(0.6, 0.95)))
        booms.append(Boom(np.array([face_side * 0.5, 0, 0]), center, 0.03, 0.7))
    for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.4, 0.3, 0.2, 0.1]))):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        start = direction * 0.4
        booms.append(Boom(start, start + direction * rng.uniform(0.4, 2.0),
                          rng.uniform(0.01, 0.03), rng.uniform(0.3, 0.9)))
    description = {'bus': bus_kind, 'wings': wings, 'panels': panels * (wings > 0),
                   'dish': bool(dish), 'booms': len(booms) - wings - int(dish)}
    return faces, booms, description


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Return a uniformly random 3x3 rotation matrix (from a unit quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def render_satellite(rng: np.random.Generator, size_px: float) -> Sprite:
    """Render a random satellite whose longer projected side is about `size_px` pixels."""
    faces, booms, design = design_satellite(rng)
    rotation = random_rotation(rng)
    light = rng.normal(size=3)
    light[2] = -abs(light[2]) - 0.3      # toward the camera half-space, mostly
    light /= np.linalg.norm(light)
    ambient = rng.uniform(0.1, 0.4)

    points = [f.vertices @ rotation.T for f in faces]
    rods = [(b.p0 @ rotation.T, b.p1 @ rotation.T) for b in booms]
    everything = np.concatenate(points + [np.stack(r) for r in rods])[:, :2]
    lo, hi = everything.min(0), everything.max(0)
    extent = float((hi - lo).max())
    ss = 4 if size_px < 48 else 3 if size_px < 120 else 2
    scale = size_px * ss / extent
    margin = 2 * ss
    width = int(math.ceil((hi[0] - lo[0]) * scale)) + 2 * margin
    height = int(math.ceil((hi[1] - lo[1]) * scale)) + 2 * margin
    offset = np.array([margin, margin]) - lo * scale

    shade = np.zeros((height, width), np.float32)
    cover = np.zeros((height, width), np.float32)
    material = np.zeros((height, width), np.uint8)
    items = []
    for face, verts in zip(faces, points):
        normal = np.cross(verts[1] - verts[0], verts[2] - verts[0])
        norm = np.linalg.norm(normal)
        if norm < 1e-9:
            continue
        normal /= norm
        # Camera looks along +z: faces with normal z > 0 face away.
        facing = normal[2] < 0
        if not facing and not face.two_sided:
            continue
        if not facing:
            normal = -normal
        diffuse = max(0.0, float(-normal @ light))
        reflect = light - 2 * (light @ normal) * normal
        specular = max(0.0, float(-reflect[2])) ** 20 * (0.6 if face.material != FOIL else 0.3)
        value = face.albedo * (ambient + (1 - ambient) * diffuse) + specular
        items.append((float(verts[:, 2].mean()), 'face', face, verts, value))
    for (p0, p1), boom in zip(rods, booms):
        items.append((float((p0[2] + p1[2]) / 2), 'boom', boom, np.stack([p0, p1]),
                      boom.albedo * (ambient + 0.5)))
    items.sort(key=lambda item: -item[0])     # far (large z) first
    for _, kind, item, verts, value in items:
        xy = verts[:, :2] * scale + offset
        if kind == 'boom':
            thickness = max(1, int(round(item.radius * scale)))
            p0, p1 = (tuple(int(v) for v in np.round(p)) for p in xy)
            cv2.line(shade, p0, p1, value, thickness)
            cv2.line(cover, p0, p1, 1.0, thickness)
            cv2.line(material, p0, p1, PLAIN, thickness)
            continue
        polygon = np.round(xy * 16).astype(np.int32)
        cv2.fillConvexPoly(shade, polygon, value, cv2.LINE_8, 4)
        cv2.fillConvexPoly(cover, polygon, 1.0, cv2.LINE_8, 4)
        cv2.fillConvexPoly(material, polygon, item.material, cv2.LINE_8, 4)
        if item.material == CELLS and len(xy) == 4:
            rows, cols = item.grid
            line = value * 0.4 + 0.35
            thickness = max(1, int(round(ss * 0.5)))
            for t in np.linspace(0, 1, rows + 1)[1:-1]:
                a = xy[0] + (xy[3] - xy[0]) * t
                b = xy[1] + (xy[2] - xy[1]) * t
                cv2.line(shade, tuple(int(v) for v in a), tuple(int(v) for v in b), line,
                         thickness)
            for t in np.linspace(0, 1, cols + 1)[1:-1]:
                a = xy[0] + (xy[1] - xy[0]) * t
                b = xy[3] + (xy[2] - xy[3]) * t
                cv2.line(shade, tuple(int(v) for v in a), tuple(int(v) for v in b), line,
                         thickness)
    # Crinkled multi-layer insulation: blotchy multiplicative texture on foil.
    foil = material == FOIL
    if foil.any():
        blotch = rng.standard_normal((max(2, height // (3 * ss)), max(2, width // (3 * ss))))
        blotch = cv2.resize(blotch.astype(np.float32), (width, height),
                            interpolation=cv2.INTER_LINEAR)
        shade = np.where(foil, shade * (1 + 0.25 * blotch), shade)
    out_w, out_h = max(1, int(round(width / ss))), max(1, int(round(height / ss)))
    premultiplied = cv2.resize(shade * cover, (out_w, out_h), interpolation=cv2.INTER_AREA)
    coverage = cv2.resize(cover, (out_w, out_h), interpolation=cv2.INTER_AREA)
    intensity = premultiplied / np.maximum(coverage, 1e-6)
    design['size_px'] = round(float(size_px), 1)
    seen = cv2.resize(material, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    return Sprite(np.clip(intensity, 0, 1.5).astype(np.float32),
                  np.clip(coverage, 0, 1).astype(np.float32), design, seen)
