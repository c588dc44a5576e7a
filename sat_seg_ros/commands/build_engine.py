"""``sat-seg build-engine``: build a TensorRT engine from an exported graph, on the target GPU."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = 'build a TensorRT engine (fp32/fp16, batch profile) from a sat-seg export ONNX graph'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg build-engine`` options."""
    parser.add_argument('--model', default=None,
                        help='model folder holding the exported graph (default: the bundled '
                             'model); the engine and its metadata are written there')
    parser.add_argument('--onnx', type=Path, default=None,
                        help="graph to build from (default: the model folder's graph for its "
                             'prompt, dynamic batch first)')
    parser.add_argument('--prompt-mode', default=None, choices=('grid', 'box', 'none'),
                        help="prompt of the graph to pick (default: the model's sat_seg.json)")
    parser.add_argument('--grid-points', type=int, default=None,
                        help="points per side of the 'grid' prompt (default: the model's)")
    parser.add_argument('--precision', default='fp16', choices=('fp32', 'fp16'),
                        help='engine precision (default fp16)')
    parser.add_argument('--min-batch', type=int, default=1, help='profile minimum batch')
    parser.add_argument('--opt-batch', type=int, default=None,
                        help='profile batch TensorRT tunes for (default: --max-batch)')
    parser.add_argument('--max-batch', type=int, default=16,
                        help='profile maximum batch (default 16, the Segmenter batch size)')
    parser.add_argument('--workspace-mb', type=int, default=1024,
                        help='builder workspace in MiB (default 1024; lower on a 4 GB TX2 NX)')
    parser.add_argument('--device', default='cuda', help="'cuda' or 'cuda:N'")
    parser.add_argument('--memory', default=None, choices=('pycuda', 'cuda-python'),
                        help='library for GPU queries (default: the first installed)')
    parser.add_argument('--force', action='store_true',
                        help='rebuild even if a matching engine exists')


def run(args: argparse.Namespace) -> int:
    """Build (or reuse) the engine; print its path and metadata as JSON."""
    from sat_seg_ros.backends import engine_cache
    from sat_seg_ros.backends import tensorrt_backend as trt_backend
    from sat_seg_ros.config import load_model_info, resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    info = load_model_info(model_dir)
    prompt_mode = args.prompt_mode or info['prompt_mode']
    grid_points = args.grid_points or info['grid_points']
    onnx_path = args.onnx or engine_cache.find_onnx(model_dir, None, prompt_mode, grid_points)
    trt = trt_backend.import_tensorrt()
    memory = trt_backend.open_device_memory(trt_backend.device_index(args.device), args.memory)
    try:
        if args.force:
            key = engine_cache.engine_key(
                trt.__version__, memory.device_name(), memory.compute_capability(),
                args.precision, trt_backend.onnx_input_size(onnx_path), args.min_batch,
                args.opt_batch or args.max_batch, args.max_batch,
                engine_cache.file_sha256(onnx_path))
            path = Path(model_dir) / engine_cache.engine_file_name(Path(onnx_path).name, key)
            trt_backend.build_engine(trt, onnx_path, key, path, args.workspace_mb)
        else:
            path, key = trt_backend.resolve_engine(
                trt, memory, model_dir, prompt_mode, grid_points, args.precision,
                args.min_batch, args.opt_batch or args.max_batch, args.max_batch,
                onnx_path=onnx_path, build=True, workspace_mb=args.workspace_mb)
    finally:
        memory.close()
    print(json.dumps({'engine': str(path), 'metadata': key}, sort_keys=True))
    return 0
