"""Where a frame's time goes in each mode: the model, and the CPU work around it, by stage.

Every setting segments the same frames in turn (interleaved, so a busy CPU slows them alike).
The table gives milliseconds per frame for each stage of ``Segmenter.segment`` (preprocess:
pixel conversion, resize and cutting; model: the backend; stitch: blending, resizing back,
the model size's map under a gated size's tiles left out, and averaging the sizes;
postprocess: threshold and components), the CPU side (everything but the backend's stage) and
tiles per frame. On a GPU the model stage shrinks and the CPU side is most of a frame.

Usage: python benchmarks/bench_stages.py [--dataset DIR] [--model DIR] [--limit N]
           [--backend torch|onnxruntime] [--rounds R] [--json FILE]
Without ``--dataset``, 40 synthetic gray 512 x 641 frames.
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np

STAGES = ('preprocess', 'model', 'stitch', 'postprocess')
SETTINGS = {
    '512 alone': {'fuse_sizes': ()},
    '1024 alone': {'model_size': 1024, 'fuse_sizes': ()},
    '512 + 1024': {'fuse_sizes': (1024,)},
    'multiscale': {'mode': 'multiscale'},
    'accurate': {'mode': 'accurate'},
}


def main() -> int:
    from sat_seg_ros.commands.bench import synthetic_frames
    from sat_seg_ros.segmenter import Segmenter

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default=None, help='dataset folder (default: synthetic)')
    parser.add_argument('--model', default=None, help='model folder (default: bundled)')
    parser.add_argument('--limit', type=int, default=40, help='first N frames (0: all)')
    parser.add_argument('--backend', default='torch', help='torch or onnxruntime')
    parser.add_argument('--rounds', type=int, default=2, help='passes over the frames')
    parser.add_argument('--json', default=None, help='also write the rows as JSON')
    args = parser.parse_args()

    if args.dataset:
        from sat_seg_training.dataset import load_dataset
        records = list(load_dataset(args.dataset))
        records = records[:args.limit] if args.limit > 0 else records
        frames = [record.read_image() for record in records]
    else:
        frames = synthetic_frames(args.limit or 40, seed=1)
    segmenters = {}
    for name, options in SETTINGS.items():
        segmenters[name] = Segmenter.from_model(args.model, backend=args.backend, **options)
        # The model's warning (if any) once, not once per setting.
        logging.getLogger('sat_seg_ros.segmenter').setLevel(logging.ERROR)
    for segmenter in segmenters.values():  # warm-up: first-call allocations, lazy loads
        segmenter.segment(frames[0])
    spent = {name: {stage: [] for stage in STAGES + ('total',)} for name in segmenters}
    tiles = {name: [] for name in segmenters}
    for _ in range(max(1, args.rounds)):
        for frame in frames:
            for name, segmenter in segmenters.items():
                result = segmenter.segment(frame)
                for stage in STAGES + ('total',):
                    spent[name][stage].append(1000.0 * result.timings[stage])
                tiles[name].append(result.tiles)
    print('%d frames x %d rounds (%s), %s, backend %s' % (
        len(frames), max(1, args.rounds), args.dataset or 'synthetic gray 512 x 641',
        args.model or 'bundled model', args.backend))
    header = ('ms/frame', 'preprocess', 'model', 'stitch', 'post', 'total', 'CPU side', 'tiles')
    print('%-12s %10s %8s %8s %8s %8s %8s %6s' % header)
    rows = []
    for name in segmenters:
        row = {stage: float(np.mean(values)) for stage, values in spent[name].items()}
        row.update(setting=name, cpu_side=row['total'] - row['model'],
                   tiles_per_frame=float(np.mean(tiles[name])))
        rows.append(row)
        print('%-12s %10.2f %8.2f %8.2f %8.2f %8.2f %8.2f %6.1f' % (
            name, row['preprocess'], row['model'], row['stitch'], row['postprocess'],
            row['total'], row['cpu_side'], row['tiles_per_frame']))
    for segmenter in segmenters.values():
        segmenter.close()
    if args.json:
        from sat_seg_ros.config import atomic_write_text
        atomic_write_text(args.json, json.dumps({'dataset': args.dataset, 'backend': args.backend,
                                                 'rows': rows}, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
