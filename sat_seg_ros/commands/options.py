"""The options of every command that builds a Segmenter, declared once.

``sat-seg infer``, ``bag run``, ``evaluate`` and ``calibrate`` all take the options of
:func:`add_segmenter_arguments` (a command leaves out those it sets itself: ``evaluate`` has
``--sizes``, ``calibrate`` sweeps the threshold) and build their Segmenter from
:func:`segmenter_options`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Sequence

from sat_seg_ros.config import parse_size_list

#: Segmenter settings that options set, by the option's ``dest``: SegmenterConfig fields, and
#: ``mode`` (Segmenter.from_model's named mode of the model's sat_seg.json).
SEGMENTER_FIELDS = ('model_size', 'threshold', 'seed_threshold', 'min_area_px',
                    'max_detections', 'tile_overlap', 'batch_size', 'prompt_mode', 'flips',
                    'fuse_sizes', 'fuse_gate', 'fuse_max_tiles', 'input_color', 'mode')


def size_list(text: str) -> tuple:
    """Parse ``--fuse-sizes``: comma-separated model sizes, or 'none' / '' for none."""
    try:
        return parse_size_list(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class DeprecatedAlias(argparse.Action):
    """Store like the option it aliases, and say once on stderr which spelling to use."""

    def __init__(self, option_strings, dest, replacement: str = '', **kwargs) -> None:
        self.replacement = replacement
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print('%s: %s is deprecated and will be removed; use %s'
              % (parser.prog, option_string, self.replacement), file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_segmenter_arguments(parser: argparse.ArgumentParser,
                            exclude: Sequence[str] = ()) -> None:
    """Declare the model, backend and Segmenter options; ``exclude`` names dests to leave out."""
    def wanted(dest: str) -> bool:
        return dest not in exclude

    if wanted('model'):
        parser.add_argument('--model', default=None,
                            help='model folder: a Hugging Face SamModel or a sat-seg compact '
                                 'model (config.json, model.safetensors, sat_seg.json), or an '
                                 'exported folder for onnxruntime / tensorrt; default: the '
                                 'bundled model')
    parser.add_argument('--backend', default='torch',
                        choices=('torch', 'onnxruntime', 'tensorrt'),
                        help='inference runtime (default: torch)')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:N'")
    if wanted('model_size'):
        parser.add_argument('--size', type=int, default=None, dest='model_size',
                            help='model size the frame is resized to (512, 1024, 2048, ...; '
                                 "default: the model's sat_seg.json, else 512)")
        parser.add_argument('--model-size', type=int, dest='model_size', action=DeprecatedAlias,
                            replacement='--size', help='deprecated spelling of --size')
    if wanted('threshold'):
        parser.add_argument('--threshold', type=float, default=None,
                            help="probability threshold (default: the model's, else 0.65)")
    if wanted('seed_threshold'):
        parser.add_argument('--seed-threshold', type=float, default=None,
                            dest='seed_threshold',
                            help='a component counts only when its peak probability exceeds '
                                 "this (hysteresis; default: the model's, else none)")
    parser.add_argument('--min-area', type=int, default=None, dest='min_area_px',
                        help='ignore components smaller than this many pixels (default: the '
                             "model's)")
    parser.add_argument('--max-detections', type=int, default=None, dest='max_detections',
                        help='keep the N highest-scoring components (0: all; default: the '
                             "model's)")
    parser.add_argument('--tile-overlap', type=int, default=None, dest='tile_overlap',
                        help='overlap of neighbouring tiles in pixels (blended)')
    parser.add_argument('--batch-size', type=int, default=None, dest='batch_size',
                        help='tiles per backend call')
    parser.add_argument('--prompt', default=None, dest='prompt_mode',
                        choices=('grid', 'box', 'none'),
                        help="prompt mode (default: the model's)")
    parser.add_argument('--mode', default=None,
                        help="a named mode of the model's sat_seg.json (e.g. 'accurate': "
                             'settings calibrated together at its model size); default: '
                             'the top-level settings')
    parser.add_argument('--input-color', default=None, dest='input_color',
                        choices=('rgb', 'luma'),
                        help='colour frames enter the model as RGB, or as their luminance '
                             "('luma', for a model trained on gray scenes; default: the "
                             "model's)")
    parser.add_argument('--flips', type=int, default=None, choices=(1, 2, 4),
                        help='views per tile averaged (2: + mirrored left-right, 4: + upside '
                             "down and both; 2x / 4x the model time; default: the model's)")
    if wanted('fuse_sizes'):
        parser.add_argument('--fuse-sizes', type=size_list, default=None, dest='fuse_sizes',
                            help='further model sizes whose probability maps are averaged with '
                                 "--size's (e.g. 1024; 'none': none; each adds its tiles' model "
                                 "time; default: the model's)")
    if wanted('fuse_gate'):
        parser.add_argument('--fuse-gate', type=float, default=None, dest='fuse_gate',
                            help="with fused sizes, run a further size's tile only where "
                                 "--size's map peaks above this over the tile (0: every tile; "
                                 "default: the model's)")
    if wanted('fuse_max_tiles'):
        parser.add_argument('--fuse-max-tiles', type=int, default=None, dest='fuse_max_tiles',
                            help='with fused sizes, run at most this many of their tiles per '
                                 "frame, those over --size's highest peaks first (bounds the "
                                 "worst case; 0: no cap; default: the model's)")


def segmenter_options(args: argparse.Namespace) -> Dict[str, Any]:
    """Return the SegmenterConfig overrides the options set (None: the model's value)."""
    return {name: getattr(args, name) for name in SEGMENTER_FIELDS if hasattr(args, name)}


def segmenter_from_args(args: argparse.Namespace):
    """Build the Segmenter that add_segmenter_arguments' options describe."""
    from sat_seg_ros.segmenter import Segmenter

    return Segmenter.from_model(args.model, backend=args.backend, device=args.device,
                                **segmenter_options(args))
