"""``sat-seg split``: deterministic train / val / test split of a dataset, by image."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = 'split a dataset into train / val / test by image'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg split`` options."""
    parser.add_argument('--dataset', required=True, type=Path, help='dataset folder')
    parser.add_argument('--out', required=True, type=Path,
                        help='output folder: splits.json and train/ val/ test/ dataset folders '
                             '(images hard-linked)')
    parser.add_argument('--fractions', default='0.8,0.1,0.1',
                        help='train,val,test fractions (default 0.8,0.1,0.1)')
    parser.add_argument('--seed', type=int, default=0, help='shuffle seed (default 0)')
    parser.add_argument('--negatives', choices=('spread', 'test'), default='spread',
                        help='images without a satellite: spread over the splits like the '
                             "positives (test always gets some), or all in test (the report's "
                             'arrangement)')


def run(args: argparse.Namespace) -> int:
    """Write the split, print the counts; exit 0."""
    from sat_seg_training.dataset import load_dataset
    from sat_seg_training.splits import assign_splits, parse_fractions, write_splits

    fractions = parse_fractions(args.fractions)
    dataset = load_dataset(args.dataset)
    assignment = assign_splits(dataset, fractions, args.seed, args.negatives)
    summary = write_splits(dataset, args.out, assignment,
                           {'dataset': str(args.dataset), 'fractions': fractions,
                            'seed': args.seed, 'negatives': args.negatives})
    print(json.dumps(summary['counts'], indent=1))
    return 0
