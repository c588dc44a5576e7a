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
    parser.add_argument('--print-config', action='store_true',
                        help="do not train: print the run's settings as a complete YAML preset "
                             '(the preset, its base presets and every --set resolved) and exit')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('--stop-at-step', type=int, default=0, metavar='N',
                        help='checkpoint and stop at step N (the schedule still spans the '
                             'configured steps; the same command later resumes)')
    parser.add_argument('--export', nargs=2, metavar=('CHECKPOINT', 'MODEL_DIR'), default=None,
                        help='do not train: write CHECKPOINT (e.g. runs/x/last.pt) as a runtime '
                             'model folder MODEL_DIR, then run sat-seg calibrate on it')
    parser.add_argument('--average', nargs='+', metavar='PATH', default=None,
                        help='do not train: OUT CHECKPOINT CHECKPOINT [...]: write the mean of '
                             "the checkpoints' weights (one architecture) as the checkpoint OUT, "
                             'to export with --export or start a run from (init_from)')
    parser.add_argument('--average-weights', default=None, metavar='W,W,...',
                        help='with --average: the share of each checkpoint (default: equal)')


def overrides(args: argparse.Namespace) -> List[str]:
    """Return the ``key=value`` items of every ``--set``, in the order given."""
    return [item for group in args.overrides or [] for item in group]


def run(args: argparse.Namespace) -> int:
    """Train (or export a checkpoint); print the summary as JSON."""
    from sat_seg_training.train_config import load_config

    if args.export:
        from sat_seg_training.train import export_checkpoint

        print('wrote %s' % export_checkpoint(*args.export))
        return 0
    if args.average:
        from sat_seg_training.average import average_checkpoints

        if len(args.average) < 3:
            raise ValueError('--average takes OUT and at least two checkpoints, got %d path(s)'
                             % len(args.average))
        weights = None
        if args.average_weights:
            try:
                weights = [float(item) for item in args.average_weights.split(',')]
            except ValueError:
                raise ValueError('--average-weights %r: give numbers separated by commas, e.g. '
                                 '0.5,0.5' % args.average_weights) from None
        print('wrote %s' % average_checkpoints(args.average[1:], args.average[0], weights))
        return 0
    if args.average_weights:
        raise ValueError('--average-weights needs --average')

    config = load_config(args.config, overrides(args))
    if args.print_config:
        import dataclasses

        import yaml

        print(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False, width=99), end='')
        return 0
    from sat_seg_training.train import train

    summary = train(config, resume=not args.no_resume, progress=not args.quiet,
                    stop_at_step=args.stop_at_step)
    print(json.dumps(summary, indent=2))
    return 0
