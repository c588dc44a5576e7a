"""``sat-seg calibrate``: pick the threshold on validation and store it in sat_seg.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from sat_seg_ros.commands.options import add_segmenter_arguments, segmenter_options
from sat_seg_ros.config import describe_fusion
from sat_seg_training.calibrate import DEFAULT_SEED_THRESHOLDS, seed_label

HELP = "choose the threshold on validation and store it in the model's sat_seg.json"


def parse_gates(text: str):
    """Parse --fuse-gates: comma-separated gates, each 0 or a probability below 1."""
    from sat_seg_ros.config import check_fuse_gate

    gates = []
    for item in (part.strip() for part in text.split(',')):
        if not item:
            continue
        try:
            gates.append(check_fuse_gate(float(item)))
        except ValueError as error:
            raise argparse.ArgumentTypeError('--fuse-gates: %r: %s' % (item, error)) from None
    return gates


def parse_seeds(text: str):
    """Parse --seed-thresholds: comma-separated probabilities or 'none'."""
    seeds = []
    for item in text.split(','):
        item = item.strip().lower()
        if not item:
            continue
        if item == 'none':
            seeds.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                '--seed-thresholds: %r is neither a number nor none' % item) from None
        if not 0.0 < value < 1.0:
            raise argparse.ArgumentTypeError(
                '--seed-thresholds: %r must be strictly between 0 and 1' % item)
        seeds.append(value)
    if not seeds:
        raise argparse.ArgumentTypeError('--seed-thresholds needs at least one value')
    return seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg calibrate`` options."""
    parser.add_argument('--model', required=True, type=Path,
                        help='model folder whose sat_seg.json receives the threshold')
    parser.add_argument('--dataset', required=True, type=Path,
                        help='validation dataset folder (with masks)')
    # The threshold is what is swept; --max-detections and --min-area are applied during the
    # sweep and stored with the chosen threshold.
    add_segmenter_arguments(parser, exclude=('model', 'threshold', 'seed_threshold'))
    parser.add_argument('--min-areas', default='', dest='min_areas',
                        help='also sweep the smallest kept component, e.g. 16,64,128 (pixels; '
                             "default: the model's min_area_px only)")
    parser.add_argument('--seed-thresholds', default=DEFAULT_SEED_THRESHOLDS, type=parse_seeds,
                        dest='seed_thresholds',
                        help='hysteresis seeds swept with every threshold, e.g. none,0.99,0.995 '
                             '(none: no seed; default: %s)' % ','.join(
                                 map(seed_label, DEFAULT_SEED_THRESHOLDS)))
    parser.add_argument('--fuse-gates', default=[], type=parse_gates, dest='fuse_gates',
                        help='with fused sizes, also sweep the gate on their tiles, e.g. '
                             '0,0.6,0.7,0.8,0.9: the largest gate is written that loses no '
                             'accuracy against the smallest one and changes the outcome of at '
                             'most --fuse-gate-tolerance of the images (it is to save time)')
    parser.add_argument('--fuse-gate-tolerance', type=float, default=0.01,
                        dest='fuse_gate_tolerance',
                        help='share of the images whose outcome a chosen gate may change '
                             '(default 0.01)')
    parser.add_argument('--limit', type=int, default=0, help='use the first N images only')
    parser.add_argument('--plot', type=Path, default=None,
                        help='sweep plot PNG (default: MODEL/calibration.png; with --dry-run, '
                             'none unless given)')
    parser.add_argument('--dry-run', action='store_true',
                        help='report only; write nothing into the model folder')


def run(args: argparse.Namespace) -> int:
    """Sweep, print the table and the choice, write the threshold unless --dry-run."""
    from sat_seg_training.calibrate import calibrate

    # A dry run leaves the model folder untouched (it may be the installed package's).
    plot = args.plot or (None if args.dry_run else args.model / 'calibration.png')
    options = segmenter_options(args)
    result = calibrate(args.model, args.dataset, options.pop('model_size'), limit=args.limit,
                       write=not args.dry_run, plot=plot,
                       max_detections=options.pop('max_detections'),
                       min_areas=[int(v) for v in args.min_areas.split(',') if v.strip()],
                       backend=args.backend, device=args.device,
                       seed_thresholds=args.seed_thresholds,
                       fuse_gates=args.fuse_gates,
                       fuse_gate_tolerance=args.fuse_gate_tolerance,
                       **options)
    seed = result['best_seed_threshold']
    print('%9s %9s %9s %10s %8s   (seed threshold %s)'
          % ('threshold', 'accuracy', 'mean IoU', 'precision', 'recall',
             seed_label(seed)))
    for row in (r for r in result['table'] if r['seed_threshold'] == seed):
        print('%9.3f %9.3f %9.3f %10.3f %8.3f' % (row['threshold'], row['accuracy'],
                                                  row['mean_iou'], row['precision'],
                                                  row['recall']))
    best = result['best']
    if len(result['min_area_sweep']) > 1:
        for row in result['min_area_sweep']:
            print('min_area_px %5d: best threshold %.3f, accuracy %.3f, mean IoU %.3f'
                  % (row['min_area_px'], row['threshold'], row['accuracy'], row['mean_iou']))
    for row in result.get('fuse_gate_sweep', ()):
        print('fuse_gate %.3f: %.1f tiles per image, best threshold %.3f, accuracy %.3f, '
              'mean IoU %.3f, %d images change outcome'
              % (row['fuse_gate'], row['tiles_per_image'], row['threshold'], row['accuracy'],
                 row['mean_iou'], row['changed']))
    print('chosen threshold %.3f, seed threshold %s, min_area_px %d (accuracy %.3f, mean IoU '
          '%.3f) at model size %d%s, flips %d, max_detections %d, on %d images; previous '
          'threshold %.3f%s'
          % (result['best_threshold'], seed_label(seed),
             result['min_area_px'], best['accuracy'], best['mean_iou'], result['model_size'],
             describe_fusion(result['fuse_sizes'], result['fuse_gate'],
                             result['fuse_max_tiles']),
             result['flips'],
             result['max_detections'],
             result['images'], result['previous_threshold'],
             '' if args.dry_run else '; written to sat_seg.json (%s)' % result['written']))
    if plot is not None:
        print('plot: %s' % plot)
    return 0
