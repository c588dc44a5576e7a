"""The node's ROS parameters: names, types, defaults, descriptions and validation.

``config/sat_seg.yaml`` mirrors :data:`PARAMETERS` (a test keeps them equal). This module imports
no ROS package at import time: :func:`declare_parameters` imports rclpy's message types lazily,
so the table can be checked, documented and used by the launch file anywhere.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from sat_seg_ros.config import FLIPS, MODE_NAME, parse_size_list
from sat_seg_ros.qos import RELIABILITY_MODES

BACKENDS = ('torch', 'onnxruntime', 'tensorrt')
PROMPT_MODES = ('', 'grid', 'box', 'none')
INPUT_COLORS = ('', 'rgb', 'luma')
NODE_NAME = 'sat_seg'
CONFIG_FILE = Path(__file__).resolve().parent.parent / 'config' / 'sat_seg.yaml'


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One declared parameter.

    ``check`` raises ValueError for a bad value; ``read_only`` parameters are fixed at start-up
    (changing them needs a restart, e.g. the model); the others apply at run time.
    """

    name: str
    default: Any
    description: str
    read_only: bool = True
    choices: Tuple[str, ...] = ()
    int_range: Optional[Tuple[int, int]] = None
    float_range: Optional[Tuple[float, float]] = None
    check: Optional[Callable[[Any], None]] = None

    @property
    def type_name(self) -> str:
        """ROS type of the parameter: 'string', 'integer', 'double' or 'bool'."""
        return {str: 'string', int: 'integer', float: 'double', bool: 'bool'}[type(self.default)]


def _calibrated(what: str) -> Callable[[float], None]:
    """Return the check of a probability parameter whose 0.0 means the model's calibrated one."""
    def check(value: float) -> None:
        if value != 0.0 and not 0.0 < value < 1.0:
            raise ValueError("must be strictly between 0 and 1, or 0.0 for the model's "
                             'calibrated %s' % what)
    return check


def _device(value: str) -> None:
    if not re.fullmatch(r'cpu|cuda(:[0-9]+)?', value):
        raise ValueError("must be 'cpu', 'cuda' or 'cuda:N'")


def _positive_finite(value: float) -> None:
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError('must be a finite number > 0')


def _mode_name(value: str) -> None:
    if value and not re.fullmatch(MODE_NAME, value):
        raise ValueError('a mode name is lower-case letters, digits, - or _')


def _flips(value: int) -> None:
    if value not in (0,) + FLIPS:
        raise ValueError("must be 0 (the model's) or one of %s" % (FLIPS,))


def fuse_size_list(value: str) -> Optional[Tuple[int, ...]]:
    """Parse the ``fuse_sizes`` parameter: '' (the model's: None), 'none' or '1024[,2048]'."""
    if value.strip() == '':
        return None
    try:
        return parse_size_list(value)
    except ValueError:
        raise ValueError("must be '' (the model's), 'none' or comma-separated model sizes, "
                         "e.g. '1024'") from None


def _fuse_gate(value: float) -> None:
    if value != -1.0 and not 0.0 <= value < 1.0:
        raise ValueError("must be -1 (the model's), 0 (every tile) or a probability below 1")


def _alpha(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError('must be within [0, 1]')


PARAMETERS: List[ParamSpec] = [
    ParamSpec('model_path', '',
              'Model folder (Hugging Face SamModel files + sat_seg.json); empty: the bundled '
              'default model.'),
    ParamSpec('backend', 'torch', 'Inference backend.', choices=BACKENDS),
    ParamSpec('device', 'cpu', "Device for the backend: 'cpu', 'cuda' or 'cuda:N'.",
              check=_device),
    ParamSpec('model_size', 0,
              'Frames are resized to model_size x model_size before tiling; 0: the value in '
              'the sat_seg.json of the model (512 by default).', int_range=(0, 8192)),
    ParamSpec('tile_size', 0, 'Tile size in pixels; 0: the sat_seg.json value (256).',
              int_range=(0, 4096)),
    ParamSpec('tile_overlap', -1,
              'Overlap between tiles in pixels; -1: the sat_seg.json value (0).',
              int_range=(-1, 2048)),
    ParamSpec('batch_size', 16, 'Tiles per backend call.', int_range=(1, 1024)),
    ParamSpec('prompt_mode', '',
              "SAM prompt: 'grid', 'box' or 'none'; empty: the model's sat_seg.json value.",
              choices=PROMPT_MODES),
    ParamSpec('mode', '',
              "A named mode of the model's sat_seg.json (its 'modes' entry, e.g. 'accurate': "
              'tile overlap, flips and the thresholds calibrated with them); empty: the '
              'top-level settings. The other parameters still override it.',
              check=_mode_name),
    ParamSpec('input_color', '',
              "Colour frames enter the model as 'rgb', or as their luminance ('luma', for a "
              "model trained on gray scenes such as the bundled one); empty: the model's "
              "sat_seg.json value ('rgb' when absent).", choices=INPUT_COLORS),
    ParamSpec('flips', 0,
              'Views of each tile averaged: 1, 2 (+ mirrored left-right) or 4 (+ upside down '
              "and both), at 1x / 2x / 4x the model time; 0: the model's sat_seg.json value "
              '(1 when absent). The calibrated thresholds hold for that value.',
              int_range=(0, 4), check=_flips),
    ParamSpec('fuse_sizes', '',
              "Multi-scale averaging: further model sizes, e.g. '1024', whose probability maps "
              "are averaged with model_size's (each adds its tiles' model time); 'none': none; "
              "empty: the model's sat_seg.json value (none when absent). A fusion with its "
              "own by_model_size entry (e.g. '512+1024') takes its calibrated thresholds from "
              'it.', check=fuse_size_list),
    ParamSpec('fuse_gate', -1.0,
              "With fuse_sizes: a further size's tile runs only where model_size's probability "
              'map peaks above this over the part of the frame the tile covers (fewer tiles; '
              "the calibrated modes chose it on validation); 0: every tile; -1: the model's "
              'sat_seg.json value (0 when absent). Settable at run time.',
              read_only=False, float_range=(-1.0, 1.0), check=_fuse_gate),
    ParamSpec('fuse_max_tiles', -1,
              'With fuse_sizes: at most this many tiles of the further sizes run per frame, '
              "those over the highest peaks of model_size's map first (after fuse_gate), so "
              "a frame never costs more than model_size's tiles plus this many; 0: no cap; "
              "-1: the model's sat_seg.json value (0 when absent). Settable at run time (e.g. "
              'lower under load).', read_only=False, int_range=(-1, 4096)),
    ParamSpec('threshold', 0.0,
              'Probability threshold of the mask, strictly between 0 and 1; 0.0: the '
              'calibrated threshold in sat_seg.json. Settable at run time.',
              read_only=False, float_range=(0.0, 1.0), check=_calibrated('threshold')),
    ParamSpec('seed_threshold', 0.0,
              'Hysteresis: a mask component counts only when its peak probability exceeds '
              'this (threshold draws its extent); strictly between 0 and 1, a value at or '
              "below threshold gates nothing; 0.0: the model's sat_seg.json value (none if "
              'unset). Settable at run time.',
              read_only=False, float_range=(0.0, 1.0),
              check=_calibrated('seed threshold')),
    ParamSpec('min_area_px', -1,
              'Connected components smaller than this many input pixels are dropped; -1: the '
              'sat_seg.json value (16). Settable at run time.',
              read_only=False, int_range=(-1, 1 << 30)),
    ParamSpec('max_detections', -1,
              'Keep only the N highest-scoring components (0: all); -1: the sat_seg.json value '
              '(the bundled model: 1, one satellite per frame). Settable at run time.',
              read_only=False, int_range=(-1, 1 << 20)),
    ParamSpec('qos.reliability', 'auto',
              "Image subscription reliability: 'auto' matches the publishers (reliable when all "
              "offer reliable, as rosbag2 does), or force 'reliable' / 'best_effort'.",
              choices=RELIABILITY_MODES),
    ParamSpec('qos.depth', 1,
              'Image subscription queue depth; the node always processes the newest frame.',
              int_range=(1, 100)),
    ParamSpec('qos.output_depth', 5, 'Queue depth of the published topics (reliable).',
              int_range=(1, 100)),
    ParamSpec('qos.graph_check_period_s', 1.0,
              "How often 'auto' reliability re-reads the image publishers' QoS, seconds.",
              check=_positive_finite),
    ParamSpec('overlay_alpha', 0.5, 'Opacity of the mask tint in ~/overlay. Settable at run time.',
              read_only=False, float_range=(0.0, 1.0), check=_alpha),
    ParamSpec('reject_log_period_s', 5.0,
              'At most one log line per reason per this many seconds for rejected frames. '
              'Settable at run time.', read_only=False, check=_positive_finite),
    ParamSpec('diagnostics_period_s', 1.0, 'Period of the /diagnostics message, seconds.',
              check=_positive_finite),
]

SPECS: Dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}


def check_value(name: str, value: Any) -> Any:
    """Return ``value`` if valid for parameter ``name``, else raise ValueError naming both."""
    spec = SPECS.get(name)
    if spec is None:
        raise ValueError('unknown parameter %r; known: %s' % (name, ', '.join(SPECS)))
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not expected:
        raise ValueError('parameter %s=%r must be of type %s' % (name, value, spec.type_name))
    problem = None
    if spec.choices and value not in spec.choices:
        problem = 'must be one of %s' % (spec.choices,)
    elif spec.int_range and not spec.int_range[0] <= value <= spec.int_range[1]:
        problem = 'must be within [%d, %d]' % spec.int_range
    elif spec.check is not None:
        try:
            spec.check(value)
        except ValueError as error:
            problem = str(error)
    if problem:
        raise ValueError('parameter %s=%r %s' % (name, value, problem))
    return value


def check_values(values: Dict[str, Any]) -> Dict[str, Any]:
    """Check every known parameter in ``values``; return them (ints promoted for doubles)."""
    return {name: check_value(name, value) for name, value in values.items()}


def defaults() -> Dict[str, Any]:
    """Return ``{name: default}`` for every parameter."""
    return {spec.name: spec.default for spec in PARAMETERS}


def segmenter_arguments(values: Dict[str, Any]) -> Dict[str, Any]:
    """Map parameter values to ``Segmenter.from_model`` keyword arguments.

    The 'use the model's value' sentinels (0, -1, '') become None, which from_model reads as
    "take sat_seg.json, then the package default".
    """
    def unless(value: Any, sentinel: Any) -> Any:
        return None if value == sentinel else value

    return {
        'model_dir': values['model_path'] or None,
        'backend': values['backend'],
        'device': values['device'],
        'model_size': unless(values['model_size'], 0),
        'tile_size': unless(values['tile_size'], 0),
        'tile_overlap': unless(values['tile_overlap'], -1),
        'batch_size': values['batch_size'],
        'prompt_mode': unless(values['prompt_mode'], ''),
        'input_color': unless(values['input_color'], ''),
        'mode': unless(values['mode'], ''),
        'threshold': unless(values['threshold'], 0.0),
        'seed_threshold': unless(values['seed_threshold'], 0.0),
        'min_area_px': unless(values['min_area_px'], -1),
        'max_detections': unless(values['max_detections'], -1),
        'flips': unless(values['flips'], 0),
        'fuse_sizes': fuse_size_list(values['fuse_sizes']),
        'fuse_gate': unless(values['fuse_gate'], -1.0),
        'fuse_max_tiles': unless(values['fuse_max_tiles'], -1),
    }


def flatten(tree: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
    """Flatten nested YAML mappings into dotted ROS parameter names."""
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        name = prefix + str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def load_params_file(path: Path = CONFIG_FILE, node_name: str = NODE_NAME) -> Dict[str, Any]:
    """Return the flattened ``ros__parameters`` for ``node_name`` (or ``/**``) in a params file."""
    import yaml

    document = yaml.safe_load(Path(path).read_text()) or {}
    params: Dict[str, Any] = {}
    for key in ('/**', node_name, '/' + node_name):
        section = document.get(key)
        if isinstance(section, dict):
            params.update(flatten(section.get('ros__parameters', {})))
    if not params:
        raise ValueError("%s has no 'ros__parameters' for %r or '/**'" % (path, node_name))
    return params


def descriptor(spec: ParamSpec) -> Any:
    """Return an rcl_interfaces ParameterDescriptor for ``spec`` (imports rcl_interfaces)."""
    from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                    ParameterType)

    types = {'string': ParameterType.PARAMETER_STRING,
             'integer': ParameterType.PARAMETER_INTEGER,
             'double': ParameterType.PARAMETER_DOUBLE,
             'bool': ParameterType.PARAMETER_BOOL}
    constraints = ''
    if spec.choices:
        constraints = 'one of: %s' % ', '.join(repr(choice) for choice in spec.choices)
    result = ParameterDescriptor(
        name=spec.name, type=types[spec.type_name], description=spec.description,
        additional_constraints=constraints, read_only=spec.read_only)
    if spec.int_range:
        result.integer_range = [IntegerRange(from_value=spec.int_range[0],
                                             to_value=spec.int_range[1], step=1)]
    if spec.float_range:
        result.floating_point_range = [FloatingPointRange(
            from_value=spec.float_range[0], to_value=spec.float_range[1], step=0.0)]
    return result


def declare_parameters(node: Any, specs: Sequence[ParamSpec] = PARAMETERS) -> Dict[str, Any]:
    """Declare ``specs`` on an rclpy node and return their checked values.

    Raises ValueError naming the first bad parameter (from a params file or ``-p``).
    """
    values = {}
    for spec in specs:
        parameter = node.declare_parameter(spec.name, spec.default, descriptor(spec))
        values[spec.name] = parameter.value
    return check_values(values)
