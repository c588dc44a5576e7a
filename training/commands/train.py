"""``sat-seg train``: train or fine-tune a SamModel from a YAML recipe (see docs/training.md)."""

from __future__ import annotations

import argparse
import json

HELP = 'fine-tune a SamModel on a patch set (YAML recipe + key=value overrides)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg train`` options."""
    parser.add_argument('--config', default=None,
                        help='YAML file of TrainConfig fields (configs/*.yaml); omitted fields '
                             'keep their defaults')
    parser.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE', dest='overrides',
                        help='override config fields, e.g. --set steps=200 lr=3e-4 '
                             "out_dir=runs/x 'model_sizes=[512,1024]'")
    parser.add_argument('--no-resume', action='store_true',
                        help='start over even if OUT_DIR/last.pt exists (it is overwritten)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('--stop-at-step', type=int, default=0, metavar='N',
                        help='checkpoint and stop at step N (the schedule still spans the '
                             'configured steps; the same command later resumes)')
    parser.add_argument('--export', nargs=2, metavar=('CHECKPOINT', 'MODEL_DIR'), default=None,
                        help='do not train: write CHECKPOINT (e.g. runs/x/last.pt) as a runtime '
                             'model folder MODEL_DIR, then run sat-seg calibrate on it')


def run(args: argparse.Namespace) -> int:
    """Train (or export a checkpoint); print the summary as JSON."""
    from sat_seg_training.train import export_checkpoint, load_config, train

    if args.export:
        print('wrote %s' % export_checkpoint(*args.export))
        return 0

    config = load_config(args.config, args.overrides)
    summary = train(config, resume=not args.no_resume, progress=not args.quiet,
                    stop_at_step=args.stop_at_step)
    print(json.dumps(summary, indent=2))
    return 0
