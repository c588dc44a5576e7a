"""The tile pool a run trains on: its scenes cut exactly as the ``Segmenter`` cuts frames.

Scenes (a dataset folder, or made on the fly by ``sat-seg synth``) are resized to each model
size with the runtime's ``resize`` and cut with the runtime's ``TileGrid`` into uint8 tiles and
soft masks.

A pool follows from its config, its seed and the data folder's files; pool_digest fingerprints
it, so that a resumed run knows whether it draws from the same tiles. With
``scene_teacher_weight`` it also holds a teacher's map of every scene, cut the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from sat_seg_ros.segmenter import Segmenter
from sat_seg_ros.tiling import resize, TileGrid
from sat_seg_training.train_config import TrainConfig

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Scene:
    """One scene and its mask at source resolution."""

    image: np.ndarray  # HxW uint8 (gray) or HxWx3 uint8 (RGB)
    mask: np.ndarray  # HxW bool


def _gray_uint8(image: np.ndarray) -> np.ndarray:
    import cv2

    from sat_seg_ros.tiling import to_float_pixels

    pixels = to_float_pixels(image)
    if pixels.ndim == 3:
        pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else cv2.cvtColor(
            np.ascontiguousarray(pixels[:, :, :3]), cv2.COLOR_RGB2GRAY)
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
    from sat_seg_ros.tiling import to_float_rgb

    return np.clip(to_float_rgb(image) + 0.5, 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class SynthSource:
    """What data 'synth' makes: `sat-seg synth`'s settings (see TrainConfig)."""

    backgrounds: str = ''
    exclude_backgrounds: str = ''
    photo_fraction: float = 0.6
    neg_frac: float = 0.2

    @classmethod
    def of(cls, config: 'TrainConfig') -> 'SynthSource':
        return cls(config.backgrounds, config.exclude_backgrounds, config.photo_fraction,
                   config.neg_frac)

    @functools.cached_property
    def paths(self) -> list:
        """The usable photographs (sorted; raises ValueError saying why there are none).

        Selected once per source: selecting reads every photograph.
        """
        if not self.backgrounds:
            return []
        from sat_seg_training.backgrounds import read_exclude_list, select_backgrounds

        exclude = Path(self.exclude_backgrounds) if self.exclude_backgrounds else None
        return select_backgrounds(Path(self.backgrounds), read_exclude_list(exclude))

    def jobs(self, count: int, seed: int, color: bool, paths: Sequence) -> list:
        """Return synth's jobs for scenes 0..count-1 of ``seed``.

        They make exactly the scenes `sat-seg synth --n count --seed seed` writes (the same
        photographs, the same colour).
        """
        from sat_seg_training.synth import negative_indices

        negatives = negative_indices(count, self.neg_frac, seed)
        share = self.photo_fraction if paths else 0.0
        return [(seed, index, index not in negatives, share, bool(color))
                for index in range(count)]


def _synth_scene(job, color: bool) -> Scene:
    """Make one synth scene (synth's worker bank must be set: synth._init_worker)."""
    from sat_seg_training import synth

    sample = synth._make(job)
    image = (_rgb_uint8 if color else _gray_uint8)(sample.image)
    mask = sample.mask if sample.mask is not None else np.zeros(image.shape[:2], bool)
    return Scene(image, np.asarray(mask, bool))


def load_scenes(source: str, count: int, seed: int, color: bool = False,
                synth: Optional[SynthSource] = None) -> List[Scene]:
    """Return scenes from 'shapes' (``count`` made with ``seed``), 'synth' or a dataset folder.

    Gray (HxW) by default; with ``color`` RGB (HxWx3, gray images as three equal channels).
    'synth' makes ``count`` scenes of ``seed`` as ``synth`` says (default: procedural only).
    """
    return list(iter_scenes(source, count, seed, color, synth))


def iter_scenes(source: str, count: int, seed: int, color: bool = False,
                synth: Optional[SynthSource] = None) -> Iterator[Scene]:
    """Yield load_scenes' scenes one at a time (a large training set is never all in memory).

    A dataset record with a bbox but no mask is refused before any image is read.
    """
    convert = _rgb_uint8 if color else _gray_uint8
    if source == 'synth':
        from sat_seg_training import synth as synth_module

        synth = synth or SynthSource()
        paths = synth.paths
        synth_module._init_worker(paths)
        for job in synth.jobs(count, seed, color, paths):
            yield _synth_scene(job, color)
        return
    if source == 'shapes':
        from sat_seg_training.shapes import make_scene

        rng = np.random.default_rng(seed)
        for index in range(count):
            image, mask = make_scene(rng, positive=index % 5 != 4)
            yield Scene(convert(image), mask)
        return
    from sat_seg_training.dataset import load_dataset

    dataset = load_dataset(source)
    records = list(dataset)[:count] if count > 0 else list(dataset)
    for record in records:
        if record.missing_mask:
            raise ValueError('%s has a bbox but no mask; training needs masks (run sat-seg label '
                             'first)' % record.file_name)
    for record in records:
        image = convert(record.read_image())
        mask = record.read_mask() if record.positive else np.zeros(image.shape[:2], bool)
        yield Scene(image, mask)


@dataclasses.dataclass
class TilePool:
    """Tiles of every scene at every model size: uint8 images and soft uint8 masks."""

    tiles: np.ndarray  # (N, t, t) uint8 gray, or (N, t, t, 3) RGB with input_color 'rgb'
    masks: np.ndarray  # (N, t, t) uint8, 255 = satellite (area-averaged at the tile's scale)
    size_index: np.ndarray  # (N,) index into model_sizes
    positive: np.ndarray  # (N,) bool
    object_px: np.ndarray  # (N,) float32: its scene's satellite pixels at its model size
    # scene_teacher_weight > 0: (N, t, t) uint8, the teacher's probability x 255 (its map of
    # the whole scene, cut like the mask); else None
    teacher: Optional[np.ndarray] = None


#: glibc mmap thresholds: small while the tile pool is built, large while training.
POOL_MMAP_THRESHOLD = 128 * 1024
TRAIN_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit


def _set_mmap_threshold(size: int) -> None:
    """Set glibc's M_MMAP_THRESHOLD (a no-op where glibc is absent).

    While the pool is built, a 128 KB threshold serves the thousands of ~300 KB scene and tile
    arrays from mmap, so freed ones leave the process: with glibc's adaptive threshold it kept
    ~10 GB resident for a ~4 GB pool (measured). Training must not keep it: every activation
    then costs an mmap, page faults and an munmap, and a sat-p16 step took 1.19 s instead of
    0.61 s (measured); 32 MB after the build gives the heap's reuse back.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library('c')
    if name is None:
        return
    try:
        ctypes.CDLL(name).mallopt(-3, int(size))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _concatenate_consuming(parts: List[np.ndarray]) -> np.ndarray:
    """``np.concatenate(parts)``, emptying ``parts`` as it copies, so the peak is one copy."""
    out = np.empty((sum(len(part) for part in parts),) + parts[0].shape[1:], parts[0].dtype)
    start = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        out[start:start + len(part)] = part
        start += len(part)
    return out


def build_pool(scenes: Iterable[Scene], config: TrainConfig, seed: int) -> TilePool:
    """Cut every scene at each model size like the Segmenter and return the tile pool.

    All tiles with satellite pixels are kept, and up to ``negatives_per_scene`` empty ones per
    scene and size. ``scenes`` may be an iterator (``iter_scenes``): only the tiles are kept.
    With ``size_jitter`` > 1 each scene and size is cut at the size times a random factor (see
    TrainConfig); its tiles keep the nominal size's index.
    """
    rng = np.random.default_rng(seed)
    # Its own stream, so that jitter off leaves the pool exactly as before it existed.
    jitter_rng = np.random.default_rng([seed, 1])
    teacher = load_scene_teacher(config)
    parts = [cut_scene(scene, config, rng, jitter_rng, scene_teacher_map(teacher, scene, config))
             for scene in scenes]
    return _join_parts(parts, 'no training scenes: the data folder holds no images')


def load_scene_teacher(config: TrainConfig, threads: int = 0) -> Optional[Segmenter]:
    """Return the Segmenter that maps the pool's scenes (scene_teacher_weight > 0), else None.

    ``threads`` > 0 sets torch's threads first (a pool worker process: one each).
    """
    if config.scene_teacher_weight <= 0:
        return None
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    return Segmenter.from_model(config.scene_teacher or None,
                                mode=config.scene_teacher_mode or None)


def scene_teacher_map(teacher: Optional[Segmenter], scene: Scene,
                      config: TrainConfig) -> Optional[np.ndarray]:
    """Return ``teacher``'s HxW float32 probability of ``scene`` (None without a teacher)."""
    if teacher is None:
        return None
    image = scene.image
    if config.scene_teacher_luma and image.ndim == 3:
        image = _gray_uint8(image)
    return teacher.probability(image)


def cut_scene(scene: Scene, config: TrainConfig, rng: np.random.Generator,
              jitter_rng: np.random.Generator, teacher_map: Optional[np.ndarray] = None
              ) -> tuple:
    """Cut one scene at each model size; return its (tiles, masks, sizes, positive, object_px).

    ``rng`` picks the empty tiles kept, ``jitter_rng`` the jittered sizes (see build_pool).
    ``teacher_map`` (HxW probabilities of the scene): cut like the mask into a sixth part,
    (N, t, t) uint8 probability x 255.
    """
    log_jitter = math.log(config.size_jitter)
    tiles, masks, sizes, positive, object_px, taught = [], [], [], [], [], []
    t = config.tile_size
    for size_index, nominal in enumerate(config.model_sizes):
        size = nominal
        if log_jitter > 0:
            factor = math.exp(jitter_rng.uniform(-log_jitter, log_jitter))
            size = max(t, int(round(nominal * factor)))
        grid = TileGrid(size, size, t, 0)
        image = resize(scene.image, size, size)
        mask = resize(scene.mask.astype(np.float32), size, size)
        image_tiles = grid.cut(image)
        mask_tiles = np.clip(grid.cut(mask) * 255 + 0.5, 0, 255).astype(np.uint8)
        pixels = (mask_tiles >= 128).reshape(len(mask_tiles), -1).sum(1)
        is_pos = pixels >= config.min_object_px
        empty = np.flatnonzero(~is_pos)
        keep = np.concatenate([np.flatnonzero(is_pos), rng.permutation(empty)[
            :config.negatives_per_scene]])
        tiles.append(image_tiles[keep])
        masks.append(mask_tiles[keep])
        sizes.append(np.full(len(keep), size_index))
        positive.append(is_pos[keep])
        object_px.append(np.full(len(keep), float(mask.sum()), np.float32))
        if teacher_map is not None:
            soft = grid.cut(resize(teacher_map.astype(np.float32), size, size))
            taught.append(np.clip(soft[keep] * 255 + 0.5, 0, 255).astype(np.uint8))
    parts = (np.concatenate(tiles), np.concatenate(masks), np.concatenate(sizes),
             np.concatenate(positive), np.concatenate(object_px))
    return parts + (np.concatenate(taught),) if taught else parts


def _join_parts(parts: List[tuple], empty_message: str) -> TilePool:
    if not parts:
        raise ValueError(empty_message)
    columns = [list(column) for column in zip(*parts)]
    parts.clear()  # the tiles are held once, in columns, while they are joined
    teacher = _concatenate_consuming(columns[5]) if len(columns) > 5 else None
    return TilePool(_concatenate_consuming(columns[0]), _concatenate_consuming(columns[1]),
                    np.concatenate(columns[2]), np.concatenate(columns[3]),
                    np.concatenate(columns[4]), teacher)


_POOL_WORKER: Dict[str, Any] = {}


def _init_pool_worker(paths, config: Dict[str, Any], threads: int = 0) -> None:
    from sat_seg_training import synth

    synth._init_worker(paths)
    _POOL_WORKER['config'] = TrainConfig(**config)
    _POOL_WORKER['teacher'] = load_scene_teacher(_POOL_WORKER['config'], threads)


def _synth_part(job) -> tuple:
    config = _POOL_WORKER['config']
    seed, index = job[0], job[1]
    scene = _synth_scene(job, config.input_color == 'rgb')
    # Streams of the scene's own (not one running through the set as build_pool's), so the
    # pool does not depend on how the scenes are shared between processes.
    return cut_scene(scene, config, np.random.default_rng([seed, index, 5]),
                     np.random.default_rng([seed, index, 6]),
                     scene_teacher_map(_POOL_WORKER['teacher'], scene, config))


def build_synth_pool(config: TrainConfig, progress: bool = False,
                     synth: Optional[SynthSource] = None) -> TilePool:
    """Make data 'synth''s ``scenes`` scenes and cut them into the tile pool.

    ``data_workers`` processes each make and cut whole scenes (a scene is never written to
    disk); the pool is identical whatever their number. ``synth``: the config's source, when
    the caller has one (its photographs are then not selected again).
    """
    synth = synth or SynthSource.of(config)
    paths = synth.paths
    jobs = synth.jobs(config.scenes, config.seed, config.input_color == 'rgb', paths)
    settings = dataclasses.asdict(config)
    workers = max(1, min(config.data_workers, len(jobs)))
    if workers == 1:
        _init_pool_worker(paths, settings)
        parts = [_synth_part(job) for job in jobs]
    else:
        import multiprocessing

        with multiprocessing.get_context('spawn').Pool(
                workers, _init_pool_worker, (paths, settings, 1)) as pool:
            parts = []
            for part in pool.imap(_synth_part, jobs, chunksize=4):
                parts.append(part)
                if progress and len(parts) % 500 == 0:
                    LOG.info('synth pool: %d of %d scenes', len(parts), len(jobs))
    return _join_parts(parts, 'no training scenes')


POOL_ROUND_SEED = 100_000  # renew_pool_every: round r's scenes are those of seed + r * this


def make_training_pool(config: TrainConfig, pool_round: int = 0, progress: bool = False,
                       synth: Optional[SynthSource] = None) -> TilePool:
    """Cut the tile pool of round ``pool_round`` of a run (0: the config's own seed)."""
    if pool_round:
        config = dataclasses.replace(config, seed=config.seed + POOL_ROUND_SEED * pool_round)
    if config.data == 'synth':
        return build_synth_pool(config, progress=progress, synth=synth)
    return build_pool(iter_scenes(config.data, config.scenes, config.seed,
                                  config.input_color == 'rgb'), config, config.seed)


def pool_digest(pool: TilePool) -> str:
    """Return a short SHA-256 of the pool's tiles, masks and sizes (what a step can draw)."""
    import hashlib

    digest = hashlib.sha256()
    for array in (pool.tiles, pool.masks, pool.size_index, pool.positive):
        digest.update(np.ascontiguousarray(array).data)
    if pool.teacher is not None:  # pools without a teacher keep their digests
        digest.update(np.ascontiguousarray(pool.teacher).data)
    return digest.hexdigest()[:16]
