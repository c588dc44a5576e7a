"""``sat-seg demo``: the main job (``make demo``) on the bundled sample bag and default model."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = 'the main job on the bundled sample: node + bag replay over DDS, outputs in demo_out/'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg demo`` options."""
    parser.add_argument('--out', type=Path, default=Path('demo_out'),
                        help='output folder (default demo_out)')
    parser.add_argument('--bag', type=Path, default=None,
                        help='input bag (default: the bundled sample bag in '
                             'sat_seg_ros/data/sample_bag)')
    parser.add_argument('--model', type=Path, default=None,
                        help='model folder (default: the bundled default model)')
    parser.add_argument('--backend', default='torch', help='torch | onnxruntime | tensorrt')
    parser.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID for the node and replay (default: random 40-99)')
    parser.add_argument('--mode', default='',
                        help="a named mode of the model's sat_seg.json for the node, e.g. "
                             "multiscale (default: the model's default settings)")
    parser.add_argument('--rate', type=float, default=1.0,
                        help='replay speed factor; frames still wait for their mask')
    parser.add_argument('--startup-timeout', type=float, default=300.0,
                        help='seconds to wait for the node to load its model and subscribe')


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when every published frame got its mask, 1 otherwise."""
    import sys

    from sat_seg_ros.demo import run_demo

    try:
        summary = run_demo(out=args.out, bag=args.bag, model=args.model, backend=args.backend,
                           device=args.device, domain_id=args.domain_id, rate=args.rate,
                           startup_timeout_s=args.startup_timeout, mode=args.mode)
    except RuntimeError as error:  # the node or the replay failed: say which, no traceback
        print('sat-seg demo: error: %s' % error, file=sys.stderr)
        return 1
    complete = summary['frames_published'] > 0 and (
        summary['masks_received'] == summary['frames_published'])
    return 0 if complete else 1
