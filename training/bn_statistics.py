"""BatchNorm running statistics that do not depend on how a batch is split between threads.

With ``workers`` > 1, ``train`` runs each batch as row chunks in concurrent threads that share
one model (``train._forward_backward``). Every BatchNorm layer normalises a chunk by that
chunk's own statistics, as it should, but it also folds them into the shared running mean and
variance in place, and two threads doing that race: the result depends on which thread came
first (m^2 times the difference of the chunks' means, for momentum m), an update can be lost,
and a run cannot be repeated bit for bit. Weights and gradients are not touched by it (a layer
in training mode does not read its running statistics), but validation and the exported model
are.

``BatchStatistics`` takes that update away from the layers while a step's chunks run: each
chunk's layer call writes the chunk's mean and unbiased variance, which its normalisation
computes anyway, into buffers of its own (``batch_norm`` with momentum 1), and after the chunks
each layer takes one update from the whole batch's statistics, the chunks' combined in row
order: deterministic, at no measurable cost, and for the first layer what a single worker would
store (up to rounding; deeper layers see each chunk normalised by its own statistics upstream,
as they always did).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Dict, Iterable, List, Tuple

import torch


class BatchStatistics:
    """The running statistics of every BatchNorm layer of ``modules``, updated once per step.

    Use ``step()`` around the whole step and ``chunk(start)`` around each chunk's forward pass
    (``start``: the chunk's first row, which orders the chunks). Outside a ``step`` the layers
    are untouched; inside one, a layer called outside a ``chunk`` runs as usual.
    """

    def __init__(self, modules: Iterable[torch.nn.Module]) -> None:
        self.layers = [layer for module in modules for layer in module.modules()
                       if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)
                       and layer.track_running_stats]
        self._local = threading.local()
        self._lock = threading.Lock()
        # (layer, chunk start) -> per call of the layer in that chunk: (count, mean, variance)
        self._records: Dict[Tuple[int, int], List[tuple]] = {}

    def __len__(self) -> int:
        return len(self.layers)

    def _forward(self, layer, index: int, values):
        start = getattr(self._local, 'start', None)
        if start is None or not layer.training:
            return type(layer).forward(layer, values)
        layer._check_input_dim(values)
        mean = torch.zeros_like(layer.running_mean)
        variance = torch.ones_like(layer.running_var)
        # Momentum 1: the buffers receive this chunk's mean and unbiased variance, exactly those
        # its normalisation uses; the output is the layer's own in training mode.
        out = torch.nn.functional.batch_norm(values, mean, variance, layer.weight, layer.bias,
                                             True, 1.0, layer.eps)
        with self._lock:
            self._records.setdefault((index, start), []).append(
                (values.numel() // values.shape[1], mean, variance))
        return out

    @contextlib.contextmanager
    def chunk(self, start: int):
        """Run a chunk's forward pass (in this thread) as the chunk starting at row ``start``."""
        self._local.start = start
        try:
            yield
        finally:
            self._local.start = None

    @contextlib.contextmanager
    def step(self):
        """Run one step's chunks with the layers' own update off; then update them once.

        A step that raises leaves the running statistics as they were before it.
        """
        self._records = {}
        for index, layer in enumerate(self.layers):
            layer.forward = functools.partial(self._forward, layer, index)
        try:
            yield
        finally:
            for layer in self.layers:
                del layer.forward  # the class's forward again
        self._update()

    def _update(self) -> None:
        with torch.no_grad():
            for index, layer in enumerate(self.layers):
                starts = sorted(start for (i, start) in self._records if i == index)
                if not starts:
                    continue  # not run in training mode this step
                calls = [self._records[(index, start)] for start in starts]
                for call in range(min(len(chunk) for chunk in calls)):
                    count, mean, variance = combine(
                        [(n, m.double(), v.double() * max(n - 1, 1))
                         for n, m, v in (chunk[call] for chunk in calls)])
                    layer.num_batches_tracked.add_(1)
                    factor = (1.0 / float(layer.num_batches_tracked) if layer.momentum is None
                              else layer.momentum)
                    for buffer, value in ((layer.running_mean, mean),
                                          (layer.running_var, variance)):
                        buffer.copy_((1.0 - factor) * buffer.double() + factor * value)
        self._records = {}


def combine(parts: List[tuple]):
    """Return (count, mean, unbiased variance) of the union of (count, mean, M2) parts, in order.

    M2 is the sum of squared deviations from the part's mean (Chan et al.'s pairwise update).
    """
    count = sum(part[0] for part in parts)
    mean = sum(part[0] * part[1] for part in parts) / count
    m2 = sum(part[2] + part[0] * (part[1] - mean) ** 2 for part in parts)
    return count, mean, m2 / max(count - 1, 1)
