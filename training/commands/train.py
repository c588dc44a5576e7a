"""``sat-seg train``: train or fine-tune a SamModel from a YAML recipe (see docs/training.md)."""

from __future__ import annotations

import argparse
import json
from typing import List

HELP = 'fine-tune a SamModel on a patch set (YAML recipe + key=value overrides)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg train`` options."""
    parser.add_argument('--config', default=None,
                        help='YAML file of TrainConfig fields (configs/*.yaml); omitted fields '
                             'keep their defaults')
    # action 'append': each --set adds its fields (a later one wins on the same key), where a
    # plain nargs option would keep only the last --set and drop the others without a word.
    parser.add_argument('--set', nargs='*', action='append', metavar='KEY=VALUE',
                        dest='overrides',
                        help='override config fields, e.g. --set steps=200 lr=3e-4 '
                             "out_dir=runs/x 'model_sizes=[512,1024]'; may be repeated")
    parser.add_argument('--no-resume', action='store_true',
                        help='start over even if OUT_DIR/last.pt exists (it is overwritten)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('--stop-at-step', type=int, default=0, metavar='N',
                        help='checkpoint and stop at step N (the schedule still spans the '
                             'configured steps; the same command later resumes)')
    parser.add_argument('--export', nargs=2, metavar=('CHECKPOINT', 'MODEL_DIR'), default=None,
                        help='do not train: write CHECKPOINT (e.g. runs/x/last.pt) as a runtime '
                             'model folder MODEL_DIR, then run sat-seg calibrate on it')


def overrides(args: argparse.Namespace) -> List[str]:
    """Return the ``key=value`` items of every ``--set``, in the order given."""
    return [item for group in args.overrides or [] for item in group]


def run(args: argparse.Namespace) -> int:
    """Train (or export a checkpoint); print the summary as JSON."""
    from sat_seg_training.train import export_checkpoint, load_config, train

    if args.export:
        print('wrote %s' % export_checkpoint(*args.export))
        return 0

    config = load_config(args.config, overrides(args))
    summary = train(config, resume=not args.no_resume, progress=not args.quiet,
                    stop_at_step=args.stop_at_step)
    print(json.dumps(summary, indent=2))
    return 0
