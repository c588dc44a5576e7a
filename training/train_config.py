"""A training run's settings: ``TrainConfig``, from YAML presets and ``key=value`` overrides.

A preset may build on another (``base``, read_preset); ``sat-seg train --print-config`` prints
what load_config resolves. No torch and no data here: the settings alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sat_seg_ros.config import _check_int, INPUT_COLORS
from sat_seg_training.losses import LOSSES
from sat_seg_training.models import ARCHITECTURES, CNN_ARCHITECTURES

TRAIN_PROMPTS = ('inference', 'bbox_jitter')
#: Where a batch is drawn and augmented: 'numpy' on the CPU, tile by tile (draw for draw what
#: every run before 'torch' existed did), or 'torch': the tile pool on the training device, the
#: batch drawn in one vectorised pass and augmented there (the same augmentations from another
#: random stream), which keeps a GPU busy instead of waiting on the CPU.
PIPELINES = ('numpy', 'torch')
#: 'sam': the whole model on 256 tiles; 'dense': the image encoder with a dense head on crops.
STAGES = ('sam', 'dense')
PRECISIONS = ('fp32', 'bf16', 'auto')


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
