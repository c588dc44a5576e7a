"""``sat-seg patches``: multi-scale 256 px training tiles + manifest from a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = 'cut multi-scale training tiles (with a manifest) from a dataset'


def _sizes(text: str):
    try:
        return [int(v) for v in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: give sizes like 512,1024,2048') from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg patches`` options."""
    parser.add_argument('--dataset', required=True, type=Path, help='dataset folder (with masks)')
    parser.add_argument('--out', required=True, type=Path, help='output patch-set folder')
    parser.add_argument('--sizes', type=_sizes, default=[512, 1024, 2048],
                        help='model sizes the images are resized to (default 512,1024,2048)')
    parser.add_argument('--tile-size', type=int, default=256, help='tile side (default 256)')
    parser.add_argument('--overlap', type=int, default=0, help='tile overlap in pixels')
    parser.add_argument('--empty-frac', type=float, default=0.0,
                        help='fraction of tiles without satellite pixels to keep (default 0, '
                             "the report's selection)")
    parser.add_argument('--splits', type=Path, default=None,
                        help='splits.json from `sat-seg split`: fills the manifest split column')
    parser.add_argument('--seed', type=int, default=0, help='seed for the empty-tile draw')


def run(args: argparse.Namespace) -> int:
    """Cut the tiles, print the summary; exit 0."""
    from tqdm import tqdm

    from sat_seg_training.dataset import load_dataset
    from sat_seg_training.patches import make_patches
    from sat_seg_training.splits import load_assignment

    dataset = load_dataset(args.dataset)
    assignment = load_assignment(args.splits) if args.splits else None
    with tqdm(total=len(dataset), unit='img', desc='patches') as bar:
        summary = make_patches(dataset, args.out, args.sizes, args.tile_size, args.overlap,
                               args.empty_frac, args.seed, assignment,
                               progress=lambda done, total: bar.update(done - bar.n))
    print(json.dumps(summary, indent=1))
    return 0
