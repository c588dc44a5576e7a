"""``sat-seg infer``: masks (``OUT/<stem>.png``) and ``OUT/detections.json`` for image files."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
import sys

import numpy as np

from sat_seg_ros.commands.options import add_segmenter_arguments, segmenter_from_args
from sat_seg_ros.config import atomic_write_text, fusion_label
from sat_seg_ros.imageio import expand_inputs, ImageReadError, read_image, write_png

HELP = 'segment image files or folders into 0/255 masks and detections.json'
LOG = logging.getLogger('sat_seg_ros.infer')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg infer`` options."""
    add_segmenter_arguments(parser)
    parser.add_argument('--out', required=True, type=Path, help='output folder')
    parser.add_argument('--overlay', action='store_true',
                        help='also write OUT/<stem>_overlay.png (input with the mask tinted)')
    parser.add_argument('inputs', nargs='+', help='image files or folders')


def output_stems(files):
    """Map each file to a unique output stem: its own stem, or stem-2, stem-3... on a clash."""
    seen = {}
    stems = []
    for path in files:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        stems.append(path.stem if count == 1 else '%s-%d' % (path.stem, count))
    return stems


def run(args: argparse.Namespace) -> int:
    """Segment every input; bad inputs are reported by name and make the exit code 1."""
    from sat_seg_ros.postprocess import overlay

    files = expand_inputs(args.inputs)
    if not files:
        raise FileNotFoundError('no image files found in %s' % ' '.join(args.inputs))
    segmenter = segmenter_from_args(args)
    LOG.info('model %s, size %d%s, threshold %.3f', segmenter.backend.describe(),
             segmenter.config.model_size, fusion_label(segmenter.config),
             segmenter.config.threshold)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {}
    failed = []
    latencies = []
    for path, stem in zip(files, output_stems(files)):
        try:
            image = read_image(path)
            result = segmenter.segment(image)
        except ImageReadError as error:
            failed.append(str(path))
            print('sat-seg infer: skipped %s' % error, file=sys.stderr)
            continue
        except ValueError as error:
            failed.append(str(path))
            print('sat-seg infer: skipped %s: %s' % (path, error), file=sys.stderr)
            continue
        latencies.append(result.timings['total'])
        write_png(args.out / (stem + '.png'), result.mask.astype(np.uint8) * 255)
        if args.overlay:
            write_png(args.out / (stem + '_overlay.png'), overlay(image, result.mask))
        key = path.name if stem == path.stem else str(path)
        report[key] = {'detected': result.detected,
                       'detections': [d.to_dict() for d in result.detections]}
    atomic_write_text(args.out / 'detections.json', json.dumps(report, indent=2) + '\n')
    detected = sum(entry['detected'] for entry in report.values())
    median = 1000.0 * float(np.median(latencies)) if latencies else float('nan')
    print('%d image(s) segmented, %d with a satellite, %d skipped; median %.1f ms per image; '
          'masks in %s' % (len(report), detected, len(failed), median, args.out))
    return 1 if failed else 0
