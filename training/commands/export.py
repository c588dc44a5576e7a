"""``sat-seg export``: write a model's ONNX tile graphs (dynamic and static batch)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = 'export a model to ONNX tile graphs (opset 13, TensorRT 8.2 compatible) for onnxruntime'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg export`` options."""
    parser.add_argument('--model', default=None,
                        help='SamModel folder (default: the bundled model)')
    parser.add_argument('--out', type=Path, default=None,
                        help='output folder (default: the model folder). A separate folder '
                             'gets config.json and sat_seg.json too, so it runs alone with the '
                             'onnxruntime and tensorrt backends (copy it to the device)')
    parser.add_argument('--with-weights', action='store_true',
                        help='with --out: also copy model.safetensors (the torch backend then '
                             'runs the folder too)')
    parser.add_argument('--prompt-mode', default=None, choices=('grid', 'box', 'none'),
                        help="prompt fixed inside the graph (default: the model's sat_seg.json)")
    parser.add_argument('--grid-points', type=int, default=None,
                        help="points per side of the 'grid' prompt (default: the model's)")
    parser.add_argument('--static-batch', type=int, default=16,
                        help='batch of the static-shape graph; 0 skips it (default 16)')
    parser.add_argument('--no-dynamic', action='store_true',
                        help='skip the dynamic-batch graph')
    parser.add_argument('--no-verify', action='store_true',
                        help='skip the ONNX Runtime vs torch parity check')
    parser.add_argument('--tolerance', type=float, default=1e-3,
                        help='largest |onnx - torch| logit difference accepted (default 1e-3)')


def run(args: argparse.Namespace) -> int:
    """Export, print one JSON line per written graph; exit code 0 on success."""
    from sat_seg_ros.config import resolve_model_dir
    from sat_seg_training.export import export_model

    model_dir = resolve_model_dir(args.model)
    if args.static_batch < 0:
        raise ValueError('--static-batch %d must be >= 0 (0: no static graph)' % args.static_batch)
    summary = export_model(model_dir, args.out, prompt_mode=args.prompt_mode,
                           grid_points=args.grid_points,
                           static_batch=args.static_batch or None,
                           dynamic=not args.no_dynamic, verify=not args.no_verify,
                           tolerance=args.tolerance, with_weights=args.with_weights)
    for item in summary:
        print(json.dumps(item, sort_keys=True))
    return 0
