"""Benchmark the torch and onnxruntime backends on this machine: same frames, same masks.

For each model size (frame resized to S x S, cut into 256 tiles) both backends segment the
same synthetic frames through the same Segmenter; the table gives the per-frame latency
(p50 / p95 over the frames, the two backends interleaved frame by frame so that load from
other processes hits both alike), the mask agreement (IoU) and probability difference between
them, the model's GFLOP per frame (torch FLOP counter over the frame's tiles) and the time a
Jetson TX2 would need at 100 % of its 1.33 TFLOPS fp16 peak, a floor no real run reaches.

Usage: python benchmarks/bench_backends.py [--model DIR] [--sizes 512,1024,2048] [--json FILE]
Without --model, the SAM-architecture config of ``sat-seg bench`` (5.2 M params, random
weights; latency does not depend on the weights) is built and exported in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

TX2_FP16_TFLOPS = 1.33


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default=None, help='SamModel folder (default: small config)')
    parser.add_argument('--sizes', default='512,1024,2048', help='model sizes')
    parser.add_argument('--frames', type=int, default=4, help='timed frames per size')
    parser.add_argument('--threads', type=int, default=2, help='threads for both runtimes')
    parser.add_argument('--batch-size', type=int, default=16, help='tiles per backend call')
    parser.add_argument('--json', default=None, help='write the results to this JSON file')
    return parser.parse_args(argv)


def gflop_per_frame(torch_segmenter, tiles: np.ndarray) -> float:
    """Return the torch FLOP count of the model over one frame's tiles, in GFLOP."""
    return torch_segmenter.backend.gflop(tiles)


def iou(first: np.ndarray, second: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(first, second).sum()
    return 1.0 if union == 0 else float(np.logical_and(first, second).sum() / union)


def bench_size(model_dir: str, size: int, frames, args) -> dict:
    """Time both backends on ``frames`` at model size ``size``; return one result row."""
    from sat_seg_ros.segmenter import Segmenter

    segmenters = {
        'torch': Segmenter.from_model(model_dir, backend='torch', model_size=size,
                                      batch_size=args.batch_size,
                                      backend_options={'threads': args.threads}),
        'onnxruntime': Segmenter.from_model(model_dir, backend='onnxruntime', model_size=size,
                                            batch_size=args.batch_size,
                                            backend_options={'threads': args.threads}),
    }
    for segmenter in segmenters.values():
        segmenter.segment(frames[0])  # warm-up: allocations, ORT graph setup
    # Random-weight models have no meaningful calibrated threshold: compare the masks at the
    # median probability of the first frame, so they are about half full and IoU means something.
    median = float(np.median(segmenters['torch'].probability(frames[0])))
    threshold = min(max(median, 1e-3), 1 - 1e-3)
    for segmenter in segmenters.values():
        segmenter.set_threshold(threshold)
    seconds = {name: [] for name in segmenters}
    ious, fractions, max_diff = [], [], 0.0
    for frame in frames:
        results = {}
        for name, segmenter in segmenters.items():
            start = time.perf_counter()
            results[name] = segmenter.segment(frame)
            seconds[name].append(time.perf_counter() - start)
        ious.append(iou(results['torch'].mask, results['onnxruntime'].mask))
        fractions.append(float(results['torch'].mask.mean()))
        max_diff = max(max_diff, float(np.abs(results['torch'].probability
                                              - results['onnxruntime'].probability).max()))
    tiles = segmenters['torch'].model_tiles(frames[0])
    gflop = gflop_per_frame(segmenters['torch'], tiles)
    row = {'size': size, 'tiles_per_frame': int(len(tiles)), 'gflop_per_frame': round(gflop, 2),
           'tx2_floor_ms_at_peak': round(gflop / (TX2_FP16_TFLOPS * 1e3) * 1e3, 1),
           'threshold': threshold, 'mask_fraction_mean': round(float(np.mean(fractions)), 3),
           'mask_iou_min': round(min(ious), 4), 'max_prob_diff': max_diff}
    for name, values in seconds.items():
        values = np.asarray(values) * 1e3
        row[name] = {'p50_ms': round(float(np.percentile(values, 50)), 1),
                     'p95_ms': round(float(np.percentile(values, 95)), 1)}
    for segmenter in segmenters.values():
        segmenter.close()
    return row


def main(argv=None) -> int:
    """Run the benchmark and print the table; return the exit code."""
    args = parse_args(argv)
    os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from sat_seg_ros.commands.bench import SMALL, synthetic_frames
    from sat_seg_ros.testing import make_tiny_model
    from sat_seg_training.export import export_model

    workdir = tempfile.mkdtemp(prefix='bench_backends_')
    try:
        model_dir = os.path.join(workdir, 'model')
        if args.model:
            shutil.copytree(args.model, model_dir)
        else:
            make_tiny_model(model_dir, **SMALL)
        export_model(model_dir, static_batch=None, verify=True)
        frames = synthetic_frames(args.frames)
        sizes = [int(size) for size in args.sizes.split(',')]
        print('machine: %s, %d CPUs, Python %s, load average %.1f; threads %d; %d frames '
              '%dx%d per size' % (platform.processor() or platform.machine(), os.cpu_count(),
                                  platform.python_version(), os.getloadavg()[0], args.threads,
                                  len(frames), frames[0].shape[1], frames[0].shape[0]))
        header = ('%5s %5s %10s %12s %18s %18s %8s %6s %8s %10s' % (
            'size', 'tiles', 'GFLOP/fr', 'TX2 floor ms', 'torch p50/p95 ms', 'ort p50/p95 ms',
            'ort/trch', 'mask%', 'IoU min', 'max dprob'))
        print(header)
        rows = []
        for size in sizes:
            row = bench_size(model_dir, size, frames, args)
            rows.append(row)
            print('%5d %5d %10.1f %12.1f %18s %18s %8.2f %6.1f %8.4f %10.2g' % (
                row['size'], row['tiles_per_frame'], row['gflop_per_frame'],
                row['tx2_floor_ms_at_peak'],
                '%.0f / %.0f' % (row['torch']['p50_ms'], row['torch']['p95_ms']),
                '%.0f / %.0f' % (row['onnxruntime']['p50_ms'], row['onnxruntime']['p95_ms']),
                row['onnxruntime']['p50_ms'] / row['torch']['p50_ms'],
                100 * row['mask_fraction_mean'], row['mask_iou_min'],
                row['max_prob_diff']), flush=True)
        if args.json:
            with open(args.json, 'w') as stream:
                json.dump({'machine': platform.platform(), 'cpus': os.cpu_count(),
                           'load_average_at_end': os.getloadavg()[0],
                           'threads': args.threads, 'model': args.model or 'small config',
                           'tx2_fp16_tflops': TX2_FP16_TFLOPS, 'rows': rows}, stream, indent=2)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
