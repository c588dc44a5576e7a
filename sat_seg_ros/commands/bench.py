"""``sat-seg bench``: latency per frame by stage, GFLOP and peak memory, ours vs naive.

Every measurement runs in a fresh child process, so peak memory (max RSS) belongs to that
measurement alone. Frames are synthetic 512x641 grayscale scenes; models are SAM-architecture
configs with random weights (timing does not depend on weights) and, when present, the bundled
default model (trained weights, used for the mask agreement).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import tempfile
import time
from typing import Dict, List

import numpy as np

HELP = 'latency p50/p95 by stage, GFLOP/frame and peak memory: ours vs the naive pipeline'

#: Jetson TX2 peak fp16 throughput: GFLOP / TFLOPS = the fastest possible milliseconds.
TX2_FP16_TFLOPS = 1.33

SMALL = {'hidden_size': 96, 'layers': 4, 'heads': 4, 'embed_dim': 256, 'window_size': 8,
         'image_size': 256}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg bench`` options."""
    parser.add_argument('--json', default=None, help='write all results to this JSON file')
    parser.add_argument('--frames', type=int, default=16, help='timed frames per small-model run')
    parser.add_argument('--sizes', default='512,1024,2048', help='model sizes for the small model')
    parser.add_argument('--no-vitb', action='store_true',
                        help='skip the ViT-B-sized config (about 10 s per tile on 2 CPU cores)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: all)')


def synthetic_frames(count: int, seed: int = 0, height: int = 512, width: int = 641):
    """Smooth random gray scenes (uint8) with one bright or dark box each."""
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        noise = rng.random((height // 8, width // 8)).astype(np.float32)
        scene = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC) * 160 + 40
        scene += rng.normal(0, 6, scene.shape).astype(np.float32)
        h, w = rng.integers(12, 120, 2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        scene[y:y + h, x:x + w] = 245 if rng.random() < 0.5 else 15
        frames.append(np.clip(scene, 0, 255).astype(np.uint8))
    return frames


def percentiles(values: List[float]) -> Dict[str, float]:
    """p50 / p95 in milliseconds."""
    values = np.asarray(values) * 1000.0
    return {'p50_ms': round(float(np.percentile(values, 50)), 2),
            'p95_ms': round(float(np.percentile(values, 95)), 2)}


def stage_stats(timings: List[Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """Per-stage p50/p95 over frames, plus the per-frame total."""
    stages = sorted({name for frame in timings for name in frame})
    stats = {name: percentiles([frame.get(name, 0.0) for frame in timings]) for name in stages}
    if 'total' not in stats:
        stats['total'] = percentiles([sum(frame.values()) for frame in timings])
    return stats


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Return the IoU of two boolean masks; two empty masks agree fully (1.0)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _gflop(function) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops() / 1e9


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(job: dict) -> dict:
    """Run one (model, size) measurement in this (child) process and return its numbers.

    Every backend in ``job['backends']`` and, with ``job['naive']``, the tutorial pipeline
    process the same frames, alternating frame by frame so that a change in machine load during
    the run affects every side of a ratio alike. With ``job['memory_only']`` one frame runs
    through the first backend (only the first ``max_tiles`` tiles, if given) and the process's
    peak RSS is reported: batches run one after another, so one batch's peak is the frame's.
    """
    import torch

    from sat_seg_ros.naive import NaivePipeline
    from sat_seg_ros.segmenter import Segmenter

    if job.get('threads'):
        torch.set_num_threads(job['threads'])
    frames = synthetic_frames(job['frames'], seed=1)
    options = {'threads': job['threads']} if job.get('threads') else {}
    segmenters = {name: Segmenter.from_model(job['model_dir'], backend=name,
                                             model_size=job['size'], batch_size=job['batch_size'],
                                             backend_options=options)
                  for name in job['backends']}
    first = segmenters[job['backends'][0]]
    out = {'model': job['name'], 'size': job['size'], 'frames': job['frames'],
           'tiles_per_frame': len(first.grid), 'batch_size': job['batch_size'],
           'rss_after_load_mb': round(_max_rss_mb(), 1)}
    tiles = first.model_tiles(frames[0])
    if job.get('memory_only'):
        tiles = tiles[:job.get('max_tiles') or len(tiles)]
        start = time.perf_counter()
        first.tile_logits(tiles)
        out.update(backend=job['backends'][0], tiles_run=len(tiles),
                   seconds=round(time.perf_counter() - start, 2),
                   peak_rss_mb=round(_max_rss_mb(), 1))
        return out
    # Every tile costs the same FLOPs, so one tile's count times the tile count is exact.
    if 'torch' in segmenters:
        out['gflop_per_frame'] = round(
            len(tiles) * segmenters['torch'].backend.gflop(tiles[:1]), 2)
        out['tx2_floor_ms'] = round(out['gflop_per_frame'] / TX2_FP16_TFLOPS, 1)
    naive = None
    if job.get('naive'):
        from transformers import SamModel

        naive = NaivePipeline(SamModel.from_pretrained(job['model_dir']), job['size'],
                              first.config.tile_size, first.config.prompt_mode,
                              first.config.grid_points)
        from PIL import Image

        tile = Image.fromarray(np.broadcast_to(tiles[0], tiles[0].shape[:2] + (3,)).astype(
            np.uint8))
        out['naive_gflop_per_frame'] = round(
            len(tiles) * _gflop(lambda: naive.tile_probability(tile, {})), 2)
        if job.get('warm_up', True):
            naive.probability(frames[0])
    if job.get('warm_up', True):  # allocations, graph set-up; skipped where a frame takes minutes
        for segmenter in segmenters.values():
            segmenter.segment(frames[0])
    timings = {name: [] for name in list(segmenters) + (['naive'] if naive else [])}
    agreement = {name: [] for name in segmenters}
    for frame in frames:
        results = {name: segmenter.segment(frame) for name, segmenter in segmenters.items()}
        for name, result in results.items():
            timings[name].append(result.timings)
        if naive is None:
            continue
        stages: Dict[str, float] = {}
        start = time.perf_counter()
        reference = naive.probability(frame, stages)
        stages['total'] = time.perf_counter() - start
        timings['naive'].append(stages)
        # Trained weights: the model's own threshold. Random weights hover near 0.5, so the
        # per-frame median of the reference splits the frame in half: a strict comparison.
        threshold = first.config.threshold if job['trained'] else float(np.median(reference))
        if not (reference > threshold).any():
            continue  # two empty masks agree trivially: such frames say nothing
        for name, result in results.items():
            agreement[name].append(mask_iou(result.probability > threshold,
                                            reference > threshold))
    for name, values in timings.items():
        out[name] = stage_stats(values)
    if naive is not None:
        out['agreement_threshold'] = 'model threshold' if job['trained'] else 'median of naive'
        for name in segmenters:
            out['speedup_vs_naive_' + name] = round(
                out['naive']['total']['p50_ms'] / out[name]['total']['p50_ms'], 2)
            # Frames whose reference mask is empty are left out; None when all of them were.
            scores = agreement[name]
            out['agreement_frames'] = len(scores)
            out['mask_agreement_iou_' + name] = (round(float(np.mean(scores)), 4)
                                                 if scores else None)
            out['mask_agreement_min_iou_' + name] = (round(float(np.min(scores)), 4)
                                                     if scores else None)
    return out


def _run_isolated(job: dict) -> dict:
    context = multiprocessing.get_context('spawn')
    with context.Pool(1) as pool:
        return pool.apply(measure, (job,))


def _write_model(folder: str, name: str, **config) -> str:
    from sat_seg_ros.testing import make_tiny_model

    path = os.path.join(folder, name)
    if config:
        make_tiny_model(path, **config)
    else:
        import torch
        from transformers import SamConfig, SamModel

        torch.manual_seed(0)
        SamModel(SamConfig()).save_pretrained(path)
    return path


def _export(model_dir: str) -> bool:
    """Export the dynamic-batch ONNX graph beside the weights; False when onnx is unavailable."""
    try:
        from sat_seg_ros.training.export import export_model

        export_model(model_dir, static_batch=None, verify=False)
        return True
    except ImportError as error:
        print('  onnxruntime rows skipped: %s' % error)
        return False


COLUMNS = ('model', 'size', 'tiles', 'backend', 'p50_ms', 'p95_ms', 'naive_p50', 'speedup',
           'mask_iou', 'GFLOP', 'TX2_ms', 'peak_MB')


def _print_rows(result: dict, memory: Dict[str, float]) -> None:
    for backend in [key for key in ('torch', 'onnxruntime') if key in result]:
        stats = result[backend]['total']
        naive = result.get('naive', {}).get('total', {})
        row = (result['model'], result['size'], result['tiles_per_frame'], backend,
               stats['p50_ms'], stats['p95_ms'], naive.get('p50_ms', '-'),
               result.get('speedup_vs_naive_' + backend, '-'),
               result.get('mask_agreement_iou_' + backend, '-'),
               result.get('gflop_per_frame', '-'), result.get('tx2_floor_ms', '-'),
               memory.get(backend, '-'))
        print('%-8s %5s %5s %-12s %8s %8s %9s %7s %8s %8s %7s %8s' % row, flush=True)


def _memory(base: dict, name: str, model_dir: str, size: int, backends, **extra) -> dict:
    peaks = {}
    for backend in backends:
        result = _run_isolated(dict(base, name=name, model_dir=model_dir, size=size, frames=1,
                                    backends=[backend], memory_only=True, **extra))
        peaks[backend] = result['peak_rss_mb']
    return peaks


def run(args: argparse.Namespace) -> int:
    """Run every measurement, print a table, optionally write JSON."""
    from sat_seg_ros.config import atomic_write_text, DEFAULT_MODEL_DIR

    sizes = [int(size) for size in args.sizes.split(',')]
    results = []
    print('%-8s %5s %5s %-12s %8s %8s %9s %7s %8s %8s %7s %8s' % COLUMNS)
    with tempfile.TemporaryDirectory() as folder:
        base = {'threads': args.threads, 'batch_size': 16, 'trained': False}
        small = _write_model(folder, 'small', **SMALL)
        backends = ['torch'] + (['onnxruntime'] if _export(small) else [])
        for size in sizes:
            result = _run_isolated(dict(base, name='small', model_dir=small, size=size,
                                        frames=args.frames, naive=(size == 512),
                                        backends=backends))
            result['peak_rss_mb'] = _memory(base, 'small', small, size, backends)
            results.append(result)
            _print_rows(result, result['peak_rss_mb'])
        if (DEFAULT_MODEL_DIR / 'config.json').is_file():
            bundled = os.path.join(folder, 'default')
            shutil.copytree(DEFAULT_MODEL_DIR, bundled)
            backends_default = ['torch'] + (['onnxruntime'] if _export(bundled) else [])
            result = _run_isolated(dict(base, name='default', model_dir=bundled, size=512,
                                        frames=args.frames, naive=True, trained=True,
                                        backends=backends_default))
            result['peak_rss_mb'] = _memory(base, 'default', bundled, 512, backends_default)
            results.append(result)
            _print_rows(result, result['peak_rss_mb'])
        if not args.no_vitb:
            vitb = _write_model(folder, 'vitb')
            vitb_base = dict(base, batch_size=4)
            result = _run_isolated(dict(vitb_base, name='vit-b', model_dir=vitb, size=512,
                                        frames=1, naive=True, backends=['torch'],
                                        warm_up=False))
            results.append(result)
            _print_rows(result, {})
            partial = _run_isolated(dict(vitb_base, name='vit-b', model_dir=vitb, size=2048,
                                         frames=1, backends=['torch'], memory_only=True,
                                         max_tiles=4))
            results.append(partial)
            print('  vit-b at 2048 (64 tiles): peak RSS %.0f MB, from one batch of 4 tiles '
                  '(%.1f s); %.0f GFLOP per frame'
                  % (partial['peak_rss_mb'], partial['seconds'],
                     result['gflop_per_frame'] * 16))
    headline = next(r for r in results if r['model'] == 'small' and r['size'] == 512)
    summary = {
        'speedup_vs_naive': headline.get('speedup_vs_naive_torch'),
        'mask_agreement_iou': headline.get('mask_agreement_iou_torch'),
        'speedup_vs_naive_onnxruntime': headline.get('speedup_vs_naive_onnxruntime'),
        'mask_agreement_iou_onnxruntime': headline.get('mask_agreement_iou_onnxruntime'),
        'gflop_per_frame': {'%s@%d' % (r['model'], r['size']): r['gflop_per_frame']
                            for r in results if 'gflop_per_frame' in r},
        'tx2_fp16_tflops': TX2_FP16_TFLOPS,
        'machine': '%s, %d CPU cores, Python %s, load average %.1f at the end' % (
            platform.processor() or platform.machine(), os.cpu_count(),
            platform.python_version(), os.getloadavg()[0]),
        'results': results,
    }
    print('speedup_vs_naive (small @512, p50, torch backend): %s, mask_agreement_iou %s; '
          'onnxruntime backend: %s, %s' % (
              summary['speedup_vs_naive'], summary['mask_agreement_iou'],
              summary['speedup_vs_naive_onnxruntime'], summary['mask_agreement_iou_onnxruntime']))
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2) + '\n')
        print('wrote %s' % args.json)
    return 0
