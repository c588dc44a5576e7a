"""Choose the probability and seed thresholds on validation data; store them in sat_seg.json.

Each image's probability map is computed once with the Segmenter and labelled once per candidate
threshold; every (threshold, seed threshold, smallest component) rule is then scored with the
report's metric from the components' area, peak and overlap with the truth (the runtime's
thresholding and component filtering). The best accuracy wins; ties go to the higher mean IoU,
then to the threshold nearest 0.5, then to no seed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sat_seg_ros import metrics

DEFAULT_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.025), 3))
#: Seed thresholds (hysteresis) swept by ``sat-seg calibrate``; None: no seed test.
DEFAULT_SEED_THRESHOLDS = (None, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999)


def seed_label(seed: Optional[float]) -> str:
    """How reports print a seed threshold: 'none', or the value."""
    return 'none' if seed is None else '%g' % seed


@dataclasses.dataclass
class Components:
    """One image's components at one threshold: what any post-processing rule needs.

    Per component (arrays of the same length, label order): ``area`` (pixels), ``peak``
    (highest probability) and ``overlap`` (pixels on the true mask); ``truth_area`` is the true
    mask's pixel count.
    """

    area: np.ndarray
    peak: np.ndarray
    overlap: np.ndarray
    truth_area: int

    @classmethod
    def of(cls, probability: np.ndarray, truth: np.ndarray, threshold: float) -> 'Components':
        """Label ``probability > threshold`` as find_detections does (8-connected)."""
        import cv2
        from scipy import ndimage

        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            (probability > threshold).astype(np.uint8), connectivity=8)
        index = np.arange(1, count)
        # float32 like find_detections' peaks, so a seed compares the same way in both
        peak = (np.asarray(ndimage.maximum(probability, labels, index), np.float32)
                if count > 1 else np.zeros(0, np.float32))
        overlap = np.bincount(labels[truth], minlength=count)[1:]
        return cls(stats[1:, cv2.CC_STAT_AREA].astype(np.int64), peak, overlap,
                   int(np.count_nonzero(truth)))

    def outcome(self, min_area_px: int, max_detections: int,
                seed_threshold: Optional[float]) -> Tuple[float, bool, bool]:
        """Return (IoU, detected, overlaps the truth) of the runtime's rule on these components.

        The same selection as find_detections: at least ``min_area_px`` pixels (and 1), a peak
        above ``seed_threshold``, then the ``max_detections`` best by (peak, area).
        """
        keep = self.area >= max(1, min_area_px)
        if seed_threshold is not None:
            keep &= self.peak > seed_threshold
        chosen = np.flatnonzero(keep)
        if max_detections > 0 and len(chosen) > max_detections:
            order = np.lexsort((-self.area[chosen], -self.peak[chosen]))
            chosen = chosen[order[:max_detections]]
        area, overlap = int(self.area[chosen].sum()), int(self.overlap[chosen].sum())
        union = area + self.truth_area - overlap
        return (1.0 if union == 0 else overlap / union), len(chosen) > 0, overlap > 0


def component_tables(probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                     thresholds: Sequence[float]) -> Dict[float, List[Components]]:
    """Label every map once per threshold (the costly part of a sweep)."""
    if len(probabilities) != len(truths) or not probabilities:
        raise ValueError('need as many probability maps as masks, and at least one (got %d, %d)'
                         % (len(probabilities), len(truths)))
    return {float(t): [Components.of(p, np.asarray(m, bool), t)
                       for p, m in zip(probabilities, truths)] for t in thresholds}


def sweep(probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray],
          thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
          min_area_px: int = 16, max_detections: int = 0,
          seed_thresholds: Sequence[Optional[float]] = (None,),
          tables: Optional[Dict[float, List[Components]]] = None) -> Dict[str, Any]:
    """Score every (threshold, seed threshold) pair with the runtime's post-processing.

    Returns {'best_threshold', 'best_seed_threshold', 'best', 'table': [{threshold,
    seed_threshold, accuracy, ...}]}. A seed at or below the threshold gates nothing and is
    left out. The best accuracy wins; ties go to the higher mean IoU, then to the threshold
    nearest 0.5, then to no seed. ``tables`` (from component_tables) saves relabelling when
    several sweeps share the maps.
    """
    tables = tables or component_tables(probabilities, truths, thresholds)
    table = []
    for threshold in thresholds:
        images = tables[float(threshold)]
        for seed in seed_thresholds:
            if seed is not None and seed <= threshold:
                continue
            outcomes = [(image.truth_area > 0,) + image.outcome(min_area_px, max_detections, seed)
                        for image in images]
            row = metrics.summarize_outcomes(outcomes)
            row['threshold'] = float(threshold)
            row['seed_threshold'] = None if seed is None else float(seed)
            table.append(row)
    best = max(table, key=lambda r: (r['accuracy'], np.nan_to_num(r['mean_iou'], nan=-1.0),
                                     -abs(r['threshold'] - 0.5), r['seed_threshold'] is None))
    return {'best_threshold': best['threshold'], 'best_seed_threshold': best['seed_threshold'],
            'best': best, 'table': table}


def _best_post_processing(probabilities, truths, thresholds, min_areas, config,
                          seed_thresholds) -> Dict[str, Any]:
    """Sweep threshold, seed and smallest component on one set of maps; return the best."""
    tables = component_tables(probabilities, truths, thresholds)
    candidates = []
    for min_area in (list(min_areas) or [config.min_area_px]):
        candidate = sweep(probabilities, truths, thresholds, int(min_area),
                          config.max_detections, seed_thresholds, tables)
        candidate['min_area_px'] = int(min_area)
        candidates.append(candidate)
    result = max(candidates, key=lambda c: (c['best']['accuracy'],
                                            np.nan_to_num(c['best']['mean_iou'], nan=-1.0)))
    result['min_area_sweep'] = [{'min_area_px': c['min_area_px'],
                                 'threshold': c['best_threshold'],
                                 'seed_threshold': c['best_seed_threshold'],
                                 'accuracy': c['best']['accuracy'],
                                 'mean_iou': c['best']['mean_iou']} for c in candidates]
    return result


def choose_fuse_gate(outcomes: Sequence[Sequence[bool]], tolerance: float) -> int:
    """Return the index of the gate to keep, given each gate's per-image outcomes.

    ``outcomes[i][k]``: whether image k is right with gate i, gates in ascending order, the
    first the reference (0: every tile runs). The last gate wins whose accuracy is at least the
    reference's and which changes the outcome of at most ``tolerance`` of the images.
    """
    reference = np.asarray(outcomes[0], bool)
    chosen = 0
    for index, flags in enumerate(outcomes):
        flags = np.asarray(flags, bool)
        changed = np.count_nonzero(flags != reference)
        if flags.sum() >= reference.sum() and changed <= tolerance * len(reference):
            chosen = index
    return chosen


def _outcomes(probabilities, truths, result, max_detections) -> List[bool]:
    """Whether each image is right under ``result``'s post-processing (as the runtime does)."""
    from sat_seg_ros.postprocess import find_detections

    flags = []
    for probability, truth in zip(probabilities, truths):
        _, mask = find_detections(probability, probability > result['best_threshold'],
                                  result['min_area_px'], max_detections,
                                  result['best_seed_threshold'])
        flags.append(bool(metrics.image_correct(mask, truth)))
    return flags


def calibrate(model_dir: os.PathLike | str, dataset_dir: os.PathLike | str,
              model_size: Optional[int] = None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
              limit: int = 0, write: bool = True,
              plot: Optional[os.PathLike | str] = None,
              max_detections: Optional[int] = None,
              min_areas: Sequence[int] = (), backend: str = 'torch', device: str = 'cpu',
              seed_thresholds: Sequence[Optional[float]] = DEFAULT_SEED_THRESHOLDS,
              fuse_gates: Sequence[float] = (), fuse_gate_tolerance: float = 0.01,
              **overrides) -> Dict[str, Any]:
    """Sweep thresholds for ``model_dir`` on ``dataset_dir``; optionally write sat_seg.json.

    ``max_detections`` (None: the model's) is applied during the sweep and written with the
    threshold, so the stored pair is the one that was measured. ``min_areas`` also sweeps the
    smallest kept component (pixels); the best (accuracy, mean IoU) pair wins and both are
    written. Empty: the model's ``min_area_px`` only (or ``overrides['min_area_px']``).
    ``seed_thresholds`` are the hysteresis seeds swept with each threshold (None: no seed);
    the chosen one is written as ``seed_threshold`` (null when none wins).
    ``overrides`` are further Segmenter settings (tile_overlap, batch_size, prompt_mode; None:
    the model's; ``mode``: a named mode to start from and write to). The chosen values go to
    the top level of sat_seg.json when ``model_size`` is the model's own (and ``fuse_sizes``
    none or the model's), else to its ``by_model_size`` entry for that mode ("1024", or
    "512+1024" when fused), which the Segmenter applies in that mode only; with ``mode`` they
    go to ``modes[mode]``, which the Segmenter applies when asked for that mode
    (``result['written']`` says which).
    ``fuse_gates`` (with fused sizes) also sweeps the gate on the fused sizes' tiles: the maps
    are made once per gate and swept as above, and the largest gate is written, with its
    post-processing, that loses no accuracy against the smallest gate swept (0: every tile
    runs) and changes whether at most ``fuse_gate_tolerance`` of the images are right: a gate
    is to save time, not to move the result. ``result['fuse_gate_sweep']`` has each gate's
    best, tiles per image and changed images. A ``fuse_max_tiles`` override caps the fused
    tiles while the maps are made, and is written with the rest.
    """
    from sat_seg_ros.config import (load_model_info, MODE_NAME, MODEL_INFO_DEFAULTS,
                                    MODEL_INFO_FILE, size_key, write_model_info)
    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.dataset import load_dataset

    records = list(load_dataset(dataset_dir))
    records = records[:limit] if limit > 0 else records
    mode = overrides.pop('mode', None) or None
    start = None  # the mode whose settings the maps are made with: a new one starts from the top
    if mode is not None:
        known = load_model_info(model_dir)
        if not re.fullmatch(MODE_NAME, mode):
            raise ValueError('mode name %r must be lower-case letters, digits, - or _' % mode)
        if model_size not in (None, known['model_size']):
            raise ValueError('a mode is calibrated at the model size %s, not %s'
                             % (known['model_size'], model_size))
        start = mode if mode in (known.get('modes') or {}) else None
    segmenter = Segmenter.from_model(model_dir, backend=backend, device=device,
                                     model_size=model_size, max_detections=max_detections,
                                     mode=start, **overrides)
    if fuse_gates and not segmenter.config.fuse_sizes:
        segmenter.close()
        raise ValueError('fuse_gates %s need fused sizes (fuse_sizes, or a mode that has them)'
                         % list(fuse_gates))
    truths = []  # read with each image's first pass
    gated = []
    for gate in sorted(fuse_gates) or [segmenter.config.fuse_gate]:
        segmenter.set_fuse_gate(gate)
        probabilities, tiles = [], []
        for index, record in enumerate(records):
            image = record.read_image()
            probability, count = segmenter.probability_and_tiles(image)
            probabilities.append(probability)
            tiles.append(count)
            if index == len(truths):
                mask = record.read_mask() if record.positive else None
                truths.append(mask if mask is not None else np.zeros(image.shape[:2], bool))
        result = _best_post_processing(probabilities, truths, thresholds, min_areas,
                                       segmenter.config, seed_thresholds)
        result.update({'fuse_gate': float(gate), 'tiles_per_image': float(np.mean(tiles))})
        if fuse_gates:  # the outcomes only choose between gates
            result['correct'] = _outcomes(probabilities, truths, result,
                                          segmenter.config.max_detections)
        gated.append(result)
    if fuse_gates:
        for result in gated:
            result['changed'] = int(np.count_nonzero(
                np.not_equal(result['correct'], gated[0]['correct'])))
        result = gated[choose_fuse_gate([r['correct'] for r in gated], fuse_gate_tolerance)]
        segmenter.set_fuse_gate(result['fuse_gate'])
        result['fuse_gate_sweep'] = [
            {'fuse_gate': r['fuse_gate'], 'tiles_per_image': r['tiles_per_image'],
             'changed': r['changed'],
             'threshold': r['best_threshold'], 'seed_threshold': r['best_seed_threshold'],
             'min_area_px': r['min_area_px'], 'accuracy': r['best']['accuracy'],
             'mean_iou': r['best']['mean_iou']} for r in gated]
    result.update({'model_size': segmenter.config.model_size, 'dataset': str(dataset_dir),
                   'images': len(records), 'previous_threshold': segmenter.config.threshold,
                   'max_detections': segmenter.config.max_detections,
                   'flips': segmenter.config.flips,
                   'tile_overlap': segmenter.config.tile_overlap,
                   'input_color': segmenter.config.input_color,
                   'fuse_sizes': list(segmenter.config.fuse_sizes),
                   'fuse_max_tiles': segmenter.config.fuse_max_tiles})
    segmenter.close()
    if plot is not None:
        result['plot'] = str(plot_sweep(result, Path(plot)))
    if write:
        path = Path(model_dir) / MODEL_INFO_FILE
        info = json.loads(path.read_text()) if path.is_file() else {}
        chosen = {
            'threshold': result['best_threshold'],
            'seed_threshold': result['best_seed_threshold'],
            'max_detections': result['max_detections'],
            'min_area_px': result['min_area_px'],
            'flips': result['flips'],  # the maps were averaged over these views
            'tile_overlap': result['tile_overlap'],  # ... stitched from tiles this far apart
            'input_color': result['input_color'],  # ... from frames that entered the model so
            'fuse_sizes': result['fuse_sizes'],  # ... and over these model sizes
            'fuse_gate': result['fuse_gate'],  # ... their tiles run where this gate let them
            'fuse_max_tiles': result['fuse_max_tiles'],  # ... and no more of them than this
            'calibration': {
                'dataset': str(dataset_dir), 'images': len(records),
                'model_size': result['model_size'], 'max_detections': result['max_detections'],
                'min_area_px': result['min_area_px'], 'flips': result['flips'],
                'tile_overlap': result['tile_overlap'],
                'input_color': result['input_color'],
                'fuse_sizes': result['fuse_sizes'], 'fuse_gate': result['fuse_gate'],
                'fuse_max_tiles': result['fuse_max_tiles'],
                'seed_threshold': result['best_seed_threshold'],
                'accuracy': result['best']['accuracy'],
                'mean_iou': result['best']['mean_iou'],
                'thresholds': [thresholds[0], thresholds[-1], len(thresholds)],
                'seed_thresholds': list(seed_thresholds)}}
        own_size = info.get('model_size', MODEL_INFO_DEFAULTS['model_size'])
        own_fusion = list(info.get('fuse_sizes') or ())
        if mode is not None:  # a named mode keeps its own settings beside the default
            info['modes'] = dict(info.get('modes') or {}, **{mode: chosen})
            result['written'] = 'modes[%s]' % mode
        elif result['model_size'] == own_size and result['fuse_sizes'] in ([], own_fusion):
            info.update(chosen)
            result['written'] = 'top level'
        else:  # another mode's frames keep their own post-processing (config.info_for_size)
            key = size_key(result['model_size'], result['fuse_sizes'])
            info['by_model_size'] = dict(info.get('by_model_size') or {}, **{key: chosen})
            result['written'] = 'by_model_size[%s]' % key
        write_model_info(model_dir, info)
        load_model_info(model_dir)  # fails loudly if what we wrote does not parse
    return result


def plot_sweep(result: Dict[str, Any], path: Path) -> Path:
    """Plot accuracy, mean IoU, precision and recall against the threshold (PNG, atomic).

    Only the rows of the chosen seed threshold are drawn (one curve per metric).
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    seed = result.get('best_seed_threshold')
    table = [r for r in result['table'] if r.get('seed_threshold') == seed]
    thresholds = [r['threshold'] for r in table]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for key in ('accuracy', 'mean_iou', 'precision', 'recall'):
        axis.plot(thresholds, [r[key] for r in table], label=key)
    axis.axvline(result['best_threshold'], color='k', linestyle='--',
                 label='chosen %.3f' % result['best_threshold'])
    axis.set_xlabel('threshold')
    axis.set_ylim(0, 1.02)
    axis.set_title('validation sweep at model size %s%s' % (
        result.get('model_size', '?'), '' if seed is None else ', seed threshold %g' % seed))
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / ('.' + path.name + '.tmp.png')
    figure.savefig(str(tmp), dpi=90)
    plt.close(figure)
    os.replace(tmp, path)
    return path
