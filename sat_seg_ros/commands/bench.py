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
#: Share of that peak a small conv/attention model reaches in practice: the TX2 projection.
TX2_EFFICIENCY = 0.30
#: Frames per round of the headline ratio (ours, then naive, on the same frames).
ROUND_FRAMES = 4

SMALL = {'hidden_size': 96, 'layers': 4, 'heads': 4, 'embed_dim': 256, 'window_size': 8,
         'image_size': 256}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``sat-seg bench`` options."""
    parser.add_argument('--json', default=None, help='write all results to this JSON file')
    parser.add_argument('--frames', type=int, default=16, help='timed frames per small-model run')
    parser.add_argument('--sizes', default='512,1024,2048', help='model sizes for the small model')
    parser.add_argument('--models', default='small,cnn,default,vit-b',
                        help='which models to measure: small (5.2 M ViT SAM), cnn (the default '
                             "model's architecture, random weights), default (the bundled "
                             'model, trained), vit-b (SAM ViT-B, about 10 s per tile on 2 CPU '
                             'cores); default: all')
    parser.add_argument('--no-vitb', action='store_true', help='same as leaving vit-b out')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: all)')
    parser.add_argument('--rounds', type=int, default=9,
                        help='rounds of the headline ratio: each times ours and the naive '
                             'pipeline on the same %d frames, in alternating order; the median '
                             'of the per-round ratios is reported with its spread (default 9)'
                             % ROUND_FRAMES)


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
    """Return this process's peak resident memory in MB.

    Linux's VmHWM (high-water mark of this address space) starts afresh in a spawned child;
    ``getrusage``'s ru_maxrss does not (it keeps the parent's peak across fork and exec, which
    made every child report the bench process's own ~690 MB), so it is only the fallback.
    """
    try:
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
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
    # ONNX Runtime's idle threads spin by default; beside a torch pipeline in the same process
    # (the naive one) they would take its CPU, so they sleep here.
    segmenters = {name: Segmenter.from_model(
        job['model_dir'], backend=name, model_size=job['size'], batch_size=job['batch_size'],
        backend_options=dict(options, spinning=False) if name == 'onnxruntime' else options)
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
            len(tiles) * segmenters['torch'].backend.gflop(tiles[:1]), 3)
        out['tx2_floor_ms'] = round(out['gflop_per_frame'] / TX2_FP16_TFLOPS, 1)
        out['tx2_projected_ms'] = round(
            out['gflop_per_frame'] / (TX2_EFFICIENCY * TX2_FP16_TFLOPS), 1)
    naive = None
    if job.get('naive'):
        from sat_seg_ros.modeling import load_sam_model

        naive = NaivePipeline(load_sam_model(job['model_dir']), job['size'],
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
    if job.get('rounds'):
        out.update(headline_rounds(first, naive, job, frames))
        return out
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


def headline_rounds(segmenter, naive, job: dict, frames) -> dict:
    """Time ours against the naive pipeline in rounds; return the per-round ratio statistics.

    Each round runs the same ROUND_FRAMES frames through both pipelines, ours first in even
    rounds and naive first in odd ones, so a change of load on a shared machine hits both sides
    of a round alike; the median of the per-round ratios and its spread (min, max) are robust to
    one disturbed round. Masks are compared on every frame: identical pixels and IoU.
    """
    ratios, ours_s, naive_s, identical, ious = [], [], [], [], []
    batch = frames[:ROUND_FRAMES]
    for index in range(job['rounds']):
        def time_ours():
            start = time.perf_counter()
            results = [segmenter.segment(frame) for frame in batch]
            return time.perf_counter() - start, results

        def time_naive():
            start = time.perf_counter()
            probabilities = [naive.probability(frame) for frame in batch]
            return time.perf_counter() - start, probabilities

        if index % 2 == 0:
            (ours, results), (theirs, references) = time_ours(), time_naive()
        else:
            (theirs, references), (ours, results) = time_naive(), time_ours()
        ratios.append(theirs / ours)
        ours_s.append(ours / len(batch))
        naive_s.append(theirs / len(batch))
        if index == 0:
            for result, reference in zip(results, references):
                threshold = (segmenter.config.threshold if job['trained']
                             else float(np.median(reference)))
                a, b = result.probability > threshold, reference > threshold
                identical.append(float((a == b).mean()))
                if b.any() or a.any():
                    ious.append(mask_iou(a, b))
    return {'rounds': job['rounds'], 'round_frames': len(batch),
            'ratio_median': round(float(np.median(ratios)), 2),
            'ratio_min': round(float(np.min(ratios)), 2),
            'ratio_max': round(float(np.max(ratios)), 2),
            'ratios': [round(float(r), 3) for r in ratios],
            'ours_ms_per_frame_median': round(1000 * float(np.median(ours_s)), 1),
            'naive_ms_per_frame_median': round(1000 * float(np.median(naive_s)), 1),
            'identical_pixels_min': round(float(np.min(identical)), 5),
            'mask_iou_min': round(float(np.min(ious)), 4) if ious else None,
            'agreement_threshold': ('model threshold' if job['trained']
                                    else 'median of naive')}


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
        from sat_seg_training.export import export_model

        export_model(model_dir, static_batch=None, verify=False)
        return True
    except ImportError as error:
        print('  onnxruntime rows skipped: %s' % error)
        return False


COLUMNS = ('model', 'size', 'tiles', 'backend', 'p50_ms', 'p95_ms', 'GFLOP', 'TX2_min',
           'TX2_30%', 'peak_MB')


def _print_rows(result: dict, memory: Dict[str, float]) -> None:
    fmt = '%-8s %5s %5s %-12s %8s %8s %8s %8s %8s %8s'
    for backend in [key for key in ('torch', 'onnxruntime', 'naive') if key in result]:
        stats = result[backend]['total']
        row = (result['model'], result['size'], result['tiles_per_frame'], backend,
               stats['p50_ms'], stats['p95_ms'], result.get('gflop_per_frame', '-'),
               result.get('tx2_floor_ms', '-'), result.get('tx2_projected_ms', '-'),
               memory.get(backend, '-'))
        print(fmt % row, flush=True)


def _memory(base: dict, name: str, model_dir: str, size: int, backends, **extra) -> dict:
    peaks = {}
    for backend in backends:
        result = _run_isolated(dict(base, name=name, model_dir=model_dir, size=size, frames=1,
                                    backends=[backend], memory_only=True, **extra))
        peaks[backend] = result['peak_rss_mb']
    return peaks


def _write_cnn_model(folder: str, name: str) -> str:
    """Write the bundled model's architecture with random weights, and its sat_seg.json.

    The architecture is read from the bundled ``config.json`` (sat-cnn when that is not a
    CNN-encoder SAM), so this row always measures what ships.
    """
    import torch

    from sat_seg_ros.config import DEFAULT_MODEL_DIR, write_model_info
    from sat_seg_ros.modeling import CnnSamConfig, CnnSamModel, MODEL_TYPE, build_cnn_sam

    path = os.path.join(folder, name)
    config_file = DEFAULT_MODEL_DIR / 'config.json'
    stored = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if stored.get('model_type') == MODEL_TYPE:
        torch.manual_seed(0)
        CnnSamModel(CnnSamConfig.from_dict(stored)).save_pretrained(path)
    else:
        build_cnn_sam(seed=0).save_pretrained(path)
    write_model_info(path, {'prompt_mode': 'box', 'model_size': 512, 'tile_size': 256})
    return path


def _headline(base: dict, name: str, model_dir: str, rounds: int, trained: bool,
              backend: str = 'torch') -> dict:
    result = _run_isolated(dict(base, name=name, model_dir=model_dir, size=512,
                                frames=ROUND_FRAMES, naive=True, trained=trained,
                                backends=[backend], rounds=rounds))
    result['backend'] = backend
    print('  %s @512, %s vs naive: %.2fx median of %d rounds (min %.2fx, max %.2fx); '
          '%.1f vs %.1f ms per frame; identical mask pixels >= %.4f, mask IoU >= %s (%s)'
          % (name, backend, result['ratio_median'], result['rounds'], result['ratio_min'],
             result['ratio_max'], result['ours_ms_per_frame_median'],
             result['naive_ms_per_frame_median'], result['identical_pixels_min'],
             result['mask_iou_min'], result['agreement_threshold']), flush=True)
    return result


def run(args: argparse.Namespace) -> int:
    """Run every measurement, print a table, optionally write JSON."""
    from sat_seg_ros.config import atomic_write_text, DEFAULT_MODEL_DIR
    from sat_seg_ros.modeling import model_type

    sizes = [int(size) for size in args.sizes.split(',')]
    chosen = {name.strip() for name in args.models.split(',') if name.strip()}
    unknown = chosen - {'small', 'cnn', 'default', 'vit-b'}
    if unknown:
        raise ValueError('--models: unknown %s; choose from small, cnn, default, vit-b'
                         % sorted(unknown))
    if args.no_vitb:
        chosen.discard('vit-b')
    results, headlines = [], {}
    print('%-8s %5s %5s %-12s %8s %8s %8s %8s %8s %8s' % COLUMNS)
    with tempfile.TemporaryDirectory() as folder:
        base = {'threads': args.threads, 'batch_size': 16, 'trained': False}
        models = []
        if 'small' in chosen:
            models.append(('small', _write_model(folder, 'small', **SMALL)))
        if 'cnn' in chosen:
            models.append(('cnn', _write_cnn_model(folder, 'cnn')))
        backends_of = {}
        for name, model_dir in models:
            backends_of[name] = ['torch'] + (['onnxruntime'] if _export(model_dir) else [])
            for size in sizes:
                peaks = _memory(base, name, model_dir, size, backends_of[name])
                counted = {}
                for backend in backends_of[name]:  # one process each: no shared thread pools
                    result = _run_isolated(dict(base, name=name, model_dir=model_dir,
                                                size=size, frames=args.frames,
                                                backends=[backend]))
                    result['peak_rss_mb'] = peaks
                    for key in ('gflop_per_frame', 'tx2_floor_ms', 'tx2_projected_ms'):
                        if key in result:  # counted by torch; the same graph for every backend
                            counted[key] = result[key]
                    result.update({key: value for key, value in counted.items()
                                   if key not in result})
                    results.append(result)
                    _print_rows(result, peaks)
        print('headline ratios (alternating rounds of %d frames of 512x641):' % ROUND_FRAMES)
        for name, model_dir in models:
            for backend in backends_of[name]:
                headlines['%s/%s' % (name, backend)] = _headline(
                    base, name, model_dir, args.rounds, False, backend)
        if 'default' in chosen and (DEFAULT_MODEL_DIR / 'config.json').is_file():
            bundled = os.path.join(folder, 'default')
            shutil.copytree(DEFAULT_MODEL_DIR, bundled)
            for backend in ['torch'] + (['onnxruntime'] if _export(bundled) else []):
                key = 'default/%s' % backend
                headlines[key] = _headline(base, 'default', bundled, args.rounds, True, backend)
                headlines[key]['family'] = model_type(bundled)
        if 'vit-b' in chosen:
            vitb = _write_model(folder, 'vit-b')
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
    summary = {
        'headline': headlines,
        'gflop_per_frame': {'%s@%d' % (r['model'], r['size']): r['gflop_per_frame']
                            for r in results if 'gflop_per_frame' in r},
        'tx2_projected_ms': {'%s@%d' % (r['model'], r['size']): r['tx2_projected_ms']
                             for r in results if 'tx2_projected_ms' in r},
        'tx2_fp16_tflops': TX2_FP16_TFLOPS, 'tx2_efficiency': TX2_EFFICIENCY,
        'machine': '%s, %d CPU cores, Python %s, load average %.1f at the end' % (
            platform.processor() or platform.machine(), os.cpu_count(),
            platform.python_version(), os.getloadavg()[0]),
        'results': results,
    }
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2) + '\n')
        print('wrote %s' % args.json)
    return 0
