"""The report's Table 1 for a model on a dataset, computed with the runtime's Segmenter.

Per model size: accuracy (IoU > 0.5; an empty prediction on an image without a satellite is
correct), mean IoU over images with a satellite, image-level detection precision / recall,
mean seconds per image (the Segmenter's total, frame in -> mask out) and the machine; then the
accuracy broken down by satellite size, by the satellite's visibility (how far its luminance
stands out of its surroundings) and, for `sat-seg synth` scenes, by background (photograph or
procedural), which says where a model fails. The report lists the images
scored (``images``) and each size's failures, which ``sat-seg compare`` pairs between two models.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
import platform
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from sat_seg_ros import metrics
from sat_seg_training.backgrounds import PHOTO_TERRAIN
from sat_seg_training.calibrate import seed_label
from sat_seg_training.dataset import mask_bbox


@dataclasses.dataclass
class ImageOutcome:
    """One image's result at one model size (kept for the failure gallery)."""

    file_name: str
    iou: float
    correct: bool
    positive: bool
    detected: bool
    size_px: Optional[int] = None  # the longer side of the true mask's box, frame pixels
    background: Optional[str] = None  # 'photograph' / 'procedural' for synth scenes
    visibility: Optional[float] = None  # satellite_visibility of the frame the model saw


SIZE_EDGES_PX = (20, 40, 80, 160)  # satellite-size strata of the breakdown
VISIBILITY_EDGES = (1, 2, 3)  # visibility strata of the breakdown (ring standard deviations)
VISIBILITY_NOISE = 2.0  # gray levels added to the ring's spread: a flat ring is not infinite


def satellite_size_px(truth: np.ndarray) -> Optional[int]:
    """Return the longer side of the box around the true mask's pixels (None: no satellite)."""
    box = mask_bbox(truth)
    return None if box is None else max(box[2], box[3])


def satellite_visibility(image: np.ndarray, truth: np.ndarray) -> Optional[float]:
    """Return how far the satellite stands out of its surroundings in luminance (None: none).

    |mean luminance on the true mask - mean luminance of a ring around it| divided by the
    ring's standard deviation plus VISIBILITY_NOISE gray levels (Rec. 601 luminance, 0-255;
    any supported frame). The ring runs from 2 px outside the mask to a third of the
    satellite's size (at least 4 px), within the frame. Colour does not count: a satellite
    that differs from the ground only in hue has a visibility near 0, which is what a gray
    camera sees of it.
    """
    import cv2

    from sat_seg_ros.tiling import to_float_rgb, to_luma

    box = mask_bbox(truth)
    if box is None:
        return None
    x, y, width, height = box
    radius = max(4, max(width, height) // 3)
    # Only the window the ring can reach: a large satellite's dilation stays cheap.
    rows = slice(max(0, y - radius - 1), y + height + radius + 1)
    columns = slice(max(0, x - radius - 1), x + width + radius + 1)
    luma = to_luma(to_float_rgb(image[rows, columns]))
    truth = truth[rows, columns]
    mask = truth.astype(np.uint8)
    inner = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))) > 0
    outer = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                       (2 * radius + 1, 2 * radius + 1))) > 0
    ring = luma[outer & ~inner]
    if ring.size == 0:  # the satellite fills the frame
        return None
    return float(abs(luma[truth].mean() - ring.mean()) / (ring.std() + VISIBILITY_NOISE))


def visibility_stratum(visibility: Optional[float], positive: bool = True) -> str:
    """Return the breakdown's label for ``visibility`` (``positive`` False: no satellite)."""
    if not positive:
        return 'no satellite'
    if visibility is None:
        return 'not measured'
    return _interval(visibility, VISIBILITY_EDGES, 'sd')


def background_kind(extra: Dict[str, Any]) -> Optional[str]:
    """Return 'photograph' or 'procedural' for a `sat-seg synth` scene (its first terrain)."""
    synth = extra.get('synth')
    terrain = synth.get('terrain') if isinstance(synth, dict) else None
    if not terrain or not isinstance(terrain, list):
        return None
    return 'photograph' if terrain[0] == PHOTO_TERRAIN else 'procedural'


def size_stratum(size_px: Optional[int]) -> str:
    """Return the breakdown's label for a satellite of ``size_px`` (None: no satellite)."""
    if size_px is None:
        return 'no satellite'
    return _interval(size_px, SIZE_EDGES_PX, 'px')


def _interval(value: float, edges: Sequence[int], unit: str) -> str:
    """Return the label of the interval between ``edges`` (from 0 up) that holds ``value``."""
    low = 0
    for edge in edges:
        if value < edge:
            return '%d-%d %s' % (low, edge, unit) if low else '< %d %s' % (edge, unit)
        low = edge
    return '>= %d %s' % (low, unit)


def breakdown(outcomes: Sequence[ImageOutcome]) -> List[Dict[str, Any]]:
    """Return accuracy (and mean IoU of those with a satellite) per stratum of each grouping.

    Groupings: satellite size and visibility (every dataset with masks); background, then
    background x satellite present, where the dataset records how each scene was made.
    Strata with no image are left out; the images of a grouping add up to all images.
    """
    groups = [('satellite size', lambda o: size_stratum(o.size_px)),
              ('visibility', lambda o: visibility_stratum(o.visibility, o.positive))]
    if any(o.background for o in outcomes):
        groups += [('background', lambda o: o.background or 'not recorded'),
                   ('background, satellite', lambda o: '%s, %s' % (
                       o.background or 'not recorded', 'yes' if o.positive else 'no'))]
    order = [size_stratum(None)] + [size_stratum(edge - 1) for edge in SIZE_EDGES_PX] + [
        size_stratum(SIZE_EDGES_PX[-1])]
    order += [visibility_stratum(edge - 0.5) for edge in VISIBILITY_EDGES] + [
        visibility_stratum(VISIBILITY_EDGES[-1])]
    table = []
    for group, key in groups:
        strata: Dict[str, List[ImageOutcome]] = {}
        for outcome in outcomes:
            strata.setdefault(key(outcome), []).append(outcome)
        names = sorted(strata, key=lambda name: (order.index(name) if name in order else
                                                 len(order), name))
        for name in names:
            found = strata[name]
            ious = [o.iou for o in found if o.positive]
            table.append({'group': group, 'stratum': name, 'images': len(found),
                          'accuracy': float(np.mean([o.correct for o in found])),
                          'mean_iou': float(np.mean(ious)) if ious else None})
    return table


def cpuinfo_value(key: str) -> Optional[str]:
    """Return the first ``key`` entry of /proc/cpuinfo (e.g. 'model name', 'flags').

    '' where the file has no such entry, None where it cannot be read (not Linux).
    """
    try:
        with open('/proc/cpuinfo') as stream:
            for line in stream:
                name, _, value = line.partition(':')
                if name.strip() == key:
                    return value.strip()
    except OSError:
        return None
    return ''


def machine_description() -> str:
    """CPU model (or GPU name) and core count of this machine."""
    cpu = cpuinfo_value('model name') or platform.processor() or platform.machine()
    return '%s, %d cores' % (cpu, os.cpu_count() or 0)


def evaluate(dataset_dir: os.PathLike | str, model_dir: Optional[str] = None,
             sizes: Sequence[int] = (512,), backend: str = 'torch', device: str = 'cpu',
             limit: int = 0, gallery: Optional[os.PathLike | str] = None,
             cast: Optional[str] = None, **overrides) -> Dict[str, Any]:
    """Return Table 1 rows (one per size) for ``model_dir`` (None: bundled) on ``dataset_dir``.

    ``limit`` > 0 evaluates the first ``limit`` images only. ``gallery`` writes a PNG of the
    worst failures at the first size. ``cast`` (one of ``sat_seg_training.casts.CASTS``) puts
    every frame under that colour cast before the Segmenter sees it. ``overrides`` are
    Segmenter settings (threshold, max_detections, min_area_px, ...; None: the model's).
    """
    from tqdm import tqdm

    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.casts import apply_cast, cast_seed, CASTS
    from sat_seg_training.dataset import load_dataset

    if cast is not None and cast not in CASTS:
        raise ValueError('unknown cast %r; choose one of %s' % (cast, ', '.join(CASTS)))
    dataset = load_dataset(dataset_dir)
    records = list(dataset)[:limit] if limit > 0 else list(dataset)
    if not records:
        raise ValueError('dataset %s has no images' % dataset_dir)
    if any(r.missing_mask for r in records):
        raise ValueError('dataset %s has satellites without masks; the IoU metric needs masks '
                         '(run sat-seg label first)' % dataset_dir)
    rows: List[Dict[str, Any]] = []
    outcomes: Dict[int, List[ImageOutcome]] = {}
    predictions: Dict[str, np.ndarray] = {}
    visibility: Dict[str, Optional[float]] = {}
    for size in sizes:
        segmenter = Segmenter.from_model(model_dir, backend=backend, device=device,
                                         **dict(overrides, model_size=int(size)))
        pairs, seconds, results, tiles = [], [], [], []
        for record in tqdm(records, desc='evaluate %d' % size, unit='img', leave=False):
            image = record.read_image()
            if cast is not None:
                image = apply_cast(image, cast, cast_seed(record.file_name))
            truth = record.read_mask() if record.positive else np.zeros(image.shape[:2], bool)
            start = time.perf_counter()
            result = segmenter.segment(image)
            seconds.append(time.perf_counter() - start)
            tiles.append(result.tiles)
            pairs.append((result.mask, truth))
            value = metrics.iou(result.mask, truth)
            if record.file_name not in visibility:  # the same frame at every size
                visibility[record.file_name] = satellite_visibility(image, truth)
            results.append(ImageOutcome(record.file_name, value, value > metrics.IOU_CORRECT,
                                        bool(truth.any()), result.detected,
                                        satellite_size_px(truth), background_kind(record.extra),
                                        visibility[record.file_name]))
            if size == sizes[0] and gallery is not None and value <= metrics.IOU_CORRECT:
                predictions[record.file_name] = result.mask
        summary = metrics.summarize(pairs)
        summary.update({'model_size': int(size), 'seconds_per_image': float(np.mean(seconds)),
                        'tiles_per_image': float(np.mean(tiles)),
                        'tiles_max': int(np.max(tiles)),
                        'breakdown': breakdown(results),
                        'threshold': segmenter.config.threshold,
                        'seed_threshold': segmenter.config.seed_threshold,
                        'min_area_px': segmenter.config.min_area_px,
                        'prompt_mode': segmenter.config.prompt_mode,
                        'max_detections': segmenter.config.max_detections,
                        'flips': segmenter.config.flips,
                        'tile_overlap': segmenter.config.tile_overlap,
                        'input_color': segmenter.config.input_color,
                        'mode': overrides.get('mode') or None, 'cast': cast,
                        'fuse_sizes': list(segmenter.config.fuse_sizes),
                        'fuse_gate': segmenter.config.fuse_gate,
                        'fuse_max_tiles': segmenter.config.fuse_max_tiles,
                        'backend': backend, 'device': device})
        rows.append(summary)
        outcomes[int(size)] = results
        segmenter.close()
    report = {'dataset': str(dataset_dir), 'model': str(model_dir or 'bundled default'),
              'machine': machine_description(), 'rows': rows,
              'images': [record.file_name for record in records],
              'failures': {size: [dataclasses.asdict(o) for o in found if not o.correct]
                           for size, found in outcomes.items()}}
    if gallery is not None:
        report['gallery'] = str(failure_gallery(records, outcomes[int(sizes[0])], predictions,
                                                Path(gallery), cast=cast))
    return report


def failure_gallery(records, outcomes: Sequence[ImageOutcome], predictions: Dict[str, Any],
                    path: Path, count: int = 12, columns: int = 4,
                    cast: Optional[str] = None) -> Path:
    """Write a PNG of up to ``count`` failed images: truth outlined green, prediction red.

    ``cast``: show the frames under the colour cast the model saw them in.
    """
    import cv2

    from sat_seg_ros.config import atomic_write_bytes
    from sat_seg_ros.tiling import to_float_rgb
    from sat_seg_training.casts import apply_cast, cast_seed

    by_name = {r.file_name: r for r in records}
    failed = sorted((o for o in outcomes if not o.correct), key=lambda o: o.iou)[:count]
    width = 320
    thumbs = []
    for outcome in failed:
        record = by_name[outcome.file_name]
        image = record.read_image()
        if cast is not None:
            image = apply_cast(image, cast, cast_seed(record.file_name))
        image = np.clip(to_float_rgb(image), 0, 255).astype(np.uint8)
        truth = record.read_mask() if record.positive else None
        for mask, color in ((truth, (0, 255, 0)), (predictions.get(outcome.file_name),
                                                   (255, 0, 0))):
            if mask is not None and mask.any():
                contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                               cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(image, contours, -1, color, 2)
        scale = width / image.shape[1]
        thumb = cv2.resize(image, (width, int(round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
        label = '%s IoU %.2f%s' % (outcome.file_name[-14:], outcome.iou,
                                   '' if outcome.positive else ' (no sat.)')
        cv2.putText(thumb, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1,
                    cv2.LINE_AA)
        thumbs.append(thumb)
    if not thumbs:
        sheet = np.full((60, width * 2, 3), 255, np.uint8)
        cv2.putText(sheet, 'no failures', (10, 38), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2)
    else:
        height = max(t.shape[0] for t in thumbs)
        rows = []
        for start in range(0, len(thumbs), columns):
            row = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in
                   thumbs[start:start + columns]]
            row += [np.zeros((height, width, 3), np.uint8)] * (columns - len(row))
            rows.append(np.concatenate(row, axis=1))
        sheet = np.concatenate(rows, axis=0)
    ok, encoded = cv2.imencode('.png', cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError('could not encode the failure gallery as PNG')
    atomic_write_bytes(path, encoded.tobytes())
    return path


def format_table(report: Dict[str, Any], strata: bool = False) -> str:
    """Return Table 1 as aligned text; ``strata``: each size's breakdown below it."""
    cast = report['rows'][0].get('cast')
    header = 'model: %s   dataset: %s' % (report['model'], report['dataset'])
    lines = [header + ('   cast: %s' % cast if cast else ''),
             'machine: %s' % report['machine'],
             '%6s %9s %9s %10s %8s %10s %7s %10s %6s %6s  %s' % (
                 'size', 'accuracy', 'mean IoU', 'precision', 'recall', 's/image', 'tiles',
                 'threshold', 'seed', 'flips', 'fused')]
    for row in report['rows']:
        seed = row.get('seed_threshold')
        limits = ['gate %g' % row['fuse_gate']] if row.get('fuse_gate') else []
        if row.get('fuse_max_tiles'):
            limits.append('at most %d' % row['fuse_max_tiles'])
        lines.append('%6d %9.3f %9.3f %10.3f %8.3f %10.3f %7s %10.3f %6s %6d  %s' % (
            row['model_size'], row['accuracy'], row['mean_iou'], row['precision'],
            row['recall'], row['seconds_per_image'],
            '-' if row.get('tiles_per_image') is None else '%.1f' % row['tiles_per_image'],
            row['threshold'], seed_label(seed), row.get('flips', 1),
            (','.join(str(size) for size in row.get('fuse_sizes', ())) or '-')
            + (' (%s)' % ', '.join(limits) if limits and row.get('fuse_sizes') else '')))
    first = report['rows'][0]
    lines.append('images: %d (%d with a satellite, %d without)'
                 % (first['images'], first['positives'], first['negatives']))
    for row in report['rows'] if strata else ():
        if row.get('breakdown'):
            lines.append('accuracy at %d by stratum:' % row['model_size'])
        for entry in row.get('breakdown', ()):
            iou = entry['mean_iou']
            lines.append('  %-22s %-26s %5d images  accuracy %.3f  mean IoU %s' % (
                entry['group'], entry['stratum'], entry['images'], entry['accuracy'],
                '-' if iou is None else '%.3f' % iou))
    return '\n'.join(lines)
