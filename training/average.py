"""Average the weights of training checkpoints of one architecture (a "model soup").

Two runs that start from the same weights and train on different mixes (e.g. stage 22, colour
first, and stage 24, gray first, which trained on from stage 22) stay close enough in weight
space that the mean of their weights is a model of its own, which can keep the strengths of
both (docs/training.md). ``sat-seg train --average OUT A.pt B.pt`` writes that mean as a
checkpoint that exports, calibrates and trains on (``init_from``) like any other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from sat_seg_training.train import (model_weights, read_checkpoint, stored_config,
                                    stored_model_config, write_checkpoint)

#: What an averaged checkpoint keeps: the weights and what export and init_from read. The
#: optimizer's moments belong to one run and are not averaged.
KEPT = ('sam_config', 'train_config', 'step', 'best', 'history', 'elapsed_s', 'planned_steps',
        'data_digest')


def _mean_state(states: Sequence[Dict[str, Any]], weights: Sequence[float], what: str,
                names: Sequence[str]) -> Dict[str, Any]:
    """Return the weighted mean of state dicts with the same keys and shapes.

    Integer buffers (BatchNorm's step counters) are taken from the last.
    """
    reference = states[-1]
    for state, name in zip(states, names):
        if set(state) != set(reference):
            odd = sorted(set(state) ^ set(reference))[0]
            raise ValueError('%s and %s hold different %s (%s is in one only): average '
                             'checkpoints of one architecture' % (name, names[-1], what, odd))
        for key, value in state.items():
            if tuple(value.shape) != tuple(reference[key].shape):
                raise ValueError('%s and %s differ in %s %s (%s against %s): average '
                                 'checkpoints of one architecture'
                                 % (name, names[-1], what, key, tuple(value.shape),
                                    tuple(reference[key].shape)))
    mean = {}
    for key, value in reference.items():
        if value.is_floating_point():
            total = sum(weight * state[key].double() for state, weight in zip(states, weights))
            mean[key] = total.to(value.dtype)
        else:
            mean[key] = value.clone()
    return mean


def _architecture(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """Return the checkpoint's model config as its config class reads it.

    The writer's transformers version is left out: versions spell the same model differently
    (e.g. an empty or a filled ``model_type`` of the mask decoder's config).
    """
    config = stored_model_config(checkpoint)[1].to_dict()
    config.pop('transformers_version', None)
    return config


def average_checkpoints(paths: Sequence[os.PathLike | str], out: os.PathLike | str,
                        weights: Optional[Sequence[float]] = None) -> Path:
    """Write the weighted mean of the checkpoints' model (and dense head) weights to ``out``.

    A checkpoint's model weights are its run's moving average when it kept one (ema_decay).

    ``weights`` default to equal shares and are normalised to sum to 1. Every checkpoint must
    hold the same architecture (its SAM config and the names and shapes of its weights); a dense
    head is averaged when every checkpoint has one and dropped otherwise. The rest (config,
    step, history) comes from the last checkpoint, with ``averaged_from`` naming the sources.
    Nothing is written unless every check passes; the file appears whole (written beside it,
    then renamed).
    """
    names = [str(path) for path in paths]
    if len(names) < 2:
        raise ValueError('averaging needs at least two checkpoints, got %d' % len(names))
    shares = [1.0] * len(names) if weights is None else [float(w) for w in weights]
    if len(shares) != len(names):
        raise ValueError('%d weights for %d checkpoints' % (len(shares), len(names)))
    if any(not share > 0 for share in shares):
        raise ValueError('averaging weights must be positive, got %s' % shares)
    shares = [share / sum(shares) for share in shares]
    checkpoints: List[Dict[str, Any]] = []
    for path in names:
        checkpoint = read_checkpoint(path)
        if not isinstance(checkpoint, dict) or 'model' not in checkpoint \
                or 'sam_config' not in checkpoint:
            raise ValueError('%s is not a training checkpoint of sat-seg train (no model '
                             'weights and SAM config)' % path)
        stored_config(checkpoint, path)
        checkpoints.append(checkpoint)
    for checkpoint, path in zip(checkpoints, names):
        if _architecture(checkpoint) != _architecture(checkpoints[-1]):
            raise ValueError('%s and %s hold models of different architectures (their SAM '
                             'configs differ): average checkpoints of one architecture'
                             % (path, names[-1]))
    result = {key: checkpoints[-1][key] for key in KEPT if key in checkpoints[-1]}
    # A run that kept a moving average (ema_decay) is averaged by it, as it exports.
    result['model'] = _mean_state([model_weights(c) for c in checkpoints], shares, 'weights',
                                  names)
    if all(c.get('dense_head') is not None for c in checkpoints):
        result['dense_head'] = _mean_state([c['dense_head'] for c in checkpoints], shares,
                                           'dense-head weights', names)
    result['averaged_from'] = [{'path': path, 'step': c.get('step'), 'weight': share}
                               for path, c, share in zip(names, checkpoints, shares)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(result, out)
    return out
