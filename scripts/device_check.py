"""GPU check on a machine with an NVIDIA GPU: every backend, latency per frame, parity.

Runs, for model sizes 512 / 1024 / 2048 on the same synthetic frames: torch on CPU (the
reference), torch CUDA fp32 and fp16, onnxruntime with the CUDA and TensorRT execution
providers (if this onnxruntime has them), and the tensorrt backend fp32 and fp16 (if TensorRT
and pycuda / cuda-python are installed; engines are built on the spot). Each line: p50 / p95
ms per frame, mask IoU and max probability difference against torch CPU. Anything missing is
reported as skipped with the reason; one failing backend does not stop the others.

The model is the default model's architecture (``sat-cnn``, the CNN-encoder SAM family) with
random weights (latency does not depend on weights), ``--family small`` for the 5.2 M-param ViT
config of ``sat-seg bench``, or ``--model DIR``. Results go to ``--json`` (default
``$OUT/device_check.json`` when $OUT is set). Meant to finish in a few minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default=None,
                        help='model folder (default: a random-weight model of --family)')
    parser.add_argument('--family', default='cnn', choices=('cnn', 'small'),
                        help='architecture without --model: sat-cnn (default) or the ViT small')
    parser.add_argument('--sizes', default='512,1024,2048')
    parser.add_argument('--frames', type=int, default=5, help='timed frames per size/backend')
    parser.add_argument('--cpu-sizes', default='512,1024',
                        help='sizes at which torch CPU runs as the parity reference (others '
                             'compare against torch CUDA fp32)')
    parser.add_argument('--json', default=None)
    return parser.parse_args(argv)


def environment() -> dict:
    """Versions of everything relevant, and the GPU as nvidia-smi sees it."""
    info = {'python': platform.python_version(), 'machine': platform.platform(),
            'cpus': os.cpu_count()}
    try:
        info['nvidia_smi'] = subprocess.run(
            ['nvidia-smi', '--query-gpu=name,driver_version,memory.total,compute_cap',
             '--format=csv,noheader'], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        info['nvidia_smi'] = 'unavailable: %s' % error
    for name in ('torch', 'transformers', 'onnx', 'onnxruntime', 'tensorrt', 'pycuda',
                 'cuda'):
        try:
            module = __import__(name)
            info[name] = getattr(module, '__version__', 'installed')
        except ImportError as error:
            info[name] = 'missing (%s)' % error
    try:
        import onnxruntime
        info['onnxruntime_providers'] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    try:
        import torch
        info['torch_cuda'] = torch.cuda.is_available() and torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def backends() -> list:
    """(label, backend name, device, options) for every configuration to try."""
    return [
        ('torch-cuda-fp32', 'torch', 'cuda', {}),
        ('torch-cuda-fp16', 'torch', 'cuda', {'dtype': 'float16'}),
        ('ort-cuda', 'onnxruntime', 'cuda', {}),
        ('ort-tensorrt-ep', 'onnxruntime', 'tensorrt', {}),
        ('tensorrt-fp32', 'tensorrt', 'cuda', {'precision': 'fp32', 'build': True}),
        ('tensorrt-fp16', 'tensorrt', 'cuda', {'precision': 'fp16', 'build': True}),
    ]


def run_frames(segmenter, frames) -> tuple:
    """Return (per-frame seconds, results) after one warm-up frame."""
    segmenter.segment(frames[0])
    seconds, results = [], []
    for frame in frames:
        start = time.perf_counter()
        results.append(segmenter.segment(frame))
        seconds.append(time.perf_counter() - start)
    return seconds, results


def compare(results, reference) -> dict:
    """Mask IoU (min over frames) and max probability difference against ``reference``."""
    ious, diff = [], 0.0
    for ours, theirs in zip(results, reference):
        union = np.logical_or(ours.mask, theirs.mask).sum()
        ious.append(1.0 if union == 0 else
                    float(np.logical_and(ours.mask, theirs.mask).sum() / union))
        diff = max(diff, float(np.abs(ours.probability - theirs.probability).max()))
    return {'mask_iou_min': round(min(ious), 4), 'max_prob_diff': diff}


def latency(seconds) -> dict:
    """p50 / p95 in ms."""
    values = np.asarray(seconds) * 1e3
    return {'p50_ms': round(float(np.percentile(values, 50)), 2),
            'p95_ms': round(float(np.percentile(values, 95)), 2)}


def main(argv=None) -> int:
    """Run every check; print a table and write the JSON; exit 0 unless nothing could run."""
    args = parse_args(argv)
    os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
    out_json = args.json or (os.path.join(os.environ['OUT'], 'device_check.json')
                             if os.environ.get('OUT') else 'device_check.json')
    report = {'environment': environment(), 'rows': [], 'skipped': []}
    print(json.dumps(report['environment'], indent=1), flush=True)
    from sat_seg_ros.commands.bench import SMALL, synthetic_frames
    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_ros.testing import make_tiny_model
    from sat_seg_training.export import export_model

    workdir = tempfile.mkdtemp(prefix='device_check_')
    model_dir = os.path.join(workdir, 'model')
    if args.model:
        shutil.copytree(args.model, model_dir)
    elif args.family == 'cnn':
        from sat_seg_ros.config import write_model_info
        from sat_seg_ros.modeling import build_cnn_sam

        build_cnn_sam(seed=0).save_pretrained(model_dir)
        write_model_info(model_dir, {'prompt_mode': 'box', 'model_size': 512, 'tile_size': 256})
    else:
        make_tiny_model(model_dir, **SMALL)
    report['export'] = export_model(model_dir, static_batch=16, verify=True)
    frames = synthetic_frames(args.frames)
    cpu_sizes = {int(size) for size in args.cpu_sizes.split(',') if size}
    for size in [int(size) for size in args.sizes.split(',')]:
        reference, reference_label = None, None
        configs = ([('torch-cpu', 'torch', 'cpu', {})] if size in cpu_sizes else []) \
            + backends()
        for label, name, device, options in configs:
            try:
                segmenter = Segmenter.from_model(model_dir, backend=name, device=device,
                                                 model_size=size, backend_options=options)
                seconds, results = run_frames(segmenter, frames)
                describe = segmenter.backend.describe()
                segmenter.close()
            except Exception as error:  # noqa: B902 - report and go on with the next backend
                report['skipped'].append({'size': size, 'backend': label,
                                          'reason': '%s: %s' % (type(error).__name__, error),
                                          'trace': traceback.format_exc(limit=3)})
                print('%5d %-16s skipped: %s' % (size, label, error), flush=True)
                continue
            if reference is None:
                reference, reference_label = results, label
            row = {'size': size, 'backend': label, 'describe': describe,
                   'reference': reference_label}
            row.update(latency(seconds))
            row.update(compare(results, reference))
            report['rows'].append(row)
            print('%5d %-16s p50 %9.1f ms  p95 %9.1f ms  IoU vs %s %.4f  max dprob %.2g'
                  % (size, label, row['p50_ms'], row['p95_ms'], reference_label,
                     row['mask_iou_min'], row['max_prob_diff']), flush=True)
    with open(out_json, 'w') as stream:
        json.dump(report, stream, indent=2, default=str)
    print('wrote %s' % out_json)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report['rows'] else 1


if __name__ == '__main__':
    sys.exit(main())
