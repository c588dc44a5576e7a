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
import tempfile
import time
from typing import Dict, List

import numpy as np

HELP = 'latency p50/p95 by stage, GFLOP/frame and peak memory: ours vs the naive pipeline'

SMALL = {'hidden_size': 96, 'layers': 4, 'heads': 4, 'embed_dim': 256, 'window_size': 8,
         'image_size': 256}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg bench`` options."""
    parser.add_argument('--json', default=None, help='write all results to this JSON file')
    parser.add_argument('--frames', type=int, default=8, help='timed frames per small-model run')
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
    """Run one (model, size) measurement in this (child) process and return its numbers."""
    import torch

    from sat_seg_ros.naive import NaivePipeline
    from sat_seg_ros.segmenter import Segmenter

    if job.get('threads'):
        torch.set_num_threads(job['threads'])
    frames = synthetic_frames(job['frames'], seed=1)
    segmenter = Segmenter.from_model(job['model_dir'], model_size=job['size'],
                                     batch_size=job['batch_size'])
    out = {'model': job['name'], 'size': job['size'], 'frames': job['frames'],
           'tiles_per_frame': len(segmenter.grid), 'batch_size': job['batch_size'],
           'rss_after_load_mb': round(_max_rss_mb(), 1)}
    tiles = segmenter.model_tiles(frames[0])
    if job.get('max_tiles'):  # one batch only: its peak memory is a whole frame's peak
        tiles = tiles[:job['max_tiles']]
        start = time.perf_counter()
        segmenter.tile_logits(tiles)
        seconds = round(time.perf_counter() - start, 2)
        out['partial_run'] = {'tiles': len(tiles), 'seconds': seconds}
        out['peak_rss_mb'] = round(_max_rss_mb(), 1)
        return out
    out['gflop_per_frame'] = round(_gflop(lambda: segmenter.tile_logits(tiles)), 2)
    naive = None
    if job.get('naive'):
        from transformers import SamModel

        naive = NaivePipeline(SamModel.from_pretrained(job['model_dir']), job['size'],
                              segmenter.config.tile_size, segmenter.config.prompt_mode,
                              segmenter.config.grid_points)
        out['naive_gflop_per_frame'] = round(_gflop(lambda: naive.probability(frames[0])), 2)
        naive.probability(frames[0])  # warm-up
    segmenter.segment(frames[0])  # warm-up
    ours, reference_timings, agreement = [], [], []
    # Ours and the reference alternate frame by frame, so a change in machine load
    # during the run affects both sides of the ratio alike.
    for frame in frames:
        result = segmenter.segment(frame)
        ours.append(result.timings)
        if naive is None:
            continue
        stages: Dict[str, float] = {}
        start = time.perf_counter()
        reference = naive.probability(frame, stages)
        stages['total'] = time.perf_counter() - start
        reference_timings.append(stages)
        # Trained weights: the model's own threshold. Random weights hover near 0.5, so the
        # per-frame median of the reference splits the frame in half: a strict comparison.
        threshold = (segmenter.config.threshold if job['trained']
                     else float(np.median(reference)))
        agreement.append(mask_iou(result.probability > threshold, reference > threshold))
    out['ours'] = stage_stats(ours)
    out['peak_rss_mb'] = round(_max_rss_mb(), 1)
    if naive is not None:
        out['naive'] = stage_stats(reference_timings)
        out['speedup_vs_naive'] = round(out['naive']['total']['p50_ms']
                                        / out['ours']['total']['p50_ms'], 2)
        out['mask_agreement_iou'] = round(float(np.mean(agreement)), 4)
        out['mask_agreement_min_iou'] = round(float(np.min(agreement)), 4)
        out['agreement_threshold'] = 'model threshold' if job['trained'] else 'median of naive'
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


def _print_row(result: dict) -> None:
    ours = result.get('ours', {}).get('total', {})
    naive = result.get('naive', {}).get('total', {})
    print('%-8s %5d %5d %9s %9s %9s %8s %8s %9s %8s' % (
        result['model'], result['size'], result['tiles_per_frame'],
        ours.get('p50_ms', '-'), ours.get('p95_ms', '-'), naive.get('p50_ms', '-'),
        result.get('speedup_vs_naive', '-'), result.get('mask_agreement_iou', '-'),
        result.get('gflop_per_frame', '-'), result.get('peak_rss_mb', '-')), flush=True)


def run(args: argparse.Namespace) -> int:
    """Run every measurement, print a table, optionally write JSON."""
    from sat_seg_ros.config import atomic_write_text, DEFAULT_MODEL_DIR

    sizes = [int(size) for size in args.sizes.split(',')]
    results = []
    print('%-8s %5s %5s %9s %9s %9s %8s %8s %9s %8s' % (
        'model', 'size', 'tiles', 'ours_p50', 'ours_p95', 'naive_p50', 'speedup', 'mask_iou',
        'GFLOP', 'peak_MB'))
    with tempfile.TemporaryDirectory() as folder:
        small = _write_model(folder, 'small', **SMALL)
        base = {'threads': args.threads, 'batch_size': 16, 'trained': False}
        for size in sizes:
            job = dict(base, name='small', model_dir=small, size=size, frames=args.frames,
                       naive=(size == 512))
            results.append(_run_isolated(job))
            _print_row(results[-1])
        if (DEFAULT_MODEL_DIR / 'config.json').is_file():
            job = dict(base, name='default', model_dir=str(DEFAULT_MODEL_DIR), size=512,
                       frames=args.frames, naive=True, trained=True)
            results.append(_run_isolated(job))
            _print_row(results[-1])
        if not args.no_vitb:
            vitb = _write_model(folder, 'vitb')
            results.append(_run_isolated(dict(base, name='vit-b', model_dir=vitb, size=512,
                                              frames=1, naive=True, batch_size=4)))
            _print_row(results[-1])
            results.append(_run_isolated(dict(base, name='vit-b', model_dir=vitb, size=2048,
                                              frames=1, batch_size=4, max_tiles=4)))
            _print_row(results[-1])
            print('  vit-b at 2048: one batch of 4 of the 64 tiles took %.1f s; its peak RSS is '
                  "the whole frame's peak" % results[-1]['partial_run']['seconds'])
    headline = next(r for r in results if r['model'] == 'small' and r['size'] == 512)
    summary = {
        'speedup_vs_naive': headline.get('speedup_vs_naive'),
        'mask_agreement_iou': headline.get('mask_agreement_iou'),
        'gflop_per_frame': {'%s@%d' % (r['model'], r['size']): r['gflop_per_frame']
                            for r in results if 'gflop_per_frame' in r},
        'machine': '%s, %d CPU cores, Python %s' % (
            platform.processor() or platform.machine(), os.cpu_count(),
            platform.python_version()),
        'results': results,
    }
    print('speedup_vs_naive (small @512, p50): %s   mask_agreement_iou: %s'
          % (summary['speedup_vs_naive'], summary['mask_agreement_iou']))
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2) + '\n')
        print('wrote %s' % args.json)
    return 0
