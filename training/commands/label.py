"""``sat-seg label``: masks from bbox labels (SAM automatic, SAM box prompt, GrabCut)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = 'derive masks from bbox labels (SAM automatic, SAM box, GrabCut)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg label`` options."""
    from sat_seg_training.labeling import AutoParams

    defaults = AutoParams()
    parser.add_argument('--dataset', required=True, type=Path,
                        help='dataset folder with bbox labels (true masks, if any, are used '
                             'only to score the result)')
    parser.add_argument('--method', required=True, choices=('auto', 'box', 'grabcut'),
                        help="auto: the report's SAM automatic masks matched to the bbox; "
                             "box: the bbox as SAM's box prompt; grabcut: no model")
    parser.add_argument('--model', action='append', default=[], type=Path, dest='models',
                        help='SamModel folder (auto, box); repeat to compare checkpoints side '
                             'by side; default: the bundled model')
    parser.add_argument('--out', required=True, type=Path,
                        help='output dataset folder (+ label_report.json)')
    parser.add_argument('--device', default='cpu', help="torch device, e.g. 'cpu', 'cuda'")
    parser.add_argument('--points-per-side', type=int, default=defaults.points_per_side,
                        help='auto: point grid size (default %(default)s)')
    parser.add_argument('--pred-iou-thresh', type=float, default=defaults.pred_iou_thresh,
                        help='auto: minimum SAM predicted IoU (default %(default)s)')
    parser.add_argument('--stability-thresh', type=float, default=defaults.stability_thresh,
                        help='auto: minimum stability score (default %(default)s)')
    parser.add_argument('--min-box-iou', type=float, default=defaults.min_box_iou,
                        help="auto: minimum IoU of the mask's box with the label "
                             '(default %(default)s)')


def run(args: argparse.Namespace) -> int:
    """Label, write OUT/label_report.json, print the yield table and the report; exit 0."""
    from tqdm import tqdm

    from sat_seg_training.dataset import load_dataset
    from sat_seg_training.labeling import AutoParams, label_dataset, yield_table

    params = AutoParams(points_per_side=args.points_per_side,
                        pred_iou_thresh=args.pred_iou_thresh,
                        stability_thresh=args.stability_thresh,
                        min_box_iou=args.min_box_iou)
    dataset = load_dataset(args.dataset)
    with tqdm(total=len(dataset), unit='img', desc=f'label {args.method}') as bar:
        report = label_dataset(dataset, args.out, args.method, args.models, args.device,
                               params, progress=lambda done, total: bar.update(done - bar.n))
    print(yield_table(report))
    print(json.dumps({k: v for k, v in report.items() if k != 'unlabelled'}, indent=1))
    return 0
