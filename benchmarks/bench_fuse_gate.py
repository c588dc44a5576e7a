"""Time the fused modes with and without their ``fuse_gate``, side by side on the same frames.

For each frame of a dataset every setting runs in turn (interleaved, so a busy CPU slows them
alike), and the table gives seconds per frame (mean and slowest frame), tiles per frame (mean
and most), the ratio to the ungated mode, and how often the gated mask is scored the same as
the ungated one (correct in both or wrong in both, IoU > 0.5 against the true mask).

Usage: python benchmarks/bench_fuse_gate.py --dataset DIR [--model DIR] [--limit N]
           [--max-tiles N[,M...]] [--json FILE]
Settings: 512 alone, then for the 512 + 1024 fusion and the mode 'multiscale' (512 + 768 +
1024) of the model's sat_seg.json: every tile (no ``fuse_gate``, no ``fuse_max_tiles``) and the
model's settings; ``--max-tiles`` adds the mode 'multiscale' with its gate and each cap on the
fused tiles (``fuse_max_tiles``; 0: no cap).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np


def main() -> int:
    from sat_seg_ros import metrics
    from sat_seg_ros.config import atomic_write_text
    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.dataset import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', required=True, help='dataset folder (with masks)')
    parser.add_argument('--model', default=None, help='model folder (default: bundled)')
    parser.add_argument('--limit', type=int, default=100, help='first N frames (0: all)')
    parser.add_argument('--max-tiles', default='', dest='max_tiles',
                        help="comma-separated caps on the mode 'multiscale''s fused tiles")
    parser.add_argument('--json', default=None, help='also write the rows as JSON')
    args = parser.parse_args()
    caps = [int(part) for part in args.max_tiles.split(',') if part.strip()]

    settings = {'512 alone': {'fuse_sizes': ()}}
    for name, options in (('512 + 1024', {'fuse_sizes': (1024,)}),
                          ('multiscale', {'mode': 'multiscale'})):
        settings[name + ', every tile'] = dict(options, fuse_gate=0.0, fuse_max_tiles=0)
        settings[name + ", model's settings"] = dict(options)
    for cap in caps:
        settings["multiscale, model's gate, %s" % ('at most %d' % cap if cap else 'no cap')] = {
            'mode': 'multiscale', 'fuse_max_tiles': cap}
    segmenters = {}
    for name, options in settings.items():
        segmenters[name] = Segmenter.from_model(args.model, **options)
        # The model's warning (if any) once, not once per setting.
        logging.getLogger('sat_seg_ros.segmenter').setLevel(logging.ERROR)
    records = list(load_dataset(args.dataset))
    records = records[:args.limit] if args.limit > 0 else records
    seconds = {name: [] for name in settings}
    tiles = {name: [] for name in settings}
    correct = {name: [] for name in settings}
    for record in records:
        image = record.read_image()
        truth = record.read_mask() if record.positive else np.zeros(image.shape[:2], bool)
        for name, segmenter in segmenters.items():
            start = time.perf_counter()
            result = segmenter.segment(image)
            seconds[name].append(time.perf_counter() - start)
            tiles[name].append(result.tiles)
            correct[name].append(metrics.iou(result.mask, truth) > metrics.IOU_CORRECT)
    rows = []
    print('%d frames of %s; %s' % (len(records), args.dataset, args.model or 'bundled model'))
    header = ('setting', 'gate', 'cap', 's/frame', 'slowest', 'x ungated', 'tiles', 'most',
              'accuracy', 'same')
    print('%-40s %5s %4s %8s %8s %9s %6s %5s %9s %6s' % header)
    for name, segmenter in segmenters.items():
        reference = (name.split(", model's")[0] + ', every tile' if "model's" in name
                     else name)
        row = {'setting': name, 'fuse_gate': segmenter.config.fuse_gate,
               'fuse_max_tiles': segmenter.config.fuse_max_tiles,
               'fuse_sizes': list(segmenter.config.fuse_sizes),
               'seconds_per_frame': float(np.mean(seconds[name])),
               'slowest_frame_s': float(np.max(seconds[name])),
               'ratio_to_every_tile': float(np.mean(seconds[name]) / np.mean(seconds[reference])),
               'tiles_per_frame': float(np.mean(tiles[name])), 'most_tiles': max(tiles[name]),
               'accuracy': float(np.mean(correct[name])),
               'same_outcome': float(np.mean(np.equal(correct[name], correct[reference])))}
        rows.append(row)
        print('%-40s %5.2f %4d %8.4f %8.4f %8.2fx %6.1f %5d %9.3f %6.3f' % (
            name, row['fuse_gate'], row['fuse_max_tiles'], row['seconds_per_frame'],
            row['slowest_frame_s'],
            row['ratio_to_every_tile'],
            row['tiles_per_frame'], row['most_tiles'], row['accuracy'], row['same_outcome']))
    for segmenter in segmenters.values():
        segmenter.close()
    if args.json:
        atomic_write_text(args.json, json.dumps({'dataset': args.dataset, 'rows': rows},
                                                indent=2) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
