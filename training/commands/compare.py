"""``sat-seg compare``: two models' paired result on the same images (McNemar's test)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = ("paired comparison of two models' sat-seg evaluate reports on the same images: scenes "
        'right only with each, z and McNemar p, per dataset and summed')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg compare`` options."""
    parser.add_argument('--candidate', required=True, nargs='+', type=Path, metavar='JSON',
                        help='sat-seg evaluate --json reports of the candidate model, one per '
                             'dataset')
    parser.add_argument('--reference', required=True, nargs='+', type=Path, metavar='JSON',
                        help="the reference model's reports of the same datasets, in the same "
                             'order')
    parser.add_argument('--size', type=int, default=512,
                        help='the model size to compare (a row both reports hold; default 512)')
    parser.add_argument('--json', type=Path, default=None,
                        help='also write the counts, per dataset and summed, as JSON')


def _read(path: Path) -> dict:
    from sat_seg_training.dataset import read_json

    report = read_json(path, 'a sat-seg evaluate --json report')
    if not isinstance(report, dict) or 'rows' not in report:
        raise ValueError('%s is not a sat-seg evaluate report (no "rows")' % path)
    return report


def run(args: argparse.Namespace) -> int:
    """Print the paired table; optionally write it as JSON."""
    from sat_seg_ros.config import atomic_write_text
    from sat_seg_training.compare import format_pairs, paired, total

    if len(args.candidate) != len(args.reference):
        raise ValueError('%d candidate reports but %d reference reports: give one of each per '
                         'dataset, in the same order' % (len(args.candidate), len(args.reference)))
    pairs = [paired(_read(a), _read(b), args.size, names=(str(a), str(b)))
             for a, b in zip(args.candidate, args.reference)]
    summed = total(pairs) if len(pairs) > 1 else None
    print('model size %d: right only with the candidate (+) / only with the reference (-); z and '
          "McNemar's exact two-sided p" % args.size)
    print(format_pairs(pairs, summed))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({'pairs': pairs, 'total': summed}, indent=2)
                          + '\n')
        print('wrote %s' % args.json)
    return 0
