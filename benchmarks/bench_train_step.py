"""What BatchNorm statistics from the whole batch cost a training step split over CPU workers.

With ``workers`` > 1 a step runs its batch as concurrent row chunks (``train._forward_backward``);
``bn_statistics.BatchStatistics`` makes the BatchNorm layers' running statistics the whole
batch's, combined after the chunks, instead of each layer folding in each chunk as it runs
(a race). This times the same step both ways, interleaved (so a busy CPU slows them alike):
the model's forward and backward through the runtime's ``SamTilePredictor`` with the loss the
CNN stages train with, on random tiles.

Usage: python benchmarks/bench_train_step.py [--architecture sat-cnn-fine-ctx] [--batch 128]
           [--workers 2] [--threads 2] [--rounds 6] [--precision auto]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> int:
    import torch

    from sat_seg_ros.backends.torch_backend import SamTilePredictor
    from sat_seg_training.bn_statistics import BatchStatistics
    from sat_seg_training.losses import segmentation_loss
    from sat_seg_training.models import build_model
    from sat_seg_training.train import _forward_backward, resolve_precision

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--architecture', default='sat-cnn-fine-ctx')
    parser.add_argument('--batch', type=int, default=128, help='tiles per step')
    parser.add_argument('--workers', type=int, default=2, help='concurrent chunks per step')
    parser.add_argument('--threads', type=int, default=2, help='intra-op threads in all')
    parser.add_argument('--rounds', type=int, default=6, help='timed steps of each setting')
    parser.add_argument('--precision', default='auto', help='auto, bf16 or fp32')
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision)
    model = build_model(args.architecture, seed=0).train()
    net = SamTilePredictor(model, 'box')
    size = model.config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(args.batch, 3, size, size, generator=generator)
    target = (torch.rand(args.batch, size, size, generator=generator) > 0.97).float()
    statistics = BatchStatistics([model])

    def chunk_loss(rows, scale):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16'):
            low_res = net(pixels[rows])
        logits = torch.nn.functional.interpolate(low_res.float()[:, None], size=(size, size),
                                                 mode='bilinear', align_corners=False)[:, 0]
        value = segmentation_loss('bce_dice', logits, target[rows], 3.0)
        (value * scale).backward()
        return value.detach()

    settings = {'each layer folds in each chunk': None,
                'whole batch, after the chunks': statistics}
    spent = {name: [] for name in settings}
    threads = max(1, args.threads // args.workers)
    for round_ in range(args.rounds + 1):  # the first round warms up and is not counted
        for name, chosen in settings.items():
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            _forward_backward(chunk_loss, args.batch, args.workers, threads, chosen)
            if round_:
                spent[name].append(time.perf_counter() - started)
    print('%s, %d tiles of %d px per step, %d workers x %d thread(s), %s, %d BatchNorm layers'
          % (args.architecture, args.batch, size, args.workers, threads, precision,
             len(statistics)))
    base = np.median(spent['each layer folds in each chunk'])
    for name, values in spent.items():
        print('%-32s %7.3f s/step (median of %d)  x%.3f' % (name, np.median(values),
                                                            len(values), np.median(values) / base))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
