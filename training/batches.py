"""Training batches: which pool tiles a step draws, and the augmentation they get.

Two implementations of the same sampling and augmentation: numpy, tile by tile on the CPU
(``sample_batch``: what every run of pipeline 'numpy' draws), and torch, a whole batch at once
on the training device (``sample_ids_vectorized``, ``augment_torch``, ``preprocess_torch``:
pipeline 'torch'). Arrays in, arrays out; the pool and config are tile_pool.TilePool and
train_config.TrainConfig, read by attribute only.
"""

from __future__ import annotations

from typing import Dict, Optional, TYPE_CHECKING

import numpy as np

from sat_seg_ros.tiling import to_luma

if TYPE_CHECKING:  # train imports this module
    from sat_seg_training.tile_pool import TilePool
    from sat_seg_training.train_config import TrainConfig


def sample_ids(pool: TilePool, config: TrainConfig, rng: np.random.Generator,
               hardness: Optional[np.ndarray] = None) -> np.ndarray:
    """Return the pool indices of one batch (B,).

    Each row is positive with probability ``positive_fraction``, at a model size drawn by
    ``size_weights``. A negative row is, with probability ``hard_negative_fraction``, drawn in
    proportion to ``hardness`` (the model's last peak probability on each pool tile) instead of
    uniformly: the background the model fires on comes back until it stops firing. A positive
    row is, with probability ``hard_positive_fraction``, drawn in proportion to ``hardness``
    (there: the model's last miss score on the tile, see TrainConfig), else with weight
    ``object_px ** -small_object_power`` (uniformly at power 0).
    """
    weights = np.asarray(config.size_weights, np.float64)
    weights = weights / weights.sum()
    chosen = []
    pos_ids = np.flatnonzero(pool.positive)
    neg_ids = np.flatnonzero(~pool.positive)
    for _ in range(config.batch_size):
        want_pos = rng.random() < config.positive_fraction
        ids = pos_ids if (want_pos and len(pos_ids)) or not len(neg_ids) else neg_ids
        negative = ids is neg_ids
        size_index = rng.choice(len(weights), p=weights)
        in_size = ids[pool.size_index[ids] == size_index]
        ids = in_size if len(in_size) else ids
        hard = config.hard_negative_fraction if negative else config.hard_positive_fraction
        # A negative row always draws its coin (as before hard positives existed); a positive
        # one only when hard positives are on, so older runs keep their random streams.
        if (hardness is not None and (negative or hard > 0) and rng.random() < hard):
            score = hardness[ids].astype(np.float64) + 1e-3
            chosen.append(int(rng.choice(ids, p=score / score.sum())))
        elif not negative and config.small_object_power > 0:
            score = np.maximum(pool.object_px[ids].astype(np.float64), 1.0) ** (
                -config.small_object_power)
            chosen.append(int(rng.choice(ids, p=score / score.sum())))
        else:
            chosen.append(int(rng.choice(ids)))
    return np.asarray(chosen, np.int64)


def pool_groups(pool: TilePool, sizes: int) -> Dict[tuple, np.ndarray]:
    """Return the pool indices of each (positive, size index) group, for sample_ids_vectorized.

    An empty group falls back to all tiles of its kind (as sample_ids does), and a kind the pool
    lacks to the other one.
    """
    groups = {}
    for positive in (True, False):
        kind = np.flatnonzero(pool.positive == positive)
        if not len(kind):
            kind = np.arange(len(pool.positive))
        for size_index in range(sizes):
            in_size = kind[pool.size_index[kind] == size_index]
            groups[positive, size_index] = in_size if len(in_size) else kind
    return groups


def sample_ids_vectorized(pool: TilePool, config: TrainConfig, rng: np.random.Generator,
                          hardness: Optional[np.ndarray], groups: Dict[tuple, np.ndarray]
                          ) -> np.ndarray:
    """Return a batch's pool indices (B,) as sample_ids draws them, in one pass per group.

    The same distribution as sample_ids (positive_fraction, size_weights, hard and small-object
    weights), not the same draws: each (positive, size) group's rows are drawn together, so a
    batch costs a few passes over the pool instead of one per row (pipeline 'torch').
    """
    count = config.batch_size
    weights = np.asarray(config.size_weights, np.float64)
    weights = weights / weights.sum()
    want_positive = rng.random(count) < config.positive_fraction
    if not pool.positive.any():
        want_positive[:] = False
    elif pool.positive.all():
        want_positive[:] = True
    size = rng.choice(len(weights), size=count, p=weights)
    coin = rng.random(count)
    chosen = np.empty(count, np.int64)
    for (positive, size_index), ids in groups.items():
        rows = np.flatnonzero((want_positive == positive) & (size == size_index))
        if not len(rows):
            continue
        share = config.hard_positive_fraction if positive else config.hard_negative_fraction
        hard = coin[rows] < share if hardness is not None else np.zeros(len(rows), bool)
        if hard.any():
            score = hardness[ids].astype(np.float64) + 1e-3
            chosen[rows[hard]] = rng.choice(ids, int(hard.sum()), p=score / score.sum())
        easy = rows[~hard]
        if len(easy) and positive and config.small_object_power > 0:
            score = np.maximum(pool.object_px[ids].astype(np.float64), 1.0) ** (
                -config.small_object_power)
            chosen[easy] = rng.choice(ids, len(easy), p=score / score.sum())
        elif len(easy):
            chosen[easy] = rng.choice(ids, len(easy))
    return chosen


#: Rec. 601 luminance weights, tiling.to_luma's (OpenCV's), for tiles that are torch tensors.
LUMA_601 = (0.299, 0.587, 0.114)


def augment_torch(tiles, masks, generator, invert_probability: float,
                  gray_fraction: float = 0.2, color_gain: float = 0.1,
                  channel_gamma: float = 0.0, keep_colour: bool = False):
    """augment()'s transforms on a batch of torch tensors, all tiles at once (pipeline 'torch').

    ``tiles`` (B, s, s) or (B, s, s, 3) float 0..255 and ``masks`` (B, s, s) on one device;
    ``generator`` a torch.Generator on it. The same transforms and ranges as augment (dihedral
    flips, inversion, gamma, contrast and brightness, sensor noise; colour: channel gains and
    gray tiles), drawn from the generator. ``keep_colour``: also return the tiles as they were
    just before any became gray, and which did, (B,) bool, as augment does.
    """
    import torch

    count, device = len(tiles), tiles.device
    colour = tiles.ndim == 4

    def uniform(low, high, *shape):
        return torch.rand((count,) + shape, generator=generator, device=device) * (
            high - low) + low

    def per_tile(values):  # (B,) -> (B, 1, 1[, 1]); colour gains (B, 3) -> (B, 1, 1, 3)
        if values.ndim == 2:
            return values.view(count, 1, 1, values.shape[1])
        return values.view((count,) + (1,) * (3 if colour else 2))

    turns = torch.randint(0, 4, (count,), generator=generator, device=device)
    mirror = uniform(0, 1) < 0.5
    tiles, masks = tiles.clone(), masks.clone()
    for quarter in range(1, 4):
        rows = torch.nonzero(turns == quarter).flatten()
        if len(rows):
            tiles[rows] = torch.rot90(tiles[rows], quarter, (1, 2))
            masks[rows] = torch.rot90(masks[rows], quarter, (1, 2))
    rows = torch.nonzero(mirror).flatten()
    if len(rows):
        tiles[rows] = tiles[rows].flip(2)
        masks[rows] = masks[rows].flip(2)
    tiles = tiles / 255.0
    invert = uniform(0, 1) < invert_probability
    tiles = torch.where(per_tile(invert), 1.0 - tiles, tiles)
    tiles = tiles.clamp(0, 1) ** per_tile(torch.exp(uniform(-0.4, 0.4)))
    mean = tiles.mean(dim=tuple(range(1, tiles.ndim)))
    tiles = ((tiles - per_tile(mean)) * per_tile(uniform(0.7, 1.3)) + per_tile(mean)
             + per_tile(uniform(-0.1, 0.1)))
    noise = torch.randn(tiles.shape, generator=generator, device=device)
    tiles = tiles + noise * per_tile(uniform(0, 0.02))
    if colour:
        tiles = tiles * per_tile(uniform(1 - color_gain, 1 + color_gain, 3))
        gray = uniform(0, 1) < gray_fraction
        if channel_gamma > 0:
            tiles = tiles.clamp(0, 1) ** per_tile(torch.exp(uniform(-channel_gamma,
                                                                    channel_gamma, 3)))
        luma = (tiles * torch.tensor(LUMA_601, device=device, dtype=tiles.dtype)).sum(
            -1, keepdim=True)
        before = tiles
        tiles = torch.where(per_tile(gray), luma.expand_as(tiles), tiles)
    else:
        before, gray = tiles, torch.zeros(count, dtype=torch.bool, device=device)
    if keep_colour:
        return tiles.clamp(0, 1) * 255.0, masks, before.clamp(0, 1) * 255.0, gray
    return tiles.clamp(0, 1) * 255.0, masks


def preprocess_torch(tiles, input_size: int):
    """preprocess_tiles for a torch batch (B, t, t[, 3]) 0..255 on any device: (B, 3, S, S)."""
    import torch

    from sat_seg_ros.backends import PIXEL_MEAN, PIXEL_STD

    pixels = (tiles[..., None] if tiles.ndim == 3 else tiles).permute(0, 3, 1, 2)
    if pixels.shape[-1] != input_size:
        pixels = torch.nn.functional.interpolate(pixels, size=(input_size, input_size),
                                                 mode='bilinear', align_corners=False)
    mean = torch.as_tensor(PIXEL_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.as_tensor(PIXEL_STD, device=pixels.device).view(1, 3, 1, 1)
    return ((pixels - mean) / std).contiguous(memory_format=torch.channels_last)


def miss_scores(logits, truth, near):
    """Return (N,) float32 CPU tensor: 1 - p_sat * (1 - p_bg) per tile (see TrainConfig).

    ``logits`` (N, P), ``truth`` (N, P) bool satellite pixels, ``near`` (N, P) bool pixels
    near a satellite (not background). A tile without satellite pixels scores 1 - 0 = 1; one
    without background far from the satellite has p_bg = 0.
    """
    import torch

    low = torch.finfo(logits.dtype).min
    satellite = torch.sigmoid(logits.masked_fill(~truth, low).amax(1))
    background = torch.sigmoid(logits.masked_fill(near | truth, low).amax(1))
    return (1 - satellite * (1 - background)).float().cpu()


def sample_batch(pool: TilePool, config: TrainConfig, rng: np.random.Generator,
                 hardness: Optional[np.ndarray] = None, keep_colour: bool = False):
    """Return (tiles (B, s, s) float32 0..255, masks (B, s, s) float32 0..1, pool ids (B,)).

    ``s`` is the tile size, or ``crop_size`` for stage 'dense' (see :func:`crop_batch`).
    ``keep_colour`` (colour tiles, augmented): also the tiles before graying and which became
    gray, as :func:`augment` returns them. A pool with a teacher channel (scene_teacher_weight)
    gives masks (B, s, s, 2): the mask and the teacher's probability, turned and mirrored
    together.
    """
    chosen = sample_ids(pool, config, rng, hardness)
    tiles = pool.tiles[chosen]
    masks = pool.masks[chosen]
    if pool.teacher is not None:
        masks = np.stack([masks, pool.teacher[chosen]], -1)
    if config.stage == 'dense':
        tiles, masks = crop_batch(tiles, masks, config.crop_size, rng)
    tiles = tiles.astype(np.float32)
    masks = masks.astype(np.float32) / 255.0
    kept = []
    if config.augment:
        tiles, masks, *kept = augment(tiles, masks, rng, config.invert_probability,
                                      config.gray_fraction, config.color_gain,
                                      config.channel_gamma, keep_colour)
    elif keep_colour:
        raise ValueError('keep_colour needs augment: only augmentation makes gray tiles')
    return (tiles, masks, chosen, *kept)


def crop_batch(tiles: np.ndarray, masks: np.ndarray, size: int, rng: np.random.Generator):
    """Cut a size x size crop from each tile: around a random satellite pixel where it has one.

    A tile with satellite pixels gets a crop that holds one of them (drawn uniformly, so large
    satellites are seen in parts); an empty tile a uniformly placed crop.
    """
    t = tiles.shape[1]
    out_tiles = np.empty((len(tiles), size, size) + tiles.shape[3:], tiles.dtype)
    out_masks = np.empty((len(tiles), size, size), masks.dtype)
    for index in range(len(tiles)):
        ys, xs = np.nonzero(masks[index] >= 128)
        if len(xs):
            pick = int(rng.integers(len(xs)))
            y, x = int(ys[pick]), int(xs[pick])
            y0 = int(rng.integers(max(0, y - size + 1), min(y, t - size) + 1))
            x0 = int(rng.integers(max(0, x - size + 1), min(x, t - size) + 1))
        else:
            y0, x0 = (int(v) for v in rng.integers(0, t - size + 1, 2))
        out_tiles[index] = tiles[index, y0:y0 + size, x0:x0 + size]
        out_masks[index] = masks[index, y0:y0 + size, x0:x0 + size]
    return out_tiles, out_masks


def augment(tiles: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
            invert_probability: float, gray_fraction: float = 0.2, color_gain: float = 0.1,
            channel_gamma: float = 0.0, keep_colour: bool = False):
    """Dihedral flips, contrast/brightness/gamma, inversion and sensor noise (per tile).

    The random draws do not depend on ``invert_probability``, ``gray_fraction`` or
    ``color_gain`` (only what is done with them). Colour tiles (B, s, s, 3) also get a
    per-channel gain of 1 +- ``color_gain`` (a white-balance shift), with ``channel_gamma`` > 0
    a per-channel gamma (drawn last, so runs without it keep their draws) and, with probability
    ``gray_fraction``, become their luminance in all three channels (so a colour model still
    knows gray frames); drawn after the rest, so gray tiles draw exactly what they did before
    colour existed.

    ``keep_colour``: also return each tile as it was just before it became gray (equal to the
    output for the tiles that stayed colour) and which tiles became gray, (B,) bool: (tiles,
    masks, colour, gray). The draws are the same either way.
    """
    out_tiles = np.empty_like(tiles)
    out_masks = np.empty_like(masks)
    colour = np.empty_like(tiles) if keep_colour else None
    grayed = np.zeros(len(tiles), bool)
    for index in range(len(tiles)):
        turns = int(rng.integers(0, 4))
        tile = np.rot90(tiles[index], turns)
        mask = np.rot90(masks[index], turns)
        if rng.random() < 0.5:
            tile, mask = tile[:, ::-1], mask[:, ::-1]
        tile = tile / 255.0
        if rng.random() < invert_probability:
            tile = 1.0 - tile
        tile = np.clip(tile, 0, 1) ** float(np.exp(rng.uniform(-0.4, 0.4)))
        mean = float(tile.mean())
        tile = (tile - mean) * rng.uniform(0.7, 1.3) + mean + rng.uniform(-0.1, 0.1)
        tile = tile + rng.normal(0, rng.uniform(0, 0.02), tile.shape)
        if tile.ndim == 3:
            tile = tile * rng.uniform(1 - color_gain, 1 + color_gain, 3)
            gray = rng.random() < gray_fraction  # a gray camera's frame: three equal channels
            if channel_gamma > 0:
                tile = np.clip(tile, 0, 1) ** np.exp(rng.uniform(-channel_gamma, channel_gamma, 3))
            if gray:
                if colour is not None:
                    colour[index] = np.clip(tile, 0, 1) * 255.0
                tile = np.repeat(to_luma(tile)[..., None], 3, axis=2)
                grayed[index] = True
        out_tiles[index] = np.clip(tile, 0, 1) * 255.0
        out_masks[index] = mask
    if keep_colour:
        colour[~grayed] = out_tiles[~grayed]  # the tiles that stayed colour are their own
        return out_tiles, out_masks, colour, grayed
    return out_tiles, out_masks


def jittered_boxes(masks: np.ndarray, input_size: int, jitter: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Return the report's training prompt, boxes (B, 1, 4) in model-input pixels.

    Each tile's true-mask bbox with every side moved by up to ``jitter`` x the box size; the
    whole tile for empty tiles.
    """
    t = masks.shape[1]
    scale = input_size / t
    boxes = np.zeros((len(masks), 1, 4), np.float32)
    for index, mask in enumerate(masks):
        ys, xs = np.nonzero(mask >= 0.5)
        if len(xs) == 0:
            boxes[index, 0] = (0, 0, input_size, input_size)
            continue
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        w, h = x1 - x0, y1 - y0
        moves = rng.uniform(-jitter, jitter, 4) * np.array([w, h, w, h])
        box = np.array([x0, y0, x1, y1], np.float64) + moves
        box = np.clip(box, 0, t) * scale
        boxes[index, 0] = box
    return boxes
