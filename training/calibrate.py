"""Choose the probability threshold on validation data and store it in the model's sat_seg.json.

Each image's probability map is computed once with the Segmenter; every candidate threshold is
then scored with the report's metric (same thresholding and component filtering as the runtime).
The best accuracy wins; ties go to the higher mean IoU, then to the threshold nearest 0.5.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from sat_seg_ros import metrics
from sat_seg_ros.postprocess import find_detections

DEFAULT_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.025), 3))


def sweep(probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray],
          thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
          min_area_px: int = 16, max_detections: int = 0) -> Dict[str, Any]:
    """Score every threshold; return {'best_threshold', 'best', 'table': [{threshold, ...}]}."""
    if len(probabilities) != len(truths) or not probabilities:
        raise ValueError('need as many probability maps as masks, and at least one (got %d, %d)'
                         % (len(probabilities), len(truths)))
    table = []
    for threshold in thresholds:
        pairs = ((find_detections(p, p > threshold, min_area_px, max_detections)[1], t)
                 for p, t in zip(probabilities, truths))
        row = metrics.summarize(pairs)
        row['threshold'] = float(threshold)
        table.append(row)
    best = max(table, key=lambda r: (r['accuracy'], np.nan_to_num(r['mean_iou'], nan=-1.0),
                                     -abs(r['threshold'] - 0.5)))
    return {'best_threshold': best['threshold'], 'best': best, 'table': table}


def calibrate(model_dir: os.PathLike | str, dataset_dir: os.PathLike | str,
              model_size: Optional[int] = None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
              limit: int = 0, write: bool = True,
              plot: Optional[os.PathLike | str] = None,
              max_detections: Optional[int] = None,
              min_areas: Sequence[int] = (), backend: str = 'torch', device: str = 'cpu',
              **overrides) -> Dict[str, Any]:
    """Sweep thresholds for ``model_dir`` on ``dataset_dir``; optionally write sat_seg.json.

    ``max_detections`` (None: the model's) is applied during the sweep and written with the
    threshold, so the stored pair is the one that was measured. ``min_areas`` also sweeps the
    smallest kept component (pixels); the best (accuracy, mean IoU) pair wins and both are
    written. Empty: the model's ``min_area_px`` only (or ``overrides['min_area_px']``).
    ``overrides`` are further Segmenter settings (tile_overlap, batch_size, prompt_mode; None:
    the model's).
    """
    from sat_seg_ros.config import load_model_info, MODEL_INFO_FILE, write_model_info
    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.dataset import load_dataset

    records = list(load_dataset(dataset_dir))
    records = records[:limit] if limit > 0 else records
    segmenter = Segmenter.from_model(model_dir, backend=backend, device=device,
                                     model_size=model_size, max_detections=max_detections,
                                     **overrides)
    probabilities, truths = [], []
    for record in records:
        image = record.read_image()
        probabilities.append(segmenter.probability(image))
        mask = record.read_mask() if record.positive else None
        truths.append(mask if mask is not None else np.zeros(image.shape[:2], bool))
    candidates = []
    for min_area in (list(min_areas) or [segmenter.config.min_area_px]):
        candidate = sweep(probabilities, truths, thresholds, int(min_area),
                          segmenter.config.max_detections)
        candidate['min_area_px'] = int(min_area)
        candidates.append(candidate)
    result = max(candidates, key=lambda c: (c['best']['accuracy'],
                                            np.nan_to_num(c['best']['mean_iou'], nan=-1.0)))
    result['min_area_sweep'] = [{'min_area_px': c['min_area_px'],
                                 'threshold': c['best_threshold'],
                                 'accuracy': c['best']['accuracy'],
                                 'mean_iou': c['best']['mean_iou']} for c in candidates]
    result.update({'model_size': segmenter.config.model_size, 'dataset': str(dataset_dir),
                   'images': len(records), 'previous_threshold': segmenter.config.threshold,
                   'max_detections': segmenter.config.max_detections})
    segmenter.close()
    if plot is not None:
        result['plot'] = str(plot_sweep(result, Path(plot)))
    if write:
        path = Path(model_dir) / MODEL_INFO_FILE
        info = json.loads(path.read_text()) if path.is_file() else {}
        info['threshold'] = result['best_threshold']
        info['max_detections'] = result['max_detections']
        info['min_area_px'] = result['min_area_px']
        info['calibration'] = {
            'dataset': str(dataset_dir), 'images': len(records),
            'model_size': result['model_size'], 'max_detections': result['max_detections'],
            'min_area_px': result['min_area_px'],
            'accuracy': result['best']['accuracy'],
            'mean_iou': result['best']['mean_iou'],
            'thresholds': [thresholds[0], thresholds[-1], len(thresholds)]}
        write_model_info(model_dir, info)
        load_model_info(model_dir)  # fails loudly if what we wrote does not parse
    return result


def plot_sweep(result: Dict[str, Any], path: Path) -> Path:
    """Plot accuracy, mean IoU, precision and recall against the threshold (PNG, atomic)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    table = result['table']
    thresholds = [r['threshold'] for r in table]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for key in ('accuracy', 'mean_iou', 'precision', 'recall'):
        axis.plot(thresholds, [r[key] for r in table], label=key)
    axis.axvline(result['best_threshold'], color='k', linestyle='--',
                 label='chosen %.3f' % result['best_threshold'])
    axis.set_xlabel('threshold')
    axis.set_ylim(0, 1.02)
    axis.set_title('validation sweep at model size %s' % result.get('model_size', '?'))
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / ('.' + path.name + '.tmp.png')
    figure.savefig(str(tmp), dpi=90)
    plt.close(figure)
    os.replace(tmp, path)
    return path
