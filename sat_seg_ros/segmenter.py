"""The report's inference recipe on numpy frames: resize, tile, SAM, stitch, threshold, components.

One implementation serves the ROS node, ``sat-seg infer``, evaluation, the rosbag tools and
training-time validation. No ROS import here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from sat_seg_ros.backends import Backend, create_backend
from sat_seg_ros.config import (check_fuse_gate, check_fuse_max_tiles, check_threshold,
                                info_for_size, load_model_info, resolve_model_dir,
                                SegmenterConfig)
from sat_seg_ros.postprocess import Detection, find_detections
from sat_seg_ros.tiling import check_frame, resize, TileGrid, to_float_pixels, to_luma

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Result:
    """Segmentation of one frame, at the frame's own height and width.

    ``probability`` is HxW float32 in [0, 1]; ``mask`` HxW bool (components below
    ``min_area_px`` removed); ``timings`` seconds per stage; ``tiles`` how many tiles went
    through the model (each counted once whatever its ``flips`` views; with ``fuse_gate``
    it varies from frame to frame).
    """

    probability: np.ndarray
    mask: np.ndarray
    detections: List[Detection]
    detected: bool
    timings: Dict[str, float]
    tiles: int = 0


#: Per ``flips`` setting, the views of a tile: (mirror rows, mirror columns).
FLIP_VIEWS = {1: ((False, False),),
              2: ((False, False), (False, True)),
              4: ((False, False), (False, True), (True, False), (True, True))}


def _mirror(array: np.ndarray, view) -> np.ndarray:
    """Mirror (N, t, t, ...) tiles or maps along rows and/or columns; its own inverse."""
    rows, columns = view
    return array[:, slice(None, None, -1 if rows else 1), slice(None, None, -1 if columns else 1)]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function, float32."""
    return (0.5 * (np.tanh(0.5 * logits.astype(np.float32)) + 1.0)).astype(np.float32)


class Segmenter:
    """Segments satellites in frames of any size with a tiled SAM backend."""

    def __init__(self, backend: Backend, config: SegmenterConfig,
                 model_info: Optional[dict] = None) -> None:
        self.backend = backend
        self.model_info = dict(model_info or {})
        self.config = config.resolved(self.model_info)
        size = self.config.model_size
        self.grid = TileGrid(size, size, self.config.tile_size, self.config.tile_overlap)
        self.fuse_grids = [TileGrid(other, other, self.config.tile_size, self.config.tile_overlap)
                           for other in self.config.fuse_sizes]

    @classmethod
    def from_model(cls, model_dir: Optional[os.PathLike | str] = None, backend: str = 'torch',
                   device: str = 'cpu', backend_options: Optional[dict] = None,
                   mode: Optional[str] = None, **overrides) -> 'Segmenter':
        """Load ``model_dir`` (None: the bundled default) with ``backend``.

        ``overrides`` are SegmenterConfig fields; fields not given come from the model's
        ``sat_seg.json`` (its ``by_model_size`` entry for the model size and fusion in use,
        where there is one, or the named ``mode``'s entry: config.info_for_size), then from
        the package defaults.
        """
        model_dir = resolve_model_dir(model_dir)
        info = load_model_info(model_dir)
        info = info_for_size(info, overrides.get('model_size') or info['model_size'],
                             overrides.get('fuse_sizes'), mode)
        if info.get('warning'):  # e.g. a model whose provenance says it is not fit for use
            LOG.warning('model %s: %s', model_dir, info['warning'])
        fields = {field.name for field in dataclasses.fields(SegmenterConfig)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError('unknown Segmenter setting(s) %s; known: %s'
                             % (unknown, sorted(fields)))
        values = {name: info[name] for name in fields if name in info}
        values.update({name: value for name, value in overrides.items() if value is not None})
        config = SegmenterConfig(**values).resolved(info)
        idle = [name for name in ('fuse_gate', 'fuse_max_tiles') if overrides.get(name)]
        if idle and not config.fuse_sizes:
            LOG.warning('%s given, but no further model size is fused at model size %d (set '
                        'fuse_sizes, or pick a mode that fuses): it has no effect',
                        ' and '.join(idle), config.model_size)
        runtime = create_backend(backend, model_dir, device=device,
                                 prompt_mode=config.prompt_mode, grid_points=config.grid_points,
                                 **(backend_options or {}))
        return cls(runtime, config, info)

    def set_threshold(self, value: float) -> None:
        """Change the probability threshold (strictly between 0 and 1)."""
        self.config.threshold = check_threshold(value)

    def set_seed_threshold(self, value: Optional[float]) -> None:
        """Change the peak a component needs to count (strictly between 0 and 1; None: none)."""
        self.config.seed_threshold = None if value is None else check_threshold(
            value, 'seed_threshold')

    def set_fuse_gate(self, value: float) -> None:
        """Change the fused tiles' gate (0: every tile runs; else a probability below 1)."""
        self.config.fuse_gate = check_fuse_gate(value)

    def set_fuse_max_tiles(self, value: int) -> None:
        """Change the cap on the fused sizes' tiles per frame (0: no cap)."""
        self.config.fuse_max_tiles = check_fuse_max_tiles(value)

    def set_min_area(self, value: int) -> None:
        """Change the smallest component area, in pixels of the input frame (>= 0)."""
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError('min_area_px=%r must be an integer >= 0' % (value,))
        self.config.min_area_px = value

    def set_max_detections(self, value: int) -> None:
        """Change how many components are kept, highest score first (0 = all)."""
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError('max_detections=%r must be an integer >= 0 (0 = all)' % (value,))
        self.config.max_detections = value

    def model_tiles(self, image: np.ndarray, grid: Optional[TileGrid] = None) -> np.ndarray:
        """Return the frame's tiles at the model size (or ``grid``'s), float32 0..255.

        (N, t, t, 3) for colour frames, (N, t, t, 1) for gray ones: the backends replicate gray
        to SAM's three channels during normalisation, a third of the resizing and cutting work.
        With ``input_color`` 'luma' colour frames become gray (their luminance) first.
        """
        return self._cut(self._pixels(image), self.grid if grid is None else grid)

    def _pixels(self, image: np.ndarray) -> np.ndarray:
        """Return the frame as the model takes it: float32 0..255, HxW (gray) or HxWx3."""
        check_frame(image)
        pixels = to_float_pixels(image)
        if pixels.ndim == 3 and pixels.shape[2] == 4:
            pixels = pixels[:, :, :3]
        if pixels.ndim == 3 and pixels.shape[2] == 1:
            pixels = pixels[:, :, 0]
        if pixels.ndim == 3 and self.config.input_color == 'luma':
            pixels = to_luma(pixels)
        return pixels

    @staticmethod
    def _cut(pixels: np.ndarray, grid: TileGrid, run: Optional[np.ndarray] = None
             ) -> np.ndarray:
        """Cut ``grid``'s tiles of the frame's ``pixels`` (only those where ``run``, if given)."""
        resized = resize(pixels, grid.height, grid.width)
        if resized.ndim == 2:
            resized = resized[:, :, None]
        return grid.cut(resized, run)

    def tile_logits(self, tiles: np.ndarray) -> np.ndarray:
        """Run every tile through the backend in batches of ``batch_size``: (N, t, t) logits."""
        step = self.config.batch_size
        return np.concatenate([self.backend.predict(tiles[start:start + step])
                               for start in range(0, len(tiles), step)])

    def tile_probabilities(self, tiles: np.ndarray) -> np.ndarray:
        """(N, t, t) probabilities, each the mean over the tile's ``flips`` mirrored views.

        All views go to the backend together (one batch stream), and each view's output is
        mirrored back before averaging.
        """
        views = FLIP_VIEWS[self.config.flips]
        batch = tiles if len(views) == 1 else np.concatenate([_mirror(tiles, v) for v in views])
        probabilities = sigmoid(self.tile_logits(batch))
        if len(views) == 1:
            return probabilities
        count = len(tiles)
        return np.mean([_mirror(probabilities[index * count:(index + 1) * count], view)
                        for index, view in enumerate(views)], axis=0, dtype=np.float32)

    def probability(self, image: np.ndarray, timings: Optional[Dict[str, float]] = None
                    ) -> np.ndarray:
        """Return the HxW float32 satellite probability of ``image`` (any supported frame).

        With ``fuse_sizes`` the frame also runs at each further model size, and the maps, each
        resized back to the frame, are averaged; ``timings`` sums the stages over the sizes.
        With ``fuse_gate`` a further size runs only the tiles over which the model size's map
        peaks above the gate, and ``fuse_max_tiles`` caps their number (:meth:`fused_tiles`).
        """
        return self.probability_and_tiles(image, timings)[0]

    def region_peaks(self, grid: TileGrid, base: np.ndarray) -> np.ndarray:
        """Return, per tile of ``grid``, the peak of ``base`` under it.

        ``base`` is the model size's map at the frame's resolution; a tile's part of the frame
        is where its pixels come from.
        """
        height, width = base.shape
        t = grid.tile_size
        peaks = np.empty(len(grid), np.float32)
        for index, (y, x) in enumerate(grid.origins):
            # The frame pixels the tile's pixels come from (outward: floor, ceiling).
            rows = slice(y * height // grid.height, -(-min(y + t, grid.height) * height
                                                      // grid.height))
            columns = slice(x * width // grid.width, -(-min(x + t, grid.width) * width
                                                       // grid.width))
            peaks[index] = base[rows, columns].max()
        return peaks

    def fused_tiles(self, base: np.ndarray) -> List[Optional[np.ndarray]]:
        """Return, per fused grid, which of its tiles run, given the model size's map ``base``.

        None for a grid whose tiles all run, else a bool per tile. With ``fuse_gate`` a tile
        runs where ``base`` peaks above the gate over the part of the frame it covers; with
        ``fuse_max_tiles`` only that many of those run, all fused sizes together, the highest
        peaks first (ties: the earlier fused size, then the tile order).
        """
        gate, cap = self.config.fuse_gate, self.config.fuse_max_tiles
        if gate <= 0 and cap <= 0:
            return [None] * len(self.fuse_grids)
        peaks = [self.region_peaks(grid, base) for grid in self.fuse_grids]
        runs = [peak > gate if gate > 0 else np.ones(len(peak), bool) for peak in peaks]
        if 0 < cap < sum(int(run.sum()) for run in runs):
            candidates = np.concatenate([np.where(run, peak, -np.inf)
                                         for run, peak in zip(runs, peaks)])
            keep = np.zeros(len(candidates), bool)
            keep[np.argsort(-candidates, kind='stable')[:cap]] = True
            runs = np.split(keep, np.cumsum([len(peak) for peak in peaks])[:-1])
        return [None if run.all() else run for run in runs]

    def probability_and_tiles(self, image: np.ndarray,
                              timings: Optional[Dict[str, float]] = None
                              ) -> Tuple[np.ndarray, int]:
        """Return the frame's probability map and how many tiles the model ran for it."""
        timings = {} if timings is None else timings
        for stage in ('preprocess', 'model', 'stitch'):
            timings[stage] = 0.0
        start = time.perf_counter()
        pixels = self._pixels(image)  # once for every size
        timings['preprocess'] += time.perf_counter() - start
        base, count = self._size_map(pixels, self.grid, None, None, timings)
        if not self.fuse_grids:
            return base, count
        maps = [base]
        for grid, run in zip(self.fuse_grids, self.fused_tiles(base)):
            fused, ran = self._size_map(pixels, grid, run, base, timings)
            maps.append(fused)
            count += ran
        start = time.perf_counter()
        probability = np.mean(maps, axis=0, dtype=np.float32)
        timings['stitch'] += time.perf_counter() - start
        return probability, count

    def _size_map(self, pixels: np.ndarray, grid: TileGrid, run: Optional[np.ndarray],
                  base: Optional[np.ndarray], timings: Dict[str, float]
                  ) -> Tuple[np.ndarray, int]:
        """Return ``grid``'s map at the frame's resolution and how many tiles ran for it.

        ``pixels`` is the frame from :meth:`_pixels`. ``run`` (None: every tile) says which
        tiles run, and only those are cut; the others take ``base``'s values.
        """
        height, width = pixels.shape[:2]
        start = time.perf_counter()
        tiles = self._cut(pixels, grid, run)
        tiled = time.perf_counter()
        ran = self.tile_probabilities(tiles) if len(tiles) else None
        inferred = time.perf_counter()
        if run is None:
            probabilities = ran
        else:
            # Tiles left out take the model size's map: the mean there is that map.
            probabilities = grid.cut(resize(base, grid.height, grid.width,
                                            interpolation=cv2.INTER_LINEAR))
            if ran is not None:
                probabilities[run] = ran
        size_map = resize(grid.stitch(probabilities), height, width,
                          interpolation=cv2.INTER_LINEAR)
        timings['preprocess'] += tiled - start
        timings['model'] += inferred - tiled
        timings['stitch'] += time.perf_counter() - inferred
        return size_map, len(tiles)

    def segment(self, image: np.ndarray) -> Result:
        """Segment one frame: HxW or HxWx{1,3,4}, uint8 / uint16 / bool / float in [0, 1]."""
        timings: Dict[str, float] = {}
        probability, tiles = self.probability_and_tiles(image, timings)
        start = time.perf_counter()
        detections, mask = find_detections(probability, probability > self.config.threshold,
                                           self.config.min_area_px,
                                           self.config.max_detections,
                                           self.config.seed_threshold)
        timings['postprocess'] = time.perf_counter() - start
        timings['total'] = sum(timings.values())
        return Result(probability, mask, detections, bool(detections), timings, tiles)

    def close(self) -> None:
        """Release the backend's resources."""
        self.backend.close()
