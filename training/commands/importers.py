"""``sat-seg import``: COCO / YOLO / CSV bbox labels -> the dataset layout, with a report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys

HELP = 'convert COCO / YOLO / CSV bbox labels into the dataset layout'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg import`` options."""
    parser.add_argument('--format', required=True, choices=('coco', 'yolo', 'csv'),
                        dest='fmt', help='label format')
    parser.add_argument('--images', required=True, type=Path, help='folder of the images')
    parser.add_argument('--labels', required=True, type=Path,
                        help='COCO: annotations json; YOLO: folder of <stem>.txt files '
                             '(mirroring the images folder); CSV: file with file,x,y,w,h rows')
    parser.add_argument('--out', required=True, type=Path, help='output dataset folder')
    parser.add_argument('--allow-rejects', action='store_true',
                        help='exit 0 even when some images were rejected (they are still '
                             'listed in OUT/import_report.json)')


def run(args: argparse.Namespace) -> int:
    """Import, print every rejection and a summary; exit 1 if anything was rejected."""
    from sat_seg_training.importers import import_dataset

    report = import_dataset(args.fmt, args.out, args.images, args.labels)
    for entry in report.rejected:
        print(f'rejected {entry["file"]}: {entry["reason"]}', file=sys.stderr)
    summary = {key: value for key, value in report.as_dict().items()
               if key not in ('rejected', 'notes')}
    summary.update(rejected=len(report.rejected), notes=len(report.notes),
                   report=str(Path(args.out) / 'import_report.json'))
    print(json.dumps(summary, indent=1))
    if report.rejected and not args.allow_rejects:
        print(f'{len(report.rejected)} rejected (see {summary["report"]}); fix the labels or '
              'pass --allow-rejects to accept the import without them', file=sys.stderr)
        return 1
    return 0
