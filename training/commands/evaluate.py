"""``sat-seg evaluate``: the report's Table 1 for a model on a dataset (uses the Segmenter)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sat_seg_ros.commands.options import add_segmenter_arguments, segmenter_options
from sat_seg_training.casts import CASTS

HELP = "the report's Table 1 (accuracy, mean IoU, precision, recall, s/image) per model size"


def _sizes(text: str):
    try:
        sizes = [int(part) for part in text.split(',') if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            '--sizes %r must be comma-separated integers, e.g. 512,1024,2048' % text) from None
    if not sizes or min(sizes) < 256:
        raise argparse.ArgumentTypeError('--sizes %r: give sizes >= 256' % text)
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg evaluate`` options."""
    parser.add_argument('--dataset', required=True, type=Path,
                        help='dataset folder (annotations.json, images/, masks/)')
    add_segmenter_arguments(parser, exclude=('model_size',))
    parser.add_argument('--sizes', type=_sizes, default=[512, 1024, 2048],
                        help='comma-separated model sizes (default 512,1024,2048)')
    parser.add_argument('--json', type=Path, default=None, help='also write the report as JSON')
    parser.add_argument('--limit', type=int, default=0,
                        help='evaluate only the first N images (default: all)')
    parser.add_argument('--gallery', type=Path, default=None,
                        help='failure gallery PNG (default: next to --json, else none)')
    parser.add_argument('--cast', default=None, choices=CASTS,
                        help='put every frame under a colour cast first, to measure how much '
                             'the model leans on colour: white-balance (channel gains 0.75-1.25 '
                             'per image, mean luminance kept), warm (R^0.8, G, B^1.3), gray '
                             '(Rec. 601 luminance)')
    parser.add_argument('--strata', action='store_true',
                        help="also print each size's accuracy by satellite size, by its "
                             "visibility (luminance step over its surroundings' spread) and, "
                             'for sat-seg synth scenes, by background (always in --json)')


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, optionally write JSON and the failure gallery."""
    from sat_seg_ros.config import atomic_write_text
    from sat_seg_training.evaluate import evaluate, format_table

    gallery = args.gallery
    if gallery is None and args.json is not None:
        gallery = args.json.with_name(args.json.stem + '_failures.png')
    report = evaluate(args.dataset, args.model, args.sizes, backend=args.backend,
                      device=args.device, limit=args.limit, gallery=gallery, cast=args.cast,
                      **segmenter_options(args))
    print(format_table(report, strata=args.strata))
    if gallery is not None:
        print('failure gallery: %s' % gallery)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(report, indent=2) + '\n')
        print('wrote %s' % args.json)
    return 0
