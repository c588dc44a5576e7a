"""Train a compact SamModel on 256 tiles cut exactly as the runtime cuts them.

Data flow: scenes (a dataset folder in the contract layout, or generic shapes made on the fly)
-> resized to each model size with the runtime's ``resize`` -> cut with the runtime's
``TileGrid`` -> an in-memory tile pool (uint8 tiles + soft masks; tile_pool) -> batches with a set
share of positive tiles (batches) -> the model. The run's settings are a ``TrainConfig``
(train_config). Training with the inference prompt runs the runtime's own
``SamTilePredictor``; validation runs the runtime's ``Segmenter`` over whole scenes, so training
and deployment cannot drift apart.

Checkpoints (``last.pt``, ``best.pt``) hold weights, optimizer, schedule, config, step, best metric
and history. Batches are drawn from a generator seeded by (seed, step, process), so a resumed run
continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
from pathlib import Path
import platform
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from sat_seg_ros.backends import Backend
from sat_seg_ros.config import atomic_write_text, SegmenterConfig, write_model_info
from sat_seg_ros.segmenter import Segmenter
from sat_seg_training.batches import (augment_torch, jittered_boxes, miss_scores, pool_groups,
                                      preprocess_torch, sample_batch, sample_ids_vectorized)
from sat_seg_training.losses import rank_loss, satellite_surroundings, segmentation_loss
from sat_seg_training.tile_pool import (_set_mmap_threshold, load_scenes, make_training_pool,
                                        pool_digest, POOL_MMAP_THRESHOLD, Scene, SynthSource,
                                        TilePool, TRAIN_MMAP_THRESHOLD)
# load_config: where scripts written before train_config existed import it from
from sat_seg_training.train_config import load_config, RUN_ONLY_SETTINGS, TrainConfig  # noqa: F401

LOG = logging.getLogger(__name__)

THRESHOLDS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))


# ----------------------------------------------------------------------------------------------
# Model, optimisation, validation


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


def _forward_backward(chunk_loss, batch: int, workers: int, threads: int, statistics=None):
    """Run ``chunk_loss(rows, scale)`` over the batch; return the batch loss (a tensor).

    With ``workers`` > 1 the batch is split into that many row ranges that run forward and
    backward concurrently, each on ``threads`` intra-op thread(s) (torch releases the GIL in its
    kernels and accumulates the gradients of the shared parameters under its own lock). Each
    chunk's loss is scaled by its share of the batch, so the gradient is the batch mean's for
    the pixel terms; Dice averages over each chunk's positive tiles. Two chunks sum in either
    order to the same bits, so a step stays deterministic. The model's BatchNorm layers would
    race to fold each chunk's statistics into their running ones: ``statistics`` (a
    ``bn_statistics.BatchStatistics`` of the model) makes that update once, from the whole
    batch, after the chunks have run.
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
        with (contextlib.nullcontext() if statistics is None
              else statistics.chunk(rows[index].start)):
            return chunk_loss(rows[index], scales[index])

    previous = torch.get_num_threads()
    with contextlib.nullcontext() if statistics is None else statistics.step():
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


# ----------------------------------------------------------------------------------------------
# The run: its start, its batches, its loss and the loop


def resumable_checkpoint(config: TrainConfig, out: Path) -> Optional[Dict[str, Any]]:
    """Return ``out``/last.pt when it is there and was written with ``config``; else None.

    A checkpoint of another config is refused: resuming it would train something else.
    """
    if not (out / 'last.pt').is_file():
        return None
    checkpoint = read_checkpoint(out / 'last.pt')
    current = dataclasses.asdict(config)
    # Settings added after the checkpoint was written count as unchanged, and so do the ones
    # that say where and how long it runs, not what it computes (e.g. continue a run with more
    # threads once a second run has finished).
    stored = {key: value for key, value in stored_config(checkpoint, out / 'last.pt').items()
              if key not in RUN_ONLY_SETTINGS}
    if dict(current, **stored) != current:
        raise ValueError('%s/last.pt was written with a different config; use another '
                         'out_dir or pass --no-resume to start over' % out)
    return checkpoint


def start_model(config: TrainConfig, checkpoint: Optional[Dict[str, Any]]):
    """Return the model a run starts (or resumes) with, and its dense head (None without one)."""
    if checkpoint is not None:
        model, head_state = model_from_checkpoint(checkpoint), checkpoint.get('dense_head')
    else:
        model, head_state = load_initial_model(config)
    head = None
    if config.stage == 'dense' or config.dense_weight > 0:
        head = dense_head(model)
        if head_state is not None:
            head.load_state_dict(head_state)
    return model, head


def frozen_teachers(config: TrainConfig, model, checkpoint: Optional[Dict[str, Any]], device):
    """Return the frozen copies of the start that the teacher terms compare with.

    (encoder, predictor): the starting model's encoder when ``gray_teacher_weight`` > 0, its
    predictor when ``view_teacher_weight`` > 0, else None. A fresh start's model is the start
    itself; a resumed one has moved on, so the start is read again (once, for both).
    """
    from sat_seg_ros.backends.torch_backend import SamTilePredictor

    if not (config.gray_teacher_weight > 0 or config.view_teacher_weight > 0):
        return None, None
    start = model if checkpoint is None else load_initial_model(config)[0]
    encoder = predictor = None
    if config.gray_teacher_weight > 0:
        encoder = copy.deepcopy(start.vision_encoder).eval()
        encoder.requires_grad_(False)
        encoder.to(device)
    if config.view_teacher_weight > 0:
        predictor = SamTilePredictor(copy.deepcopy(start), config.prompt_mode,
                                     config.grid_points).eval()
        predictor.requires_grad_(False)
        predictor.to(device)
    return encoder, predictor


def moving_average(config: TrainConfig, model, checkpoint: Optional[Dict[str, Any]], out: Path):
    """Return the moving average of the weights (``ema_decay`` > 0; else None), as resumed.

    It is what the run validates and exports; the live weights train on.
    """
    if not config.ema_decay > 0:
        return None
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    if checkpoint is not None and checkpoint.get('ema') is not None:
        ema.load_state_dict(checkpoint['ema'])
    elif checkpoint is not None:
        LOG.info('%s/last.pt has no moving average: it starts from its weights', out)
    return ema


def make_optimizer(config: TrainConfig, model, head):
    """Return the optimizer, each parameter group's rate factor and every trained parameter."""
    import torch

    if config.stage == 'dense':
        # The mask decoder takes no part in stage 'dense': train the encoder and the head only.
        named = [('vision_encoder.' + n, p) for n, p in model.vision_encoder.named_parameters()]
    else:
        named = list(model.named_parameters())
    if head is not None:
        named += [('dense_head.' + n, p) for n, p in head.named_parameters()]
    trained = parameter_groups([(n, p) for n, p in named if p.requires_grad], config.lr_scale)
    optimizer_class = torch.optim.AdamW if config.optimizer == 'adamw' else torch.optim.Adam
    decay = config.weight_decay if config.optimizer == 'adamw' else 0.0
    optimizer = optimizer_class(trained, lr=config.lr, weight_decay=decay)
    return (optimizer, [group['lr_scale'] for group in trained],
            [p for group in trained for p in group['params']])


def restore_optimizer(optimizer, checkpoint: Dict[str, Any], config: TrainConfig,
                      out: Path) -> None:
    """Load the checkpoint's optimizer state; refuse one of other parameter groups by name."""
    saved = [len(group['params']) for group in checkpoint['optimizer']['param_groups']]
    sizes = [len(group['params']) for group in optimizer.param_groups]
    if saved != sizes:
        raise ValueError('%s/last.pt was trained with other parameter groups (sizes %s) than '
                         'lr_scale=%r makes (%s): resume with the lr_scale it was started '
                         'with, or start over (--no-resume)' % (out, saved, config.lr_scale,
                                                                sizes))
    optimizer.load_state_dict(checkpoint['optimizer'])


def write_checkpoint(state: Dict[str, Any], path: Path) -> None:
    """``torch.save`` the state to ``path`` through a temp file, fsync and rename.

    A run killed at any moment (SIGKILL, power) leaves either the previous checkpoint or the
    new one, never half of one.
    """
    import torch

    tmp = path.with_name('.%s.tmp' % path.name)
    with open(tmp, 'wb') as stream:
        torch.save(state, stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


class DevicePool(NamedTuple):
    """A pool on the training device for the torch pipeline: its arrays (uint8) and groups."""

    groups: Any
    tiles: Any
    masks: Any
    teacher: Any  # the scene teacher's maps, or None


def pool_on_device(pool: TilePool, config: TrainConfig, device) -> Optional[DevicePool]:
    """Return the whole pool on the training device, drawn from and augmented there.

    None with the numpy pipeline, which draws and augments on the host.
    """
    import torch

    if config.pipeline != 'torch':
        return None
    taught = None if pool.teacher is None else torch.from_numpy(pool.teacher).to(device)
    return DevicePool(pool_groups(pool, len(config.model_sizes)),
                      torch.from_numpy(pool.tiles).to(device),
                      torch.from_numpy(pool.masks).to(device), taught)


@dataclasses.dataclass
class Batch:
    """One step's tiles as the model takes them, and what its loss compares them with."""

    chosen: np.ndarray            # the pool rows drawn
    pixels: Any                   # the model input, on the training device
    target: Any = None            # the (augmented) masks in [0, 1], (B, t, t), on the device
    masks: Optional[np.ndarray] = None  # the same on the host, for box prompts (else None)
    colour_pixels: Any = None     # gray_teacher_weight > 0: each tile before it was grayed
    grayed: Any = None            # ... and whether it was
    taught: Any = None            # scene_teacher_weight > 0: the teacher's map, (B, t, t)


def draw_batch(config: TrainConfig, pool: TilePool, on_device: Optional[DevicePool], rng,
               hardness: np.ndarray, pixel_size: int, device, fixed: bool,
               keep_colour: bool) -> Batch:
    """Draw, augment and preprocess one step's batch with ``rng`` (the config's pipeline).

    ``keep_colour``: also return each tile as it was before the augmentation grayed it (the
    gray teacher's input). ``fixed``: the run trains the fixed inference prompt, so no host
    copy of the masks is made for box prompts.
    """
    import torch

    from sat_seg_ros.backends import preprocess_tiles

    if on_device is not None:
        chosen = sample_ids_vectorized(pool, config, rng, hardness, on_device.groups)
        index = torch.from_numpy(chosen).to(device)
        target = on_device.masks[index].float() / 255.0
        if on_device.teacher is not None:  # augmented with the mask: (B, t, t, 2)
            target = torch.stack([target, on_device.teacher[index].float() / 255.0], -1)
        tiles = on_device.tiles[index].float()
        if config.augment:
            generator = torch.Generator(device=device)
            generator.manual_seed(int(rng.integers(2 ** 62)))
            tiles, target, *kept = augment_torch(
                tiles, target, generator, config.invert_probability, config.gray_fraction,
                config.color_gain, config.channel_gamma, keep_colour=keep_colour)
        batch = Batch(chosen, preprocess_torch(tiles, pixel_size))
        if keep_colour:
            batch.colour_pixels, batch.grayed = preprocess_torch(kept[0], pixel_size), kept[1]
        if on_device.teacher is not None:
            target, batch.taught = target[..., 0], target[..., 1]
        batch.target, batch.masks = target, None if fixed else target.cpu().numpy()
        return batch
    tiles, masks, chosen, *kept = sample_batch(pool, config, rng, hardness,
                                               keep_colour=keep_colour)
    batch = Batch(chosen, _model_input(preprocess_tiles(
        tiles if tiles.ndim == 4 else tiles[..., None], pixel_size), device))
    if keep_colour:
        batch.colour_pixels = _model_input(preprocess_tiles(kept[0], pixel_size), device)
        batch.grayed = torch.from_numpy(kept[1]).to(device)
    if pool.teacher is not None:  # sample_batch augmented them with the mask
        masks, batch.taught = masks[..., 0], torch.from_numpy(
            np.ascontiguousarray(masks[..., 1])).to(device)
    batch.masks, batch.target = masks, torch.from_numpy(np.ascontiguousarray(masks)).to(device)
    return batch


def supervised_loss(config: TrainConfig, low_res, dense, target, near):
    """Return the loss of the mask logits and of the dense head's against ``target``.

    Either output may be None (stage 'dense' has no mask logits; a run without a dense head no
    dense logits). Also returns the logits at the target's size that the hard-tile scores are
    read from: the mask decoder's, or the dense head's where it is alone. ``near``: what the
    peak and rank losses exclude around satellites (``satellite_surroundings``), or None.
    """
    import torch

    def to_target(low):
        return torch.nn.functional.interpolate(low[:, None], size=target.shape[-2:],
                                               mode='bilinear', align_corners=False)[:, 0]

    value, logits = 0.0, None
    if low_res is not None:
        logits = to_target(low_res)
        value = segmentation_loss(config.loss, logits, target, config.pos_weight,
                                  config.dice_weight, config.peak_weight, config.peak_pixels,
                                  near)
        if config.rank_weight > 0:
            value = value + config.rank_weight * rank_loss(logits, target, config.rank_margin,
                                                           near)
    if dense is not None:
        dense_logits = to_target(dense)
        dense_loss = segmentation_loss(config.loss, dense_logits, target, config.pos_weight,
                                       config.dice_weight, config.peak_weight,
                                       config.peak_pixels, near)
        value = dense_loss if low_res is None else value + config.dense_weight * dense_loss
        if low_res is None:
            logits = dense_logits
    return value, logits


@dataclasses.dataclass
class Learner:
    """What a step trains and how: the network it runs, the frozen teachers, the settings."""

    config: TrainConfig
    accelerator: Any
    net: Any                 # what runs a batch: the training net, the predictor or the model
    teacher: Any             # gray_teacher_weight > 0: the starting encoder, frozen
    view_teacher: Any        # view_teacher_weight > 0: the starting predictor, frozen
    precision: str           # 'bf16' or 'fp32', resolved
    training_net: bool       # net returns (mask logits, dense logits, embeddings)
    fixed: bool              # train_prompt 'inference': net takes the pixels alone
    track_misses: bool       # hard_positive_fraction > 0: positives' miss scores are kept


def chunk_loss_of(learner: Learner, batch: Batch, boxes, views, peaks: np.ndarray,
                  misses: np.ndarray, terms: Dict[str, list]):
    """Return ``chunk_loss(rows, scale)`` of one step's batch for ``_forward_backward``.

    Each call runs the forward pass on its rows, adds every loss term in use, runs the backward
    pass times ``scale`` (the chunk's share of the batch) and returns the chunk's loss. Per row
    it keeps what the model did, for the hard-tile draws, in ``peaks`` (the peak probability)
    and ``misses`` (a positive's miss score), and per teacher term its value times the share
    in ``terms`` (list appends: thread-safe).
    """
    import torch

    config, accelerator = learner.config, learner.accelerator

    def chunk_loss(rows: slice, backward_scale: float):
        dense = embeddings = None
        with torch.autocast(accelerator.device.type, dtype=torch.bfloat16,
                            enabled=learner.precision == 'bf16'):
            if learner.training_net:
                low_res, dense, embeddings = learner.net(batch.pixels[rows])
            elif learner.fixed:
                low_res = learner.net(batch.pixels[rows])
            else:
                low_res = learner.net(pixel_values=batch.pixels[rows], input_boxes=boxes[rows],
                                      multimask_output=False).pred_masks[:, 0, 0]
        # The losses in fp32 whatever the forward pass ran in.
        low_res = None if low_res is None else low_res.float()
        dense = None if dense is None else dense.float()
        target = batch.target[rows]
        # What the peak loss excludes around satellites, once for both losses (validate()
        # allows peak_weight > 0 with loss 'bce_dice' only).
        near = (satellite_surroundings(target)
                if config.peak_weight > 0 or config.rank_weight > 0 or learner.track_misses
                else None)
        value, logits = supervised_loss(config, low_res, dense, target, near)
        if learner.teacher is not None:
            term = gray_teacher_loss(learner.teacher, embeddings, batch.colour_pixels[rows],
                                     batch.grayed[rows], learner.precision)
            value = value + config.gray_teacher_weight * term
            terms['gray_teacher'].append(float(term.detach()) * backward_scale)
        if learner.view_teacher is not None:
            term = view_teacher_loss(learner.view_teacher, low_res, batch.pixels[rows],
                                     views[rows], learner.precision)
            value = value + config.view_teacher_weight * term
            terms['view_teacher'].append(float(term.detach()) * backward_scale)
        if config.scene_teacher_weight > 0:
            term = torch.nn.functional.binary_cross_entropy_with_logits(logits,
                                                                        batch.taught[rows])
            value = value + config.scene_teacher_weight * term
            terms['scene_teacher'].append(float(term.detach()) * backward_scale)
        flat = logits.detach().flatten(1)
        peaks[rows] = torch.sigmoid(flat.amax(1)).cpu().numpy()
        if learner.track_misses:
            misses[rows] = miss_scores(flat, target.flatten(1) > 0.5, near).numpy()
        accelerator.backward(value * backward_scale)
        return value.detach()

    return chunk_loss


def train(config: TrainConfig, resume: bool = True, progress: bool = True,
          stop_at_step: int = 0) -> Dict[str, Any]:
    """Run (or resume) training; return the final summary (also written to summary.json).

    ``stop_at_step`` > 0 checkpoints and returns at that step, as an interrupt would.
    """
    import torch
    from accelerate import Accelerator
    from tqdm import tqdm

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

    checkpoint = resumable_checkpoint(config, out) if resume else None
    model, head = start_model(config, checkpoint)
    teacher, view_teacher = frozen_teachers(config, model, checkpoint, accelerator.device)
    trainable = apply_freeze(model, config.freeze)
    # The whole model on the training device, not only the parts a step runs: the prompt
    # encoder computes the validation predictor's fixed prompt where the decoder runs.
    model.to(accelerator.device)
    if head is not None:
        head.to(accelerator.device)
    ema = moving_average(config, model, checkpoint, out)

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
    optimizer, rate_factors, trained_parameters = make_optimizer(config, model, head)
    step, best, history = 0, {'accuracy': -1.0, 'mean_iou': -1.0, 'step': -1}, []
    if checkpoint is not None:
        restore_optimizer(optimizer, checkpoint, config, out)
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

    on_device = pool_on_device(pool, config, device)
    net.train()
    workers = config.workers if accelerator.device.type == 'cpu' else 1
    worker_threads = max(1, config.threads // workers)
    precision = resolve_precision(config.precision, accelerator.device.type)
    LOG.info('precision: %s%s', precision,
             ' (auto)' if config.precision == 'auto' else '')
    statistics = None  # workers > 1: BatchNorm's running statistics from each whole batch
    if workers > 1:
        from sat_seg_training.bn_statistics import BatchStatistics

        LOG.info('each step: %d CPU workers x %d thread(s), the batch split between them',
                 workers, worker_threads)
        statistics = BatchStatistics([model] + ([head] if head is not None else [])) or None
    # The teacher terms in use; each log line carries each alone (unweighted).
    term_names = [name for name, on in (('gray_teacher', teacher is not None),
                                        ('view_teacher', view_teacher is not None),
                                        ('scene_teacher', config.scene_teacher_weight > 0))
                  if on]
    learner = Learner(config, accelerator, net, teacher, view_teacher, precision, training_net,
                      fixed, track_misses=config.hard_positive_fraction > 0)

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
        write_checkpoint(state, out / ('%s.pt' % kind))

    bar = tqdm(total=steps, initial=step, disable=not progress or not accelerator.is_main_process,
               desc=config.name, dynamic_ncols=True)
    # Per teacher term, its value at each step since the last log line (unweighted).
    running, running_terms = [], {name: [] for name in term_names}
    stop_reason = 'done'
    loop_started = time.time() - (checkpoint or {}).get('loop_elapsed_s', 0.0)
    rate_mark = None  # plan_minutes: (step, time) where the rate measurement starts
    while step < steps:
        rng = np.random.default_rng([config.seed, step, accelerator.process_index])
        batch = draw_batch(config, pool, on_device, rng, hardness, pixel_size, device, fixed,
                           keep_colour=teacher is not None)
        for group, factor in zip(optimizer.param_groups, rate_factors):
            group['lr'] = learning_rate(config, step, steps) * factor
        boxes = None if fixed else torch.from_numpy(
            jittered_boxes(batch.masks, input_size, config.box_jitter, rng)).to(device)
        views = None if view_teacher is None else torch.from_numpy(
            rng.integers(0, 4, len(batch.pixels))).to(device)
        peaks = np.zeros(len(batch.chosen), np.float32)
        misses = np.ones(len(batch.chosen), np.float32)
        # Each teacher term of each chunk, scaled by its share.
        step_terms = {name: [] for name in term_names}
        optimizer.zero_grad(set_to_none=True)
        loss = _forward_backward(
            chunk_loss_of(learner, batch, boxes, views, peaks, misses, step_terms),
            len(batch.pixels), workers, worker_threads, statistics)
        if config.grad_clip > 0:
            accelerator.clip_grad_norm_(trained_parameters, config.grad_clip)
        optimizer.step()
        if ema is not None:
            update_ema(ema, accelerator.unwrap_model(model), ema_decay_at(config.ema_decay,
                                                                          step + 1))
        chosen = batch.chosen
        negative_rows = ~pool.positive[chosen]
        hardness[chosen[negative_rows]] = peaks[negative_rows]
        if learner.track_misses:
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
            pool = on_device = batch = None
            pool_round += 1
            pool, data_digest = cut_pool(pool_round)
            on_device = pool_on_device(pool, config, device)
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
