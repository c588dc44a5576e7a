"""Typed Segmenter configuration and the model folder's ``sat_seg.json`` (no ROS import)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
import re
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / 'models' / 'default'
DEFAULT_THRESHOLD = 0.65
MODEL_INFO_FILE = 'sat_seg.json'
PROMPT_MODES = ('grid', 'box', 'none')
MODE_NAME = r'[a-z0-9_-]+'
#: How colour frames enter the model: 'rgb' as they are, 'luma' reduced to their Rec. 601
#: luminance first (for a model trained on gray scenes, whose colour channels were always
#: equal, so colour differences would reach it as features it never learnt).
INPUT_COLORS = ('rgb', 'luma')

#: Values used when a model directory has no ``sat_seg.json`` or leaves a key out.
MODEL_INFO_DEFAULTS: Dict[str, Any] = {
    'model_size': 512,
    'tile_size': 256,
    'tile_overlap': 0,
    'prompt_mode': 'grid',
    'grid_points': 4,
    'input_color': 'rgb',
    'threshold': DEFAULT_THRESHOLD,
    'seed_threshold': None,
    'min_area_px': 16,
    'max_detections': 0,
    'flips': 1,
    'fuse_sizes': (),
    'fuse_gate': 0.0,
    'fuse_max_tiles': 0,
}

#: Test-time flips: each tile also runs mirrored, and the probabilities are averaged.
FLIPS = (1, 2, 4)

#: What a ``by_model_size`` entry of ``sat_seg.json`` may set for frames run at that model size,
#: and a ``modes`` entry for its named mode (``calibration`` is its record, like the top-level
#: one).
SIZE_KEYS = ('threshold', 'seed_threshold', 'min_area_px', 'max_detections', 'flips',
             'tile_overlap', 'fuse_sizes', 'fuse_gate', 'fuse_max_tiles', 'input_color',
             'calibration')


@dataclasses.dataclass
class SegmenterConfig:
    """How a frame is cut, run and turned into a mask.

    ``None`` for ``threshold``, ``seed_threshold``, ``prompt_mode``, ``grid_points`` or
    ``input_color`` means "take the model's ``sat_seg.json`` value, else the package default".
    ``input_color`` 'luma' turns colour frames into gray (Rec. 601 luminance) before resizing;
    'rgb' keeps their channels. ``threshold`` draws the mask; a component of it counts only
    when its peak probability exceeds ``seed_threshold`` (hysteresis; the default None, or any
    value at or below ``threshold``, keeps every component). ``flips`` 2 also runs every tile
    mirrored left-right, 4 also upside down and both, and averages the probabilities (2x / 4x
    the model time).
    ``fuse_sizes`` (multi-scale averaging): the frame also runs at each of these model sizes,
    and the probability maps, at the frame's resolution, are averaged with ``model_size``'s
    (each size adds its tiles' model time: 512 with 1024 runs 4 + 16 tiles).
    ``fuse_gate`` (0 = off, else a probability below 1) runs a fused size's tile only where
    ``model_size``'s map, over the part of the frame the tile covers, peaks above it; the
    tiles left out take ``model_size``'s map as that size's (the fusion there is the model
    size's map). The frame's model size always runs in full.
    ``fuse_max_tiles`` (0 = no cap) bounds the fused sizes' tiles per frame, all sizes together:
    of the tiles the gate lets through, those over the highest peaks of ``model_size``'s map
    run, so the worst case costs the model size's tiles plus this many.
    """

    model_size: int = 512
    tile_size: int = 256
    tile_overlap: int = 0
    batch_size: int = 16
    threshold: Optional[float] = None
    seed_threshold: Optional[float] = None
    min_area_px: int = 16
    max_detections: int = 0  # keep the N highest-scoring components; 0 = all
    prompt_mode: Optional[str] = None
    grid_points: Optional[int] = None
    input_color: Optional[str] = None
    flips: int = 1
    fuse_sizes: Tuple[int, ...] = ()
    fuse_gate: float = 0.0
    fuse_max_tiles: int = 0  # at most this many fused tiles per frame; 0 = no cap

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and the values it accepts."""
        _check_int(self, 'tile_size', minimum=16)
        _check_int(self, 'model_size', minimum=self.tile_size)
        _check_int(self, 'tile_overlap', minimum=0)
        if self.tile_overlap >= self.tile_size // 2:
            raise ValueError(
                'tile_overlap=%d must be smaller than half of tile_size=%d'
                % (self.tile_overlap, self.tile_size))
        _check_int(self, 'batch_size', minimum=1)
        _check_int(self, 'min_area_px', minimum=0)
        _check_int(self, 'max_detections', minimum=0)
        if self.threshold is not None:
            check_threshold(self.threshold)
        if self.seed_threshold is not None:
            check_threshold(self.seed_threshold, 'seed_threshold')
        if self.prompt_mode is not None and self.prompt_mode not in PROMPT_MODES:
            raise ValueError('prompt_mode=%r is not one of %s' % (self.prompt_mode, PROMPT_MODES))
        if self.grid_points is not None:
            _check_int(self, 'grid_points', minimum=1)
        if self.input_color is not None and self.input_color not in INPUT_COLORS:
            raise ValueError('input_color=%r is not one of %s' % (self.input_color, INPUT_COLORS))
        if isinstance(self.flips, bool) or self.flips not in FLIPS:
            raise ValueError('flips=%r is not one of %s (views averaged per tile)'
                             % (self.flips, FLIPS))
        self.fuse_sizes = check_fuse_sizes(self.fuse_sizes, self.model_size, self.tile_size)
        self.fuse_gate = check_fuse_gate(self.fuse_gate)
        self.fuse_max_tiles = check_fuse_max_tiles(self.fuse_max_tiles)

    def resolved(self, model_info: Dict[str, Any]) -> 'SegmenterConfig':
        """Return a copy with every ``None`` filled from ``model_info`` (a ``sat_seg.json``)."""
        filled = dataclasses.replace(self)
        for name in ('threshold', 'seed_threshold', 'prompt_mode', 'grid_points',
                     'input_color'):
            if getattr(filled, name) is None:
                setattr(filled, name, model_info.get(name, MODEL_INFO_DEFAULTS[name]))
        filled.validate()
        return filled


def fusion_label(config: SegmenterConfig) -> str:
    """Return what follows the model size in logs for ``config`` (:func:`describe_fusion`)."""
    return describe_fusion(config.fuse_sizes, config.fuse_gate, config.fuse_max_tiles)


def describe_fusion(fuse_sizes: Sequence[int], fuse_gate: float = 0.0,
                    fuse_max_tiles: int = 0) -> str:
    """Return what follows the model size in logs, or '' without fused sizes.

    E.g. ' + 768 + 1024 (fuse_gate 0.70)', or ' + 768 + 1024 (fuse_gate 0.70, fuse_max_tiles
    12)' with a cap.
    """
    fused = ''.join(' + %d' % size for size in fuse_sizes)
    limits = []
    if fuse_gate:
        limits.append('fuse_gate %.2f' % fuse_gate)
    if fuse_max_tiles:
        limits.append('fuse_max_tiles %d' % fuse_max_tiles)
    if fused and limits:
        fused += ' (%s)' % ', '.join(limits)
    return fused


def check_threshold(value: float, name: str = 'threshold') -> float:
    """Return ``value`` as float if it is a probability strictly inside (0, 1), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError('%s=%r must be a number strictly between 0 and 1' % (name, value))
    return float(value)


def check_fuse_sizes(value: Any, model_size: int, tile_size: int) -> Tuple[int, ...]:
    """Return ``value`` (a list of further model sizes) as a tuple, or raise naming the fix."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError('fuse_sizes=%r must be a list of model sizes, e.g. [1024] (empty: '
                         'none)' % (value,))
    for size in value:
        if isinstance(size, bool) or not isinstance(size, int) or size < tile_size:
            raise ValueError('fuse_sizes=%r: %r is not a model size (an integer >= tile_size '
                             '%d)' % (list(value), size, tile_size))
    if model_size in value or len(set(value)) != len(value):
        raise ValueError('fuse_sizes=%r must name each further size once and not model_size %d'
                         % (list(value), model_size))
    return tuple(value)


def check_fuse_gate(value: Any) -> float:
    """Return ``value`` as float if it is 0 (no gate) or a probability below 1, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError('fuse_gate=%r must be 0 (every fused tile runs) or a probability '
                         'below 1 (a fused tile runs where the map at the model size peaks '
                         'above it)' % (value,))
    return float(value)


def check_fuse_max_tiles(value: Any) -> int:
    """Return ``value`` if it is an integer >= 0 (0: no cap on the fused tiles), else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError('fuse_max_tiles=%r must be an integer >= 0: at most this many tiles of '
                         'the fused sizes run per frame (0: no cap)' % (value,))
    return value


def parse_size_list(text: str) -> Tuple[int, ...]:
    """Parse comma-separated model sizes ('1024', '1024, 2048'); '' or 'none' is none."""
    compact = text.replace(' ', '').lower()
    if compact in ('', 'none'):
        return ()
    if not re.fullmatch(r'[0-9]+(,[0-9]+)*', compact):
        raise ValueError('%r is not a comma-separated list of model sizes (e.g. 1024) or '
                         "'none'" % text)
    return tuple(int(part) for part in compact.split(','))


def _check_int(config: SegmenterConfig, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError('%s=%r must be an integer >= %d' % (name, value, minimum))


def load_model_info(model_dir: os.PathLike | str) -> Dict[str, Any]:
    """Return the model directory's ``sat_seg.json`` merged over MODEL_INFO_DEFAULTS.

    The file is optional; a file that is present but not a JSON object raises ValueError.
    """
    info = dict(MODEL_INFO_DEFAULTS)
    path = Path(model_dir) / MODEL_INFO_FILE
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError('%s is not valid JSON: %s' % (path, error)) from None
        if not isinstance(loaded, dict):
            raise ValueError('%s must hold a JSON object, not %s' % (path, type(loaded).__name__))
        info.update(loaded)
    _check_by_model_size(info, path)
    _check_modes(info, path)
    return info


def size_key(model_size: int, fuse_sizes=()) -> str:
    """Return the ``by_model_size`` key of a mode: '1024', or '512+1024' with fused sizes."""
    return '+'.join(str(size) for size in (model_size,) + tuple(fuse_sizes))


def _parse_size_key(key: Any) -> Optional[Tuple[int, ...]]:
    parts = str(key).split('+')
    if not all(part.isdigit() and int(part) > 0 for part in parts):
        return None
    return tuple(int(part) for part in parts)


def _check_by_model_size(info: Dict[str, Any], path: Path) -> None:
    sizes = info.get('by_model_size', {})
    if not isinstance(sizes, dict):
        raise ValueError('%s: by_model_size must map model sizes to settings, e.g. '
                         '{"1024": {"threshold": 0.4}}, not %r' % (path, sizes))
    for key, entry in sizes.items():
        mode = _parse_size_key(key)
        if mode is None:
            raise ValueError('%s: by_model_size key %r is not a model size (a positive '
                             'integer, e.g. "1024", or fused sizes, e.g. "512+1024")'
                             % (path, key))
        if mode == (info['model_size'],):
            raise ValueError("%s: by_model_size has an entry for the model's own model_size %s; "
                             'its values belong at the top level' % (path, key))
        if not isinstance(entry, dict) or set(entry) - set(SIZE_KEYS):
            raise ValueError('%s: by_model_size[%r] must be an object with keys among %s, not %r'
                             % (path, key, list(SIZE_KEYS), entry))
        if len(mode) > 1 and tuple(entry.get('fuse_sizes', mode[1:])) != mode[1:]:
            raise ValueError('%s: by_model_size[%r] has fuse_sizes %r; its key fuses %s'
                             % (path, key, entry['fuse_sizes'], list(mode[1:])))


def _check_modes(info: Dict[str, Any], path: Path) -> None:
    modes = info.get('modes', {})
    if not isinstance(modes, dict):
        raise ValueError('%s: modes must map mode names to settings, e.g. {"accurate": '
                         '{"flips": 4, "threshold": 0.4}}, not %r' % (path, modes))
    for name, entry in modes.items():
        if not re.fullmatch(MODE_NAME, str(name)):
            raise ValueError('%s: mode name %r must be lower-case letters, digits, - or _'
                             % (path, name))
        if not isinstance(entry, dict) or set(entry) - set(SIZE_KEYS):
            raise ValueError('%s: modes[%r] must be an object with keys among %s, not %r'
                             % (path, name, list(SIZE_KEYS), entry))


def mode_names(info: Dict[str, Any]) -> List[str]:
    """Return the named modes a ``sat_seg.json`` offers (sorted)."""
    return sorted(info.get('modes') or {})


def info_for_size(info: Dict[str, Any], model_size: int,
                  fuse_sizes: Optional[Tuple[int, ...]] = None,
                  mode: Optional[str] = None) -> Dict[str, Any]:
    """Return ``info`` (a ``sat_seg.json``) as it applies to frames run at ``model_size``.

    Post-processing calibrated at one model size does not carry to another (probability maps
    of the same scene differ), so ``by_model_size[str(model_size)]`` overrides the top-level
    threshold, seed threshold, smallest component, kept detections, flips, tile overlap, input
    colour and fuse_sizes when present. The top-level ``fuse_sizes`` are fused with the model's
    own size only.
    ``fuse_sizes`` (None: the model's, as just resolved) chooses the fusion; a fused mode's
    own entry (``by_model_size["512+1024"]``, what ``calibrate --fuse-sizes 1024`` writes)
    then overrides in turn.
    ``mode`` (None or '': the default) names an entry of ``modes``: settings calibrated
    together at the model's own size (e.g. "accurate": tile overlap and flips with their own
    thresholds), applied over the top level; ``fuse_sizes`` still overrides the fusion.
    """
    if mode:
        modes = info.get('modes') or {}
        if mode not in modes:
            raise ValueError('mode %r is not among the modes of this model: %s' % (
                mode, ', '.join(mode_names(info)) or 'none (calibrate one with --mode NAME)'))
        if model_size != info['model_size']:
            raise ValueError('mode %r holds settings calibrated at model size %s, not %s'
                             % (mode, info['model_size'], model_size))
        merged = dict(info, **modes[mode])
        if fuse_sizes is not None:
            merged['fuse_sizes'] = tuple(fuse_sizes)
        return merged
    entries = info.get('by_model_size', {})
    merged = dict(info)
    if model_size != info['model_size']:
        merged['fuse_sizes'] = ()  # sizes fused with the model's own; an entry may set its own
    merged.update(entries.get(str(model_size)) or {})
    if fuse_sizes is not None:
        merged['fuse_sizes'] = tuple(fuse_sizes)
    fused = tuple(merged.get('fuse_sizes') or ())
    if fused:
        merged.update(entries.get(size_key(model_size, fused)) or {})
    return merged


def write_model_info(model_dir: os.PathLike | str, info: Dict[str, Any]) -> Path:
    """Write ``info`` as the model directory's ``sat_seg.json`` atomically; return its path."""
    path = Path(model_dir) / MODEL_INFO_FILE
    atomic_write_text(path, json.dumps(info, indent=2, sort_keys=True) + '\n')
    return path


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix='.' + path.name + '.', suffix='.tmp', dir=path.parent)
    try:
        os.fchmod(handle, 0o644)  # mkstemp's 0600 would hide outputs from other users
        with os.fdopen(handle, 'wb') as stream:
            stream.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode('utf-8'))


def resolve_model_dir(model_dir: Optional[os.PathLike | str]) -> Path:
    """Return the model folder to use: ``model_dir``, or the bundled default when it is None/empty.

    Raises FileNotFoundError with the fix when the folder or its ``config.json`` is missing.
    """
    if model_dir in (None, ''):
        path = DEFAULT_MODEL_DIR
        if not (path / 'config.json').is_file():
            raise FileNotFoundError(
                'no model given and the bundled default model is missing at %s; pass --model DIR '
                '(a SamModel folder with config.json) or restore the bundled model' % path)
        return path
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError('model folder %s does not exist' % path)
    if not (path / 'config.json').is_file():
        raise FileNotFoundError(
            'model folder %s has no config.json: it must hold Hugging Face SamModel files '
            '(config.json + model.safetensors), e.g. a local copy of facebook/sam-vit-base' % path)
    return path
