"""``sat-seg synth``: a synthetic aerial dataset (512 x 641 grayscale) with exact masks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = 'generate a synthetic aerial dataset with satellites and exact masks'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg synth`` options."""
    parser.add_argument('--out', required=True, type=Path, help='output dataset folder')
    parser.add_argument('--n', type=int, required=True, help='number of images')
    parser.add_argument('--seed', type=int, default=0,
                        help='random seed; image i depends only on (seed, n, i) (default 0)')
    parser.add_argument('--neg-frac', type=float, default=0.2,
                        help='fraction of images without a satellite (default 0.2)')
    parser.add_argument('--workers', type=int, default=1,
                        help='processes generating images; the output is identical for any '
                             'count (default 1; 2 helps only on an idle 2-core machine)')
    parser.add_argument('--backgrounds', type=Path, default=None, metavar='DIR',
                        help='folder of aerial photographs; a share --photo-fraction of the '
                             'backgrounds become crops of them (scaled, rotated, mirrored)')
    parser.add_argument('--photo-fraction', type=float, default=0.6,
                        help='with --backgrounds: share of photographic backgrounds '
                             '(default 0.6)')
    parser.add_argument('--exclude-backgrounds', type=Path, default=None, metavar='FILE',
                        help='with --backgrounds: a list of file names (one per line, # '
                             'comments); every file whose name starts with one of their stems '
                             'is never used (e.g. images kept for independent testing)')
    parser.add_argument('--color', action='store_true',
                        help='write RGB scenes: each is the gray scene of the same seed and '
                             'index times a chroma map (photo colours, biome palettes, '
                             'satellite materials), so its luminance and mask are the same')
    parser.add_argument('--contact', type=int, default=30,
                        help='images shown in OUT/contact_sheet.png (0: no sheet; default 30)')


def run(args: argparse.Namespace) -> int:
    """Generate the set, print a JSON summary; exit 0."""
    from tqdm import tqdm

    from sat_seg_training.synth import generate

    with tqdm(total=args.n, unit='img', desc='synth') as bar:
        summary = generate(args.out, args.n, seed=args.seed, neg_frac=args.neg_frac,
                           workers=args.workers, contact=args.contact,
                           progress=lambda done, total: bar.update(done - bar.n),
                           backgrounds=args.backgrounds, photo_fraction=args.photo_fraction,
                           exclude_list=args.exclude_backgrounds, color=args.color)
    print(json.dumps(summary, indent=1))
    return 0
