"""Train a compact SamModel on 256 tiles cut exactly as the runtime cuts them.

Data flow: scenes (a dataset folder in the contract layout, or generic shapes made on the fly)
-> resized to each model size with the runtime's ``resize`` -> cut with the runtime's
``TileGrid`` -> an in-memory tile pool (uint8 gray tiles + soft masks) -> batches with a set share
of positive tiles -> the model. Training with the inference prompt runs the runtime's own
``SamTilePredictor``; validation runs the runtime's ``Segmenter`` over whole scenes, so training
and deployment cannot drift apart.

Checkpoints (``last.pt``, ``best.pt``) hold weights, optimizer, schedule, config, step, best metric
and history. Batches are drawn from a generator seeded by (seed, step, process), so a resumed run
continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import copy
import dataclasses
import functools
import json
import logging
import math
import os
from pathlib import Path
import platform
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from sat_seg_ros.backends import Backend
from sat_seg_ros.config import (_check_int, atomic_write_text, INPUT_COLORS, SegmenterConfig,
                                write_model_info)
from sat_seg_ros.segmenter import Segmenter
from sat_seg_ros.tiling import resize, TileGrid
from sat_seg_training.batches import (augment_torch, jittered_boxes, miss_scores, pool_groups,
                                      preprocess_torch, sample_batch, sample_ids_vectorized)
from sat_seg_training.losses import (LOSSES, rank_loss, satellite_surroundings,
                                     segmentation_loss)
from sat_seg_training.models import ARCHITECTURES, CNN_ARCHITECTURES

LOG = logging.getLogger(__name__)

TRAIN_PROMPTS = ('inference', 'bbox_jitter')
#: Where a batch is drawn and augmented: 'numpy' on the CPU, tile by tile (draw for draw what
#: every run before 'torch' existed did), or 'torch': the tile pool on the training device, the
#: batch drawn in one vectorised pass and augmented there (the same augmentations from another
#: random stream), which keeps a GPU busy instead of waiting on the CPU.
PIPELINES = ('numpy', 'torch')
#: 'sam': the whole model on 256 tiles; 'dense': the image encoder with a dense head on crops.
STAGES = ('sam', 'dense')
PRECISIONS = ('fp32', 'bf16', 'auto')
THRESHOLDS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))


#: TrainConfig fields a resumed run may change: they decide where and how long it runs, not what.
#: precision is one of them: under autocast the weights, optimizer state and loss stay fp32, so a
#: checkpoint continues in either precision, and which one is fast depends on the machine.
RUN_ONLY_SETTINGS = ('threads', 'workers', 'max_minutes', 'log_every', 'checkpoint_every',
                     'precision', 'data_workers')


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; stored in every checkpoint and in the model's provenance."""

    name: str = 'ours'
    out_dir: str = 'runs/train'
    # model
    architecture: str = 'sat-tiny'
    stage: str = 'sam'  # 'sam' (whole model, 256 tiles) or 'dense' (encoder + dense head, crops)
    init_from: str = ''  # '' = fresh weights; a model folder (config.json) or a .pt checkpoint
    # init_from's CNN-encoder SAM may have fewer residual blocks per stage than architecture:
    # the missing ones are appended as identities (models.deepen), so training continues from it.
    deepen: bool = False
    # ... or fewer encoder channels: they are added so that the model computes what it did
    # (models.widen). Both may be set; the model is widened first.
    widen: bool = False
    prompt_mode: str = 'box'  # the runtime prompt, written into sat_seg.json
    grid_points: int = 4
    freeze: List[str] = dataclasses.field(default_factory=list)  # SamModel parameter prefixes
    # data
    # 'shapes' (generic shapes made here), a dataset folder, or 'synth': ``scenes`` scenes of
    # `sat-seg synth` made on the fly (the run's seed; never written to disk), by data_workers
    # processes, each cutting its scenes' tiles (the pool is the same whatever their number).
    data: str = 'shapes'
    # How scenes enter the model, written into the exported sat_seg.json for the runtime to do
    # the same: 'luma' turns every scene gray (Rec. 601); 'rgb' keeps colour scenes' channels
    # (gray ones become three equal channels) and adds a colour jitter to the augmentation.
    input_color: str = 'luma'
    scenes: int = 2000  # shapes: scenes made; folder: images used (0 = all)
    val_data: str = 'shapes'  # the same choices; 'synth' scenes with seed + 10000
    val_scenes: int = 100
    # data 'synth': sat-seg synth's --backgrounds (a folder of aerial photographs; '' =
    # procedural terrain only), --exclude-backgrounds (a file of name stems never to use),
    # --photo-fraction and --neg-frac; colour scenes when input_color is 'rgb'
    backgrounds: str = ''
    exclude_backgrounds: str = ''
    photo_fraction: float = 0.6
    neg_frac: float = 0.2
    data_workers: int = 1
    model_sizes: List[int] = dataclasses.field(default_factory=lambda: [512])
    size_weights: List[float] = dataclasses.field(default_factory=lambda: [1.0])
    # Each scene is cut at each model size times a factor drawn log-uniformly from
    # [1 / size_jitter, size_jitter] (its own draw per scene and size; never below one tile):
    # the satellites take every scale in between, and the tile grid falls on the scene at new
    # places. 1 = off (the sizes exactly, as the Segmenter cuts them).
    size_jitter: float = 1.0
    negatives_per_scene: int = 4  # empty tiles kept per scene and size (all positives kept)
    tile_size: int = 256
    positive_fraction: float = 0.5  # share of tiles with satellite pixels in a batch
    # Positive tiles are drawn with weight (satellite pixels of their scene at their model
    # size) ** -small_object_power: 0 = uniformly (large satellites, cut into many tiles,
    # dominate); 0.5 = in inverse proportion to the satellite's diameter.
    small_object_power: float = 0.0
    min_object_px: int = 1  # tiles with fewer satellite pixels count as negative for sampling
    train_prompt: str = 'inference'  # 'inference' or 'bbox_jitter' (the report's)
    box_jitter: float = 0.1  # bbox_jitter: max shift of each side, as a fraction of box size
    augment: bool = True
    pipeline: str = 'numpy'  # see PIPELINES
    # augment: share of tiles turned to their photographic negative (a satellite's panels and
    # body may be darker or lighter than the ground; real photographs are rarely inverted)
    invert_probability: float = 0.2
    # augment, input_color 'rgb': share of colour tiles turned to their luminance in all three
    # channels, so a colour model still knows a gray camera's frames (more: better on gray
    # frames, fewer colour examples)
    gray_fraction: float = 0.2
    # augment, input_color 'rgb': each channel's gain drawn from [1 - color_gain, 1 + color_gain]
    # (a white-balance error), and with channel_gamma > 0 each channel's gamma from
    # exp([-channel_gamma, channel_gamma]) (a tone curve that differs per channel, e.g. a warm
    # one); 0.1 and 0: what every colour run before them did, draw for draw
    color_gain: float = 0.1
    channel_gamma: float = 0.0
    crop_size: int = 128  # stage 'dense': square crops cut from the tiles
    # Share of a batch's negatives drawn by how strongly the model last fired on them (hard
    # negatives); the rest uniformly. 0 = all uniform.
    hard_negative_fraction: float = 0.0
    # Share of a batch's positives drawn by how badly the model last did on them: weight
    # 1 - p_sat * (1 - p_bg), p_sat the probability of the tile's best satellite pixel and
    # p_bg that of its best background pixel (away from the satellite), so a satellite that
    # stays dim or is outshone by the background comes back; the rest as
    # small_object_power says. 0 = off.
    hard_positive_fraction: float = 0.0
    # optimisation
    loss: str = 'bce_dice'
    pos_weight: float = 1.0
    dice_weight: float = 1.0
    dense_weight: float = 0.0  # stage 'sam': weight of the dense head's loss (deep supervision)
    # bce_dice only: weight of losses.peak_loss (each tile's peak_pixels most confident
    # background pixels pushed to 0, its best satellite pixel to 1); 0 = off
    peak_weight: float = 0.0
    peak_pixels: int = 256
    # > 0: add this weight x losses.rank_loss, each satellite's best logit over every tile's
    # top background logit in the chunk by rank_margin (logits), through a softplus; 0 = off
    rank_weight: float = 0.0
    rank_margin: float = 2.0
    optimizer: str = 'adamw'
    lr: float = 1e-3
    # {parameter-name prefix: factor}: those parameters train at factor x the scheduled rate
    # (their own AdamW group; the longest matching prefix wins), e.g. a newly grown part
    # {'vision_encoder.mask_features': 15} that the rest would otherwise leave near zero
    lr_scale: Dict[str, float] = dataclasses.field(default_factory=dict)
    weight_decay: float = 0.01
    schedule: str = 'cosine'  # 'cosine' or 'constant' (after warmup)
    warmup_steps: int = 100
    batch_size: int = 16
    steps: int = 0  # 0: derived from epochs, or from plan_minutes
    epochs: float = 0.0  # passes over the tile pool (used when steps is 0)
    grad_clip: float = 1.0
    # 'fp32', or 'bf16': the forward pass under autocast to bfloat16 (weights, optimizer and
    # loss stay fp32). Pays on CPUs with AVX512-BF16 or AMX and on GPUs; elsewhere it is much
    # slower (a CPU with AVX2 only: 8x). 'auto': bf16 where the hardware has it, else fp32.
    precision: str = 'fp32'
    # bookkeeping
    val_every: int = 250
    checkpoint_every: int = 100
    log_every: int = 25
    min_area_px: int = 16
    max_detections: int = 0  # validation and the exported sat_seg.json keep this many components
    seed: int = 0
    threads: int = 2
    workers: int = 1  # CPU: the batch split over concurrent workers, threads // workers each
    # Stop (with a checkpoint) once the run's wall time, summed over every invocation of a
    # resumed run, passes this; 0 = no limit. A resume past it needs a larger value (--set).
    max_minutes: float = 0.0
    # With steps and epochs 0: train for this many minutes (from the first step, the tile pool
    # built). The step count is planned once, at the end of warmup, from the steps per second
    # measured so far, so that the schedule (cosine) ends on time; a resumed run keeps it.
    plan_minutes: float = 0.0
    # Every this many steps, replace the tile pool with one cut from `scenes` new scenes (round
    # r of the run: seed + POOL_ROUND_SEED * r) and forget the tiles' hardness: more distinct
    # tiles than memory holds at once, each drawn fewer times. 0 = one pool for the whole run.
    # A run stopped on a renewal step (max_minutes) saves first and its resume renews.
    renew_pool_every: int = 0
    # > 0: keep an exponential moving average of the model's weights (and float buffers),
    # updated after every step n of the run as a <- d a + (1 - d) w with
    # d = min(ema_decay, (1 + n) / (10 + n)); validation, the exported best_model,
    # `--export`, `--average` and a later stage's init_from use it instead of the last step's
    # weights, which keep training. It smooths the noise of small batches: 0.999 averages
    # about the last thousand steps. 0 = off.
    ema_decay: float = 0.0
    # > 0 (colour tiles, input_color 'rgb', augment on): a colour-to-gray feature loss. A frozen
    # copy of the starting model's image encoder (init_from's, eval mode) embeds each gray
    # tile's colour original, and the trained encoder's embedding of the gray tile is pulled
    # toward it: this weight x the mean squared difference over the embeddings, divided by the
    # mean square of the frozen encoder's. Gray frames get the features the colour ones give.
    # 0 = off.
    gray_teacher_weight: float = 0.0
    # > 0 (stage 'sam', train_prompt 'inference', init_from): distil the starting model's
    # mirror views (the mode `accurate`'s four flips) into one pass. A frozen copy of
    # init_from's model (eval mode) predicts each tile under one of the four mirror views
    # (none, left-right, up-down, both; drawn per tile), mirrored back, and the trained model's
    # low-resolution mask logits are pulled toward those probabilities: this weight x their
    # binary cross-entropy. One drawn view per tile gives in expectation the gradient toward
    # the mean of the four (the cross-entropy's gradient is linear in its target) at a third of
    # a step's cost, not four thirds. 0 = off.
    view_teacher_weight: float = 0.0
    # > 0 (stage 'sam'): distil a model's maps of whole scenes, e.g. the bundled model in its
    # mode 'multiscale' (512 fused with 768 and 1024), which ranks more satellites first than
    # any one size. When the pool is made, scene_teacher (a model folder; '' = the bundled
    # one) in scene_teacher_mode (a named mode of its sat_seg.json; '' = its default) maps
    # every scene, as the Segmenter does at run time, and the map is cut into the scene's
    # tiles beside the mask; the trained model's mask logits are pulled toward it: this weight
    # x their binary cross-entropy. scene_teacher_luma: the teacher sees each scene's Rec. 601
    # luminance (the gray tiles most stages train on); false: the scene as made. 0 = off.
    scene_teacher_weight: float = 0.0
    scene_teacher: str = ''
    scene_teacher_mode: str = ''
    scene_teacher_luma: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.architecture not in ARCHITECTURES:
            raise ValueError('architecture=%r is not one of %s'
                             % (self.architecture, sorted(ARCHITECTURES)))
        if self.stage not in STAGES:
            raise ValueError('stage=%r is not one of %s' % (self.stage, STAGES))
        if self.precision not in PRECISIONS:
            raise ValueError('precision=%r is not one of %s' % (self.precision, PRECISIONS))
        if self.stage == 'dense' or self.dense_weight > 0:
            if self.architecture not in CNN_ARCHITECTURES:
                raise ValueError('stage=%r / dense_weight=%r need a CNN-encoder architecture '
                                 '(one of %s), not %r' % (self.stage, self.dense_weight,
                                                          sorted(CNN_ARCHITECTURES),
                                                          self.architecture))
        for name in ('deepen', 'widen'):
            if getattr(self, name) and (self.architecture not in CNN_ARCHITECTURES
                                        or not self.init_from):
                raise ValueError('%s=true needs init_from (the smaller model) and a '
                                 'CNN-encoder architecture (one of %s), not %r'
                                 % (name, sorted(CNN_ARCHITECTURES), self.architecture))
        for name in ('hard_negative_fraction', 'hard_positive_fraction', 'invert_probability',
                     'gray_fraction', 'photo_fraction', 'neg_frac'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError('%s=%r must be in [0, 1]' % (name, getattr(self, name)))
        if self.stage == 'dense' and (self.crop_size < 32 or self.crop_size > self.tile_size
                                      or self.crop_size % 32):
            raise ValueError('crop_size=%r must be a multiple of 32 in [32, tile_size=%d]'
                             % (self.crop_size, self.tile_size))
        if self.train_prompt not in TRAIN_PROMPTS:
            raise ValueError('train_prompt=%r is not one of %s'
                             % (self.train_prompt, TRAIN_PROMPTS))
        if self.loss not in LOSSES:
            raise ValueError('loss=%r is not one of %s' % (self.loss, LOSSES))
        if self.peak_weight < 0 or self.peak_pixels < 1:
            raise ValueError('peak_weight=%r must be >= 0 and peak_pixels=%r >= 1'
                             % (self.peak_weight, self.peak_pixels))
        if self.rank_weight < 0 or self.rank_margin < 0:
            raise ValueError('rank_weight=%r and rank_margin=%r must be >= 0'
                             % (self.rank_weight, self.rank_margin))
        if self.peak_weight > 0 and self.loss != 'bce_dice':
            raise ValueError("peak_weight=%r needs loss 'bce_dice' (not %r)"
                             % (self.peak_weight, self.loss))
        if not isinstance(self.lr_scale, dict) or not all(
                isinstance(k, str) and k and isinstance(v, (int, float))
                and not isinstance(v, bool) and v > 0 for k, v in self.lr_scale.items()):
            raise ValueError('lr_scale=%r must map parameter-name prefixes to factors > 0, e.g. '
                             "{'vision_encoder.mask_features': 15}" % (self.lr_scale,))
        if self.optimizer not in ('adam', 'adamw'):
            raise ValueError("optimizer=%r is not 'adam' or 'adamw'" % (self.optimizer,))
        if self.schedule not in ('cosine', 'constant'):
            raise ValueError("schedule=%r is not 'cosine' or 'constant'" % (self.schedule,))
        if len(self.model_sizes) != len(self.size_weights) or not self.model_sizes:
            raise ValueError('model_sizes %s and size_weights %s must be non-empty and of equal '
                             'length' % (self.model_sizes, self.size_weights))
        if self.input_color not in INPUT_COLORS:
            raise ValueError('input_color=%r is not one of %s' % (self.input_color, INPUT_COLORS))
        if not 1.0 <= self.size_jitter <= 2.0:
            raise ValueError('size_jitter=%r must be in [1, 2] (1 = off)' % (self.size_jitter,))
        if not 0.0 <= self.positive_fraction <= 1.0:
            raise ValueError('positive_fraction=%r must be in [0, 1]' % self.positive_fraction)
        if not 0.0 <= self.small_object_power <= 2.0:
            raise ValueError('small_object_power=%r must be in [0, 2]' % self.small_object_power)
        if not 0.0 <= self.color_gain <= 0.5 or not 0.0 <= self.channel_gamma <= 1.0:
            raise ValueError('color_gain=%r must be in [0, 0.5] and channel_gamma=%r in [0, 1]'
                             % (self.color_gain, self.channel_gamma))
        if self.pipeline not in PIPELINES:
            raise ValueError('pipeline=%r is not one of %s' % (self.pipeline, PIPELINES))
        if self.pipeline == 'torch' and self.stage == 'dense':
            raise ValueError("pipeline 'torch' trains stage 'sam'; stage 'dense' (crops) runs "
                             "with pipeline 'numpy'")
        if self.gray_teacher_weight < 0:
            raise ValueError('gray_teacher_weight=%r must be >= 0 (0 = off)'
                             % (self.gray_teacher_weight,))
        if self.gray_teacher_weight > 0 and (
                self.input_color != 'rgb' or not self.augment or self.gray_fraction <= 0
                or not self.init_from):
            raise ValueError('gray_teacher_weight=%r needs colour tiles turned gray by '
                             "augmentation (input_color 'rgb', augment true, gray_fraction > 0) "
                             'and init_from (the frozen encoder is that of the start); got '
                             'input_color=%r, augment=%r, gray_fraction=%r, init_from=%r'
                             % (self.gray_teacher_weight, self.input_color, self.augment,
                                self.gray_fraction, self.init_from))
        if self.view_teacher_weight < 0:
            raise ValueError('view_teacher_weight=%r must be >= 0 (0 = off)'
                             % (self.view_teacher_weight,))
        if self.view_teacher_weight > 0 and (
                self.stage != 'sam' or self.train_prompt != 'inference' or not self.init_from):
            raise ValueError("view_teacher_weight=%r needs stage 'sam', train_prompt "
                             "'inference' and init_from (the frozen model is the start); got "
                             'stage=%r, train_prompt=%r, init_from=%r'
                             % (self.view_teacher_weight, self.stage, self.train_prompt,
                                self.init_from))
        if self.scene_teacher_weight < 0:
            raise ValueError('scene_teacher_weight=%r must be >= 0 (0 = off)'
                             % (self.scene_teacher_weight,))
        if self.scene_teacher_weight > 0 and self.stage != 'sam':
            raise ValueError("scene_teacher_weight=%r trains stage 'sam' (the teacher maps "
                             'whole tiles), not %r' % (self.scene_teacher_weight, self.stage))
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError('ema_decay=%r must be in [0, 1) (0 = off)' % (self.ema_decay,))
        if self.plan_minutes < 0:
            raise ValueError('plan_minutes=%r must be >= 0' % (self.plan_minutes,))
        if self.steps <= 0 and self.epochs <= 0 and self.plan_minutes <= 0:
            raise ValueError('set steps > 0, epochs > 0 or plan_minutes > 0 (got steps=%r, '
                             'epochs=%r)' % (self.steps, self.epochs))
        if self.plan_minutes > 0 and (self.steps > 0 or self.epochs > 0):
            raise ValueError('plan_minutes=%r plans the step count: set steps=0 and epochs=0 '
                             '(got %r, %r)' % (self.plan_minutes, self.steps, self.epochs))
        if self.data == 'synth' and self.scenes < 1:
            raise ValueError("data 'synth' makes `scenes` scenes: set scenes >= 1, not %r"
                             % (self.scenes,))

        _check_int(self, 'max_detections', minimum=0)  # 0 keeps every component
        _check_int(self, 'renew_pool_every', minimum=0)
        for name in ('batch_size', 'val_every', 'checkpoint_every', 'log_every', 'tile_size',
                     'workers', 'data_workers'):
            if getattr(self, name) < 1:
                raise ValueError('%s=%r must be >= 1' % (name, getattr(self, name)))


def read_preset(path: Path, including: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """Return a preset's settings, with those of the preset its ``base`` names under them.

    ``base: other.yaml`` (relative to the preset's folder) takes every setting of that preset,
    itself possibly based on another, and the preset's own settings replace them: a run that
    changes two settings of an earlier one says so in two lines. Such a preset names its own
    ``name`` and ``out_dir``, so that it can never write into, or resume, its base's run.
    """
    import yaml

    path = Path(path)
    including = including + (path.resolve(),)
    if including[-1] in including[:-1]:
        raise ValueError('preset %s is its own base (%s)'
                         % (path, ' -> '.join(str(p) for p in including)))
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError('%s must hold a mapping of TrainConfig fields' % path)
    base = loaded.pop('base', None)
    if base is None:
        return loaded
    if not isinstance(base, str) or not base.strip():
        raise ValueError('%s: base must be the file name of another preset, relative to %s'
                         % (path, path.parent))
    missing = [key for key in ('name', 'out_dir') if key not in loaded]
    if missing:
        raise ValueError('%s: a preset with a base sets its own %s (else it would write into '
                         'the run of %s)' % (path, ' and '.join(missing), base))
    base_path = path.parent / base
    if not base_path.is_file():
        raise ValueError('%s: its base %s does not exist' % (path, base_path))
    values = read_preset(base_path, including)
    values.update(loaded)
    return values


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Return a TrainConfig from a YAML preset (optional) and ``key=value`` YAML overrides.

    The preset may build on another through ``base`` (read_preset).
    """
    import yaml

    values: Dict[str, Any] = {}
    if path:
        values.update(read_preset(Path(path)))
    for item in overrides:
        if '=' not in item:
            raise ValueError('override %r must look like key=value' % item)
        key, text = item.split('=', 1)
        values[key.strip()] = yaml.safe_load(text)
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError('unknown training setting(s) %s; known: %s' % (unknown, sorted(fields)))
    for key, value in values.items():
        # YAML 1.1 reads 3e-4 (no point in the mantissa) as a string: a float field takes it
        if fields[key].type in ('float', float) and isinstance(value, (str, int)) \
                and not isinstance(value, bool):
            try:
                values[key] = float(value)
            except ValueError:
                raise ValueError('training setting %s=%r is not a number' % (key, value)) from None
    return TrainConfig(**values)


# ----------------------------------------------------------------------------------------------
# Data


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


def native_bf16(device_type: str = 'cpu') -> bool:
    """Whether the device computes bf16 in hardware (CPU: AVX512-BF16 or AMX; CUDA: Ampere+)."""
    import torch

    from sat_seg_training.evaluate import cpuinfo_value

    if device_type == 'cuda':
        return torch.cuda.is_bf16_supported()
    flags = cpuinfo_value('flags')
    if flags is not None:
        return bool(set(flags.split()) & {'avx512_bf16', 'amx_bf16'})
    try:  # not Linux: ask oneDNN (a private op, hence the fallback)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device_type: str = 'cpu') -> str:
    """'fp32' or 'bf16' for this machine; warn when bf16 would be emulated."""
    native = native_bf16(device_type)
    if precision == 'auto':
        return 'bf16' if native else 'fp32'
    if precision == 'bf16' and not native:
        LOG.warning('precision=bf16 on a %s without bf16 in hardware is emulated and much slower '
                    'than fp32 (8x on a CPU with AVX2 only); set precision: auto or fp32 (a '
                    'resumed run may change it)', device_type.upper())
    return precision


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


# ----------------------------------------------------------------------------------------------
# Model, optimisation, validation


def _model_input(pixels: np.ndarray, device):
    """Return preprocessed tiles (N, 3, t, t) as a channels-last tensor on ``device``.

    Channels-last input: the convolutions run in oneDNN's / cuDNN's preferred layout
    (sat-cnn-fine, bf16 on a CPU with AVX512-BF16, one thread, three rounds beside a training
    run, 2026-12-02: 0.29-0.35 s against 0.35-0.38 s per forward and backward of 16 tiles);
    only rounding can differ.
    """
    import torch

    return torch.from_numpy(pixels).to(device).contiguous(memory_format=torch.channels_last)


def load_initial_model(config: TrainConfig):
    """Return (model, dense head state or None) to train: fresh, from a folder or a checkpoint.

    A checkpoint's model must be of the configured architecture (with ``deepen`` and / or
    ``widen``, a shallower or narrower one of it: see models.deepen and models.widen):
    anything else is refused, not reshaped.
    """
    from sat_seg_ros.modeling import load_sam_model
    from sat_seg_training.models import build_model, deepen, widen

    if not config.init_from:
        return build_model(config.architecture, seed=config.seed), None
    path = Path(config.init_from)
    if path.is_dir():
        model, head = load_sam_model(path), None
    else:
        checkpoint = read_checkpoint(path)
        model = model_from_checkpoint(checkpoint, model_weights(checkpoint))
        head = checkpoint.get('dense_head')
    expected = build_model(config.architecture, seed=config.seed)
    vision = expected.config.vision_config
    growths = (('widen', lambda small: widen(small, vision.stage_channels, seed=config.seed,
                                             stem_channels=vision.stem_channels,
                                             fuse_channels=vision.fuse_channels)),
               ('deepen', lambda small: deepen(small, vision.stage_blocks, seed=config.seed,
                                               stem_blocks=vision.stem_blocks,
                                               fine_lateral=vision.fine_lateral,
                                               fuse_blocks=vision.fuse_blocks,
                                               fine_mask=vision.fine_mask)))
    for name, grow in growths:  # widened first: widen needs the blocks to match
        if getattr(config, name) and _shapes(model) != _shapes(expected):
            try:
                model = grow(model)
            except ValueError as error:
                raise ValueError('init_from=%s cannot %s into %r: %s'
                                 % (path, name, config.architecture, error)) from None
    if _shapes(model) != _shapes(expected):
        raise ValueError('init_from=%s holds a %s model of another architecture than %r; set '
                         "architecture to the checkpoint's, start from fresh weights, or grow a "
                         'smaller CNN-encoder SAM with deepen: true and / or widen: true'
                         % (path, model.config.model_type, config.architecture))
    return model, head


def _shapes(model) -> Dict[str, tuple]:
    return {name: tuple(value.shape) for name, value in model.state_dict().items()}


def stored_model_config(checkpoint: Dict[str, Any]):
    """Return (model class, its config object) of the model stored in a checkpoint.

    A CnnSamModel's config names its ``model_type``; anything else is read as a SamModel's.
    """
    from transformers import SamModel

    from sat_seg_ros.modeling import FAMILIES

    stored = checkpoint['sam_config']
    family = FAMILIES.get(stored.get('model_type'), SamModel)
    return family, family.config_class.from_dict(stored)


def model_from_checkpoint(checkpoint: Dict[str, Any], weights: Optional[Dict[str, Any]] = None):
    """Rebuild the model (SamModel or CnnSamModel) stored in a checkpoint of this module.

    ``weights``: a state dict to load instead of the checkpoint's live ``model`` weights (e.g.
    ``model_weights(checkpoint)``).
    """
    family, config = stored_model_config(checkpoint)
    model = family(config)
    model.load_state_dict(checkpoint['model'] if weights is None else weights)
    return model


def model_weights(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """Return the weights a checkpoint's model is used with.

    That is the moving average of its run (``ema``, ema_decay > 0) when it kept one, else the
    last step's.
    """
    return checkpoint['ema'] if checkpoint.get('ema') is not None else checkpoint['model']


def ema_decay_at(decay: float, step: int) -> float:
    """Return the moving average's decay after the run's ``step``-th step (1-based)."""
    return min(decay, (1.0 + step) / (10.0 + step))


def update_ema(average, model, decay: float) -> None:
    """Move ``average``'s weights and float buffers toward ``model``'s: a <- d a + (1 - d) w.

    Integer buffers (BatchNorm's batch counts) are copied.
    """
    import torch

    live = model.state_dict()
    with torch.no_grad():
        for name, value in average.state_dict().items():
            if value.is_floating_point():
                value.lerp_(live[name].to(value.dtype), 1.0 - decay)
            else:
                value.copy_(live[name])


def dense_head(model):
    """Return the training-only dense head: a 1x1 conv from the image embeddings to a logit.

    It supervises the encoder directly (stage 'dense', and deep supervision in stage 'sam') and
    is never part of an exported model.
    """
    import torch

    channels = model.config.vision_config.output_channels
    torch.manual_seed(0)
    return torch.nn.Conv2d(channels, 1, 1)


def gray_teacher_loss(teacher, embeddings, colour_pixels, grayed, precision: str = 'fp32'):
    """Return the colour-to-gray feature loss of a chunk (see TrainConfig.gray_teacher_weight).

    ``embeddings`` (B, C, h, w): the trained encoder's, of the tiles as trained (some gray);
    ``colour_pixels`` (B, 3, S, S): the same tiles before graying, preprocessed; ``grayed``
    (B,) bool. The mean squared difference between the gray tiles' embeddings and the frozen
    ``teacher``'s embeddings of their colour originals, over the mean square of the latter; a
    zero that keeps the graph when no tile of the chunk is gray.
    """
    import torch

    rows = torch.nonzero(grayed).flatten()
    if not len(rows):
        return embeddings.float().sum() * 0.0
    with torch.no_grad(), torch.autocast(colour_pixels.device.type, dtype=torch.bfloat16,
                                         enabled=precision == 'bf16'):
        wanted = teacher(colour_pixels[rows]).last_hidden_state
    wanted = wanted.float()
    scale = wanted.pow(2).mean().clamp_min(1e-8)
    return (embeddings[rows].float() - wanted).pow(2).mean() / scale


def mirror_views(batch, views):
    """Return ``batch`` (B, ..., H, W) with row i mirrored by view ``views[i]`` (B,) int.

    The views are the Segmenter's flips: 0 none, 1 left-right, 2 up-down, 3 both. Each is its
    own inverse, so the same call maps a view's prediction back to the tile.
    """
    import torch

    out = batch.clone()
    for view, dims in ((1, [-1]), (2, [-2]), (3, [-2, -1])):
        rows = torch.nonzero(views == view).flatten()
        if len(rows):
            out[rows] = torch.flip(batch[rows], dims)
    return out


def view_teacher_loss(teacher, low_res, pixels, views, precision: str = 'fp32'):
    """Return the mirror-view distillation loss of a chunk (TrainConfig.view_teacher_weight).

    ``low_res`` (B, h, w): the trained model's mask logits of the tiles ``pixels`` (B, 3, S, S);
    ``views`` (B,): each tile's drawn mirror view. The frozen ``teacher`` (pixels -> low-res
    logits) predicts each tile under its view; the binary cross-entropy of ``low_res`` against
    those probabilities, mirrored back, averaged over the pixels.
    """
    import torch

    with torch.no_grad(), torch.autocast(pixels.device.type, dtype=torch.bfloat16,
                                         enabled=precision == 'bf16'):
        seen = teacher(mirror_views(pixels, views))
    wanted = mirror_views(torch.sigmoid(seen.float()), views)
    return torch.nn.functional.binary_cross_entropy_with_logits(low_res.float(), wanted)


def make_training_net(model, head, config: TrainConfig):
    """Return the module a step runs: pixels -> (low-res mask logits, dense logits, embeddings).

    The first two may be None. Stage 'dense' runs the encoder and the head only; stage 'sam'
    the runtime's fixed-prompt tile predictor (inference prompt), plus the head when
    ``dense_weight`` > 0.
    """
    import torch

    from sat_seg_ros.backends.torch_backend import SamTilePredictor

    class TrainingNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model.vision_encoder
            self.head = head
            self.predictor = (SamTilePredictor(model, config.prompt_mode, config.grid_points)
                              if config.stage == 'sam' else None)

        def forward(self, pixels):
            encoded = self.encoder(pixels)
            embeddings = encoded.last_hidden_state
            dense = self.head(embeddings)[:, 0] if self.head is not None else None
            masks = (self.predictor.decode(embeddings, getattr(encoded, 'mask_features', None))
                     if self.predictor is not None else None)
            return masks, dense, embeddings

    return TrainingNet()


def stored_config(checkpoint: Dict[str, Any], path: os.PathLike | str) -> Dict[str, Any]:
    """Return the checkpoint's TrainConfig fields; refuse by name settings this version lacks."""
    unknown = sorted(set(checkpoint['train_config']) - {
        field.name for field in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ValueError('%s was written with settings this version does not know (%s): it '
                         'comes from another version of sat_seg_training'
                         % (path, ', '.join(unknown)))
    return checkpoint['train_config']


def read_checkpoint(path: os.PathLike | str) -> Dict[str, Any]:
    """Load a checkpoint dict (weights, optimizer, config, step, best metric, history)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError('checkpoint %s does not exist' % path)
    return torch.load(str(path), map_location='cpu', weights_only=False)


def parameter_groups(named: Sequence[tuple], lr_scale: Dict[str, float]) -> List[Dict[str, Any]]:
    """Split ``(name, parameter)`` pairs into optimizer groups by ``lr_scale``'s prefixes.

    The first group holds the parameters no prefix matches (factor 1), then one group per
    prefix in sorted order; a parameter goes to its longest matching prefix. A prefix that
    matches no trainable parameter is refused (a misspelt name would otherwise do nothing).
    """
    prefixes = sorted(lr_scale)
    members: Dict[str, list] = {prefix: [] for prefix in prefixes}
    rest = []
    for name, parameter in named:
        matches = [prefix for prefix in prefixes if name.startswith(prefix)]
        (members[max(matches, key=len)] if matches else rest).append(parameter)
    empty = [prefix for prefix in prefixes if not members[prefix]]
    if empty:
        raise ValueError('lr_scale prefix(es) %s match no trainable parameter; names look like '
                         '%s' % (empty, [name for name, _ in named][:6]))
    return ([{'params': rest, 'lr_scale': 1.0}] + [
        {'params': members[prefix], 'lr_scale': float(lr_scale[prefix])} for prefix in prefixes])


def apply_freeze(model, prefixes: Sequence[str]) -> int:
    """Freeze parameters with any name starting with a prefix; return the trainable count.

    A tied parameter is frozen when any of its names matches (SamModel ties the prompt encoder's
    positional embedding to ``shared_image_embedding``).
    """
    frozen_ids = {id(parameter) for name, parameter in
                  model.named_parameters(remove_duplicate=False)
                  if any(name.startswith(prefix) for prefix in prefixes)}
    trainable = 0
    for parameter in model.parameters():
        frozen = id(parameter) in frozen_ids
        parameter.requires_grad_(not frozen)
        trainable += 0 if frozen else parameter.numel()
    if trainable == 0:
        raise ValueError('freeze=%s leaves nothing to train' % list(prefixes))
    return trainable


def _forward_backward(chunk_loss, batch: int, workers: int, threads: int):
    """Run ``chunk_loss(rows, scale)`` over the batch; return the batch loss (a tensor).

    With ``workers`` > 1 the batch is split into that many row ranges that run forward and
    backward concurrently, each on ``threads`` intra-op thread(s) (torch releases the GIL in its
    kernels and accumulates the gradients of the shared parameters under its own lock). Each
    chunk's loss is scaled by its share of the batch, so the gradient is the batch mean's for
    the pixel terms; Dice averages over each chunk's positive tiles. Two chunks sum in either
    order to the same bits, so a step stays deterministic.
    """
    import torch

    workers = max(1, min(workers, batch))
    if workers == 1:
        return chunk_loss(slice(0, batch), 1.0)
    bounds = np.linspace(0, batch, workers + 1).round().astype(int)
    rows = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    scales = [(r.stop - r.start) / batch for r in rows]

    def run(index: int):
        torch.set_num_threads(threads)
        return chunk_loss(rows[index], scales[index])

    previous = torch.get_num_threads()
    with ThreadPoolExecutor(workers - 1) as pool:
        futures = [pool.submit(run, index) for index in range(1, workers)]
        try:
            losses = [run(0)] + [future.result() for future in futures]
        finally:
            torch.set_num_threads(previous)
    return sum(loss * scale for loss, scale in zip(losses, scales))


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Linear warmup then cosine decay to 5 % (or constant)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == 'constant':
        return config.lr
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class ModuleBackend(Backend):
    """A Backend over an in-memory SamModel, so validation runs the runtime's Segmenter."""

    name = 'in-memory'

    def __init__(self, model, prompt_mode: str, grid_points: int = 4, head=None) -> None:
        """Wrap ``model`` with the runtime's fixed-prompt tile predictor.

        With a dense ``head`` the tiles' logits are the head's on the image embeddings instead
        of the mask decoder's (how stage 'dense' is validated).
        """
        import torch

        from sat_seg_ros.backends.torch_backend import SamTilePredictor

        super().__init__('<in-memory>', prompt_mode=prompt_mode, grid_points=grid_points)
        if head is None:
            self.predictor = SamTilePredictor(model, prompt_mode, grid_points).eval()
        else:
            encoder = model.vision_encoder

            class DensePredictor(torch.nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.encoder, self.head = encoder, head

                def forward(self, pixels):
                    return self.head(self.encoder(pixels).last_hidden_state)[:, 0]

            self.predictor = DensePredictor().eval()
        self.input_size = model.config.vision_config.image_size

    def run_batch(self, pixel_values: np.ndarray) -> np.ndarray:
        """Return low-res logits (N, m, m) for pre-processed tiles."""
        import torch

        with torch.inference_mode():
            device = next(self.predictor.parameters()).device
            return self.predictor(torch.from_numpy(pixel_values).to(device)).float().cpu().numpy()


def validate(model, scenes: Sequence[Scene], prompt_mode: str, grid_points: int,
             model_size: int = 512, min_area_px: int = 16, tile_size: int = 256,
             thresholds: Sequence[float] = THRESHOLDS, max_detections: int = 0,
             head=None, seed_thresholds: Optional[Sequence[Optional[float]]] = None
             ) -> Dict[str, Any]:
    """Segment every scene with the Segmenter; return the best threshold's metrics and the table.

    The post-processing is the runtime's (``min_area_px``, ``max_detections``, hysteresis over
    ``seed_thresholds``; None: calibrate's default seeds), scored by ``calibrate.sweep``
    exactly as ``sat-seg calibrate`` scores it.
    """
    from sat_seg_training.calibrate import DEFAULT_SEED_THRESHOLDS, sweep

    backend = ModuleBackend(model, prompt_mode, grid_points, head)
    segmenter = Segmenter(backend, SegmenterConfig(
        model_size=model_size, tile_size=tile_size, threshold=0.5, min_area_px=min_area_px,
        prompt_mode=prompt_mode, grid_points=grid_points))
    probabilities = [segmenter.probability(scene.image) for scene in scenes]
    result = sweep(probabilities, [scene.mask for scene in scenes], thresholds, min_area_px,
                   max_detections, DEFAULT_SEED_THRESHOLDS if seed_thresholds is None
                   else seed_thresholds)
    return {'best_threshold': result['best_threshold'],
            'best_seed_threshold': result['best_seed_threshold'],
            'accuracy': result['best']['accuracy'],
            'mean_iou': result['best']['mean_iou'], 'table': result['table']}


def export_model(model, directory: Path, config: TrainConfig, threshold: float,
                 provenance: Dict[str, Any], seed_threshold: Optional[float] = None) -> None:
    """Write a runtime model folder: SamModel files plus sat_seg.json (atomically per file)."""
    tmp = directory.parent / ('.' + directory.name + '.tmp')
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    write_model_info(tmp, {
        'model_size': config.model_sizes[0], 'tile_size': config.tile_size, 'tile_overlap': 0,
        'prompt_mode': config.prompt_mode, 'grid_points': config.grid_points,
        # 'luma': the tile pool and validation turned every scene gray (_gray_uint8), so
        # colour frames must reach the model as the same luminance
        'input_color': config.input_color,
        'threshold': float(threshold), 'seed_threshold': seed_threshold,
        'min_area_px': config.min_area_px, 'max_detections': config.max_detections,
        'provenance': provenance})
    directory.mkdir(parents=True, exist_ok=True)
    for item in tmp.iterdir():
        item.chmod(0o644)  # save_pretrained may create owner-only files; the package ships them
        os.replace(item, directory / item.name)
    tmp.rmdir()


# ----------------------------------------------------------------------------------------------
# The loop


#: plan_minutes: the step count until it is planned (the schedule is then still in warmup).
PLANNING = 10 ** 9
#: plan_minutes: the steps per second are measured from this step to the end of warmup (the
#: first steps run slower: kernels are chosen, caches filled).
PLAN_FROM_STEP = 10


def plan_steps(config: TrainConfig, step: int, rate: float, elapsed_s: float) -> int:
    """Return the planned step count of a plan_minutes run at ``step``.

    ``rate`` steps per second, ``elapsed_s`` of the budget spent: the steps that fit into 97 %
    of what is left (the rest for checkpoints and the final validation), at least one more.
    """
    left = max(0.0, 60.0 * config.plan_minutes - elapsed_s)
    return step + max(1, int(rate * left * 0.97))


def total_steps(config: TrainConfig, pool_size: int) -> int:
    """Return the run's step count: ``steps``, or ``epochs`` passes over the tile pool."""
    if config.steps > 0:
        return config.steps
    if config.plan_minutes > 0:
        return PLANNING  # until train() plans it
    return max(1, int(math.ceil(config.epochs * pool_size / config.batch_size)))


def train(config: TrainConfig, resume: bool = True, progress: bool = True,
          stop_at_step: int = 0) -> Dict[str, Any]:
    """Run (or resume) training; return the final summary (also written to summary.json).

    ``stop_at_step`` > 0 checkpoints and returns at that step, as an interrupt would.
    """
    import torch
    from accelerate import Accelerator
    from tqdm import tqdm

    from sat_seg_ros.backends import preprocess_tiles
    from sat_seg_ros.backends.torch_backend import SamTilePredictor

    torch.set_num_threads(config.threads)
    _set_mmap_threshold(POOL_MMAP_THRESHOLD)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    synth = SynthSource.of(config)
    if 'synth' in (config.data, config.val_data):
        # Checked here, before anything is written, and not in TrainConfig.validate(): a
        # checkpoint's config names its backgrounds folder, and exporting it must not need it.
        synth.paths
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    checkpoint = None
    if resume and (out / 'last.pt').is_file():
        checkpoint = read_checkpoint(out / 'last.pt')
        current = dataclasses.asdict(config)
        # Settings added after the checkpoint was written count as unchanged, and so do the
        # ones that say where and how long it runs, not what it computes (e.g. continue a run
        # with more threads once a second run has finished).
        stored = {key: value for key, value in stored_config(checkpoint, out / 'last.pt').items()
                  if key not in RUN_ONLY_SETTINGS}
        if dict(current, **stored) != current:
            raise ValueError('%s/last.pt was written with a different config; use another '
                             'out_dir or pass --no-resume to start over' % out)
        model, head_state = model_from_checkpoint(checkpoint), checkpoint.get('dense_head')
    else:
        model, head_state = load_initial_model(config)
    head = None
    if config.stage == 'dense' or config.dense_weight > 0:
        head = dense_head(model)
        if head_state is not None:
            head.load_state_dict(head_state)
    # The frozen teachers are copies of the start: a fresh start's model is the start itself;
    # a resumed one has moved on, so the start is read again (once, for both).
    start = None
    if config.gray_teacher_weight > 0 or config.view_teacher_weight > 0:
        start = model if checkpoint is None else load_initial_model(config)[0]
    teacher = None  # gray_teacher_weight > 0: the starting model's encoder, frozen
    if config.gray_teacher_weight > 0:
        teacher = copy.deepcopy(start.vision_encoder).eval()
        teacher.requires_grad_(False)
        teacher.to(accelerator.device)
    view_teacher = None  # view_teacher_weight > 0: the starting model's predictor, frozen
    if config.view_teacher_weight > 0:
        view_teacher = SamTilePredictor(copy.deepcopy(start), config.prompt_mode,
                                        config.grid_points).eval()
        view_teacher.requires_grad_(False)
        view_teacher.to(accelerator.device)
    trainable = apply_freeze(model, config.freeze)
    # The whole model on the training device, not only the parts a step runs: the prompt
    # encoder computes the validation predictor's fixed prompt where the decoder runs.
    model.to(accelerator.device)
    if head is not None:
        head.to(accelerator.device)
    ema = None  # ema_decay > 0: the moving average of the weights, what the run validates
    if config.ema_decay > 0:
        ema = copy.deepcopy(model).eval()
        ema.requires_grad_(False)
        if checkpoint is not None and checkpoint.get('ema') is not None:
            ema.load_state_dict(checkpoint['ema'])
        elif checkpoint is not None:
            LOG.info('%s/last.pt has no moving average: it starts from its weights', out)

    def cut_pool(pool_round):
        """Return round ``pool_round``'s pool and its digest (at start and at each renewal)."""
        _set_mmap_threshold(POOL_MMAP_THRESHOLD)
        pool = make_training_pool(config, pool_round, progress, synth)
        _set_mmap_threshold(TRAIN_MMAP_THRESHOLD)
        return pool, pool_digest(pool)

    pool_round = checkpoint.get('pool_round', 0) if checkpoint is not None else 0
    # A run that stopped on a renewal step saved before renewing: the renewal is made here.
    renew_due = checkpoint is not None and bool(checkpoint.get('renew_due', False))
    if renew_due:
        pool_round += 1
    LOG.info('building tile pool from %s (%d scenes%s)', config.data, config.scenes,
             ', round %d' % pool_round if pool_round else '')
    pool, data_digest = cut_pool(pool_round)
    val_scenes = load_scenes(config.val_data, config.val_scenes, config.seed + 10_000,
                             config.input_color == 'rgb', synth)
    if (checkpoint is not None and not renew_due
            and checkpoint.get('data_digest', data_digest) != data_digest):
        LOG.warning('the tile pool differs from the one %s/last.pt was trained on (digest %s, '
                    'now %s): the data were regenerated differently (other backgrounds, '
                    'library versions?); the run continues, but not bit-identical to an '
                    'uninterrupted one', out, checkpoint['data_digest'], data_digest)
    steps = total_steps(config, len(pool.tiles))
    planned = None  # plan_minutes: the planned step count, once set
    if checkpoint is not None and checkpoint.get('planned_steps'):
        planned = steps = checkpoint['planned_steps']
    LOG.info('pool: %d tiles (%d positive); %s steps of %d; %d trainable parameters',
             len(pool.tiles), int(pool.positive.sum()),
             'planned at the end of warmup:' if steps == PLANNING else steps, config.batch_size,
             trainable)

    # Per pool tile, what the model last did on it: a negative's peak probability, a
    # positive's miss score (hard_positive_fraction); 1 = not seen yet.
    hardness = np.ones(len(pool.tiles), np.float32)
    if config.stage == 'dense':
        # The mask decoder takes no part in stage 'dense': train the encoder and the head only.
        named = [('vision_encoder.' + n, p) for n, p in model.vision_encoder.named_parameters()]
    else:
        named = list(model.named_parameters())
    if head is not None:
        named += [('dense_head.' + n, p) for n, p in head.named_parameters()]
    trained = parameter_groups([(n, p) for n, p in named if p.requires_grad], config.lr_scale)
    rate_factors = [group['lr_scale'] for group in trained]
    trained_parameters = [p for group in trained for p in group['params']]
    optimizer_class = torch.optim.AdamW if config.optimizer == 'adamw' else torch.optim.Adam
    decay = config.weight_decay if config.optimizer == 'adamw' else 0.0
    optimizer = optimizer_class(trained, lr=config.lr, weight_decay=decay)
    step, best, history = 0, {'accuracy': -1.0, 'mean_iou': -1.0, 'step': -1}, []
    if checkpoint is not None:
        saved = [len(group['params']) for group in checkpoint['optimizer']['param_groups']]
        sizes = [len(group['params']) for group in trained]
        if saved != sizes:
            raise ValueError('%s/last.pt was trained with other parameter groups (sizes %s) '
                             'than lr_scale=%r makes (%s): resume with the lr_scale it was '
                             'started with, or start over (--no-resume)'
                             % (out, saved, config.lr_scale, sizes))
        optimizer.load_state_dict(checkpoint['optimizer'])
        step, best, history = checkpoint['step'], checkpoint['best'], checkpoint['history']
        started -= checkpoint.get('elapsed_s', 0.0)
        if 'hardness' in checkpoint and not renew_due:  # a new round starts afresh
            hardness = np.asarray(checkpoint['hardness'], np.float32)
    renew_due = False
    input_size = model.config.vision_config.image_size
    fixed = config.train_prompt == 'inference'
    training_net = config.stage == 'dense' or head is not None or teacher is not None
    if training_net:
        if not fixed:
            raise ValueError("stage 'dense', dense_weight > 0 and gray_teacher_weight > 0 train "
                             "with train_prompt 'inference'")
        net = make_training_net(model, head, config)
    else:
        net = SamTilePredictor(model, config.prompt_mode, config.grid_points) if fixed else model
    pixel_size = config.crop_size if config.stage == 'dense' else input_size
    net, optimizer = accelerator.prepare(net, optimizer)
    device = accelerator.device
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms

    def on_device(pool):
        if config.pipeline != 'torch':
            return None, None, None, None
        # The whole pool on the training device (uint8), drawn from and augmented there.
        taught = None if pool.teacher is None else torch.from_numpy(pool.teacher).to(device)
        return (pool_groups(pool, len(config.model_sizes)),
                torch.from_numpy(pool.tiles).to(device), torch.from_numpy(pool.masks).to(device),
                taught)

    groups, pool_tiles, pool_masks, pool_teacher = on_device(pool)
    net.train()
    workers = config.workers if accelerator.device.type == 'cpu' else 1
    worker_threads = max(1, config.threads // workers)
    precision = resolve_precision(config.precision, accelerator.device.type)
    LOG.info('precision: %s%s', precision,
             ' (auto)' if config.precision == 'auto' else '')
    if workers > 1:
        LOG.info('each step: %d CPU workers x %d thread(s), the batch split between them',
                 workers, worker_threads)

    def save(kind: str) -> None:
        state = {'model': accelerator.unwrap_model(model).state_dict(),
                 'sam_config': model.config.to_dict(), 'optimizer': optimizer.state_dict(),
                 'train_config': dataclasses.asdict(config), 'step': step, 'best': best,
                 'history': history, 'elapsed_s': time.time() - started,
                 'loop_elapsed_s': time.time() - loop_started,
                 'hardness': hardness.copy(), 'data_digest': data_digest,
                 'planned_steps': planned, 'pool_round': pool_round, 'renew_due': renew_due}
        if head is not None:
            state['dense_head'] = head.state_dict()
        if ema is not None:
            state['ema'] = ema.state_dict()
        # Temp file, fsync, rename: a run killed at any moment (SIGKILL, power) leaves either
        # the previous checkpoint or the new one, never half of one.
        tmp = out / ('.%s.pt.tmp' % kind)
        with open(tmp, 'wb') as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, out / ('%s.pt' % kind))

    track_misses = config.hard_positive_fraction > 0  # positives' miss scores into hardness
    bar = tqdm(total=steps, initial=step, disable=not progress or not accelerator.is_main_process,
               desc=config.name, dynamic_ncols=True)
    # Per teacher term in use, its value at each step since the last log line (unweighted).
    term_names = [name for name, on in (('gray_teacher', teacher is not None),
                                        ('view_teacher', view_teacher is not None),
                                        ('scene_teacher', config.scene_teacher_weight > 0))
                  if on]
    running, running_terms = [], {name: [] for name in term_names}
    stop_reason = 'done'
    loop_started = time.time() - (checkpoint or {}).get('loop_elapsed_s', 0.0)
    rate_mark = None  # plan_minutes: (step, time) where the rate measurement starts
    while step < steps:
        rng = np.random.default_rng([config.seed, step, accelerator.process_index])
        if config.pipeline == 'torch':
            chosen = sample_ids_vectorized(pool, config, rng, hardness, groups)
            index = torch.from_numpy(chosen).to(device)
            target = pool_masks[index].float() / 255.0
            if pool_teacher is not None:  # augmented with the mask: (B, t, t, 2)
                target = torch.stack([target, pool_teacher[index].float() / 255.0], -1)
            tiles = pool_tiles[index].float()
            if config.augment:
                generator = torch.Generator(device=device)
                generator.manual_seed(int(rng.integers(2 ** 62)))
                tiles, target, *kept = augment_torch(
                    tiles, target, generator, config.invert_probability, config.gray_fraction,
                    config.color_gain, config.channel_gamma, keep_colour=teacher is not None)
            pixels = preprocess_torch(tiles, pixel_size)
            if teacher is not None:
                colour_pixels, grayed = preprocess_torch(kept[0], pixel_size), kept[1]
            if pool_teacher is not None:
                target, taught = target[..., 0], target[..., 1]
            masks = None if fixed else target.cpu().numpy()
        else:
            tiles, masks, chosen, *kept = sample_batch(pool, config, rng, hardness,
                                                       keep_colour=teacher is not None)
            pixels = _model_input(preprocess_tiles(
                tiles if tiles.ndim == 4 else tiles[..., None], pixel_size), device)
            if teacher is not None:
                colour_pixels = _model_input(preprocess_tiles(kept[0], pixel_size), device)
                grayed = torch.from_numpy(kept[1]).to(device)
            if pool.teacher is not None:  # sample_batch augmented them with the mask
                masks, taught = masks[..., 0], torch.from_numpy(
                    np.ascontiguousarray(masks[..., 1])).to(device)
            target = torch.from_numpy(np.ascontiguousarray(masks)).to(device)
        for group, factor in zip(optimizer.param_groups, rate_factors):
            group['lr'] = learning_rate(config, step, steps) * factor
        boxes = None if fixed else torch.from_numpy(
            jittered_boxes(masks, input_size, config.box_jitter, rng)).to(accelerator.device)
        views = None if view_teacher is None else torch.from_numpy(
            rng.integers(0, 4, len(pixels))).to(device)

        peaks = np.zeros(len(chosen), np.float32)
        misses = np.ones(len(chosen), np.float32)

        def to_target(low_res):
            return torch.nn.functional.interpolate(
                low_res[:, None], size=target.shape[-2:], mode='bilinear',
                align_corners=False)[:, 0]

        def chunk_loss(rows: slice, backward_scale: float):
            dense = embeddings = None
            with torch.autocast(accelerator.device.type, dtype=torch.bfloat16,
                                enabled=precision == 'bf16'):
                if training_net:
                    low_res, dense, embeddings = net(pixels[rows])
                elif fixed:
                    low_res = net(pixels[rows])
                else:
                    low_res = net(pixel_values=pixels[rows], input_boxes=boxes[rows],
                                  multimask_output=False).pred_masks[:, 0, 0]
            # The losses in fp32 whatever the forward pass ran in.
            low_res = None if low_res is None else low_res.float()
            dense = None if dense is None else dense.float()
            value = 0.0
            # What the peak loss excludes around satellites, once for both losses (validate()
            # allows peak_weight > 0 with loss 'bce_dice' only).
            near = (satellite_surroundings(target[rows])
                    if config.peak_weight > 0 or config.rank_weight > 0 or track_misses
                    else None)
            if low_res is not None:
                logits = to_target(low_res)
                value = segmentation_loss(config.loss, logits, target[rows], config.pos_weight,
                                          config.dice_weight, config.peak_weight,
                                          config.peak_pixels, near)
                if config.rank_weight > 0:
                    value = value + config.rank_weight * rank_loss(
                        logits, target[rows], config.rank_margin, near)
            if dense is not None:
                dense_logits = to_target(dense)
                dense_loss = segmentation_loss(config.loss, dense_logits, target[rows],
                                               config.pos_weight, config.dice_weight,
                                               config.peak_weight, config.peak_pixels, near)
                value = dense_loss if low_res is None else value + (
                    config.dense_weight * dense_loss)
                if low_res is None:
                    logits = dense_logits
            if teacher is not None:
                term = gray_teacher_loss(teacher, embeddings, colour_pixels[rows], grayed[rows],
                                         precision)
                value = value + config.gray_teacher_weight * term
                step_terms['gray_teacher'].append(float(term.detach()) * backward_scale)
            if view_teacher is not None:
                term = view_teacher_loss(view_teacher, low_res, pixels[rows], views[rows],
                                         precision)
                value = value + config.view_teacher_weight * term
                step_terms['view_teacher'].append(float(term.detach()) * backward_scale)
            if config.scene_teacher_weight > 0:
                term = torch.nn.functional.binary_cross_entropy_with_logits(logits,
                                                                            taught[rows])
                value = value + config.scene_teacher_weight * term
                step_terms['scene_teacher'].append(float(term.detach()) * backward_scale)
            flat = logits.detach().flatten(1)
            peaks[rows] = torch.sigmoid(flat.amax(1)).cpu().numpy()
            if track_misses:
                misses[rows] = miss_scores(flat, target[rows].flatten(1) > 0.5, near).numpy()
            accelerator.backward(value * backward_scale)
            return value.detach()

        optimizer.zero_grad(set_to_none=True)
        # Each teacher term of each chunk, scaled by its share (lists: thread-safe appends).
        step_terms = {name: [] for name in term_names}
        loss = _forward_backward(chunk_loss, len(pixels), workers, worker_threads)
        if config.grad_clip > 0:
            accelerator.clip_grad_norm_(trained_parameters, config.grad_clip)
        optimizer.step()
        if ema is not None:
            update_ema(ema, accelerator.unwrap_model(model), ema_decay_at(config.ema_decay,
                                                                          step + 1))
        negative_rows = ~pool.positive[chosen]
        hardness[chosen[negative_rows]] = peaks[negative_rows]
        if track_misses:
            hardness[chosen[~negative_rows]] = misses[~negative_rows]
        step += 1
        running.append(float(loss.detach()))
        for name in term_names:
            running_terms[name].append(sum(step_terms[name]))
        bar.update(1)
        stopping = step == stop_at_step or bool(
            config.max_minutes and time.time() - started > 60 * config.max_minutes)
        renew_due = bool(config.renew_pool_every and step % config.renew_pool_every == 0
                         and step < steps)
        if renew_due and not stopping:  # a stopping run leaves the renewal to its resume
            renew_due = False
            # Free the old pool first: two would not fit where one nearly fills the memory.
            pool = groups = pool_tiles = pool_masks = pool_teacher = None
            pool_round += 1
            pool, data_digest = cut_pool(pool_round)
            groups, pool_tiles, pool_masks, pool_teacher = on_device(pool)
            hardness = np.ones(len(pool.tiles), np.float32)
            LOG.info('step %d: pool renewed (round %d): %d tiles (%d positive)', step,
                     pool_round, len(pool.tiles), int(pool.positive.sum()))
        if planned is None and config.plan_minutes > 0:
            if rate_mark is None and step >= PLAN_FROM_STEP:
                rate_mark = (step, time.time())
            elif rate_mark and step >= max(config.warmup_steps, rate_mark[0] + 5):
                rate = (step - rate_mark[0]) / max(1e-6, time.time() - rate_mark[1])
                planned = steps = plan_steps(config, step, rate, time.time() - loop_started)
                bar.total = steps
                LOG.info('plan_minutes %.1f: %.2f steps/s, %d steps planned', config.plan_minutes,
                         rate, steps)
        if step % config.log_every == 0 or step == steps:
            record = {'step': step, 'loss': float(np.mean(running)),
                      'lr': optimizer.param_groups[0]['lr'],
                      'elapsed_s': round(time.time() - started, 1)}
            # The teachers' terms unweighted, and also inside 'loss' (times their weights).
            record.update((name, float(np.mean(running_terms[name]))) for name in term_names)
            running, running_terms = [], {name: [] for name in term_names}
            history.append(record)
            bar.set_postfix(loss='%.4f' % record['loss'])
            LOG.info('step %d loss %.4f lr %.2e %.0fs%s', step, record['loss'], record['lr'],
                     record['elapsed_s'], ''.join(' %s %.4f' % (name, record[name])
                                                  for name in term_names))
        if step % config.val_every == 0 or step == steps:
            net.eval()
            judged = ema if ema is not None else accelerator.unwrap_model(model)
            result = validate(judged, val_scenes, config.prompt_mode,
                              config.grid_points, config.model_sizes[0], config.min_area_px,
                              config.tile_size, max_detections=config.max_detections,
                              head=head if config.stage == 'dense' else None)
            net.train()
            entry = {'step': step, 'val_accuracy': result['accuracy'],
                     'val_mean_iou': result['mean_iou'],
                     'val_threshold': result['best_threshold'],
                     'val_seed_threshold': result['best_seed_threshold'],
                     'elapsed_s': round(time.time() - started, 1)}
            history.append(entry)
            LOG.info('validation at step %d: accuracy %.3f mIoU %.3f (threshold %.2f, seed %s)',
                     step, result['accuracy'], result['mean_iou'], result['best_threshold'],
                     result['best_seed_threshold'])
            if (result['accuracy'], result['mean_iou']) > (best['accuracy'], best['mean_iou']):
                best = {'accuracy': result['accuracy'], 'mean_iou': result['mean_iou'],
                        'step': step, 'threshold': result['best_threshold'],
                        'seed_threshold': result['best_seed_threshold']}
                if accelerator.is_main_process:
                    save('best')
                    export_model(judged, out / 'best_model', config,
                                 result['best_threshold'], provenance(config, best, step,
                                                                      time.time() - started),
                                 result['best_seed_threshold'])
            plot_history(history, out / 'curves.png')
        if accelerator.is_main_process and (step % config.checkpoint_every == 0
                                            or step == steps):
            save('last')
        if stopping:
            stop_reason = 'stopped at step %d' % step if step == stop_at_step else 'max_minutes'
            if accelerator.is_main_process:
                save('last')
            break
    bar.close()
    summary = {'name': config.name, 'steps': step, 'planned_steps': steps,
               'stop_reason': stop_reason, 'best': best,
               'train_seconds': round(time.time() - started, 1), 'machine': machine()}
    if accelerator.is_main_process:
        atomic_write_text(out / 'summary.json', json.dumps(summary, indent=2) + '\n')
    return summary


def export_checkpoint(checkpoint_path: os.PathLike | str, directory: os.PathLike | str,
                      threshold: float = 0.5) -> Path:
    """Write the model of any checkpoint (e.g. ``last.pt``) as a runtime model folder.

    Validation picks ``best_model`` automatically; this is for choosing another step by hand
    (then calibrate the threshold with ``sat-seg calibrate``).
    """
    checkpoint = read_checkpoint(checkpoint_path)
    config = TrainConfig(**stored_config(checkpoint, checkpoint_path))
    step = checkpoint['step']
    # The exported step's own validation (None when it had none); the run's best beside it.
    at_step = [h for h in checkpoint['history'] if h.get('step') == step and 'val_accuracy' in h]
    # An average of checkpoints (sat-seg train --average) was never validated as such.
    validation = None if not at_step or 'averaged_from' in checkpoint else {
        'step': step, 'accuracy': at_step[-1]['val_accuracy'],
        'mean_iou': at_step[-1]['val_mean_iou'], 'threshold': at_step[-1]['val_threshold'],
        'seed_threshold': at_step[-1].get('val_seed_threshold')}
    record = provenance(config, validation, step, checkpoint['elapsed_s'])
    record['run_best'] = checkpoint['best']
    record['exported_from'] = str(checkpoint_path)
    if 'averaged_from' in checkpoint:
        record['averaged_from'] = checkpoint['averaged_from']
    if checkpoint.get('ema') is not None:
        record['weights'] = 'ema: the moving average of the run (ema_decay %g)' % config.ema_decay
    directory = Path(directory)
    export_model(model_from_checkpoint(checkpoint, model_weights(checkpoint)), directory, config,
                 threshold, record)
    return directory


def provenance(config: TrainConfig, best: Dict[str, Any], step: int,
               elapsed: float) -> Dict[str, Any]:
    """Where a model came from: recipe, data, step, validation metric, time and machine."""
    return {'recipe': config.name, 'train_config': dataclasses.asdict(config),
            'step': step, 'validation': best, 'train_seconds': round(elapsed, 1),
            'machine': machine()}


def machine() -> str:
    """Return a short description of the machine that ran the job."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'
    return '%s, %d cores, %s, torch %s' % (platform.machine(), os.cpu_count() or 0, device,
                                           torch.__version__)


def plot_history(history: Sequence[Dict[str, Any]], path: Path) -> None:
    """Write the loss and validation-accuracy curves as a PNG (atomically)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    losses = [(h['step'], h['loss']) for h in history if 'loss' in h]
    vals = [(h['step'], h['val_accuracy'], h['val_mean_iou']) for h in history
            if 'val_accuracy' in h]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    if losses:
        left.plot(*zip(*losses))
    left.set_xlabel('step')
    left.set_ylabel('training loss')
    left.set_yscale('log')
    if vals:
        steps, accuracy, miou = zip(*vals)
        right.plot(steps, accuracy, marker='o', label='accuracy')
        right.plot(steps, miou, marker='s', label='mean IoU')
        right.legend()
    right.set_xlabel('step')
    right.set_ylim(0, 1)
    right.set_title('validation (512)')
    figure.tight_layout()
    tmp = path.parent / ('.' + path.name + '.tmp.png')
    figure.savefig(str(tmp), dpi=80)
    plt.close(figure)
    os.replace(tmp, path)
