"""Masks from bbox labels: SAM automatic mask generation, SAM box prompt, or GrabCut.

- auto: the report's method. A point grid over the whole image prompts SamModel (three masks
  per point); masks are kept when SAM's predicted IoU and the stability score pass their
  thresholds, duplicates are removed with box NMS (cv2.dnn.NMSBoxes), and among the masks
  that lie inside the labelled bbox the one whose tight box best matches it is taken, if that
  match reaches `min_box_iou`. Many images get no mask (the report kept 37 %).
- box: the bbox is SAM's box prompt (single-mask output); the mask is clipped to the box.
- grabcut: OpenCV GrabCut initialised with the bbox; no model.

With several models, every model labels every image; each image takes the candidate whose
tight box best matches the label (per-model yields are reported side by side).

True masks of the input dataset (when present) are read only to score the result:
mean_iou_vs_truth averages IoU over every image with a satellite and a true mask, an image
left without a mask counting 0.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Callable, List, Optional, Sequence

import cv2
import numpy as np

from sat_seg_ros.backends import PIXEL_MEAN, PIXEL_STD
from sat_seg_ros.config import resolve_model_dir
from sat_seg_ros.metrics import iou
from sat_seg_ros.tiling import resize, to_float_rgb
from sat_seg_training import dataset as ds

METHODS = ('auto', 'box', 'grabcut')
GRABCUT_MIN_SIDE = 160
GRABCUT_MAX_CROP = 480


@dataclasses.dataclass
class AutoParams:
    """Automatic mask generation settings (SAM's defaults, points per side aside)."""

    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_thresh: float = 0.95
    stability_offset: float = 1.0
    nms_iou: float = 0.7
    min_box_iou: float = 0.5          # tight box of the chosen mask vs the label
    inside_fraction: float = 0.9      # share of mask pixels inside the (padded) label box


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Return the IoU of two (x, y, w, h) boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _box_pixels(bbox, height, width, pad=0.0):
    """Integer (x0, y0, x1, y1) of a float (x, y, w, h) box, padded by pad * size, clipped."""
    x, y, w, h = bbox
    x0 = int(max(0, np.floor(x - pad * w)))
    y0 = int(max(0, np.floor(y - pad * h)))
    x1 = int(min(width, np.ceil(x + w + pad * w)))
    y1 = int(min(height, np.ceil(y + h + pad * h)))
    return x0, y0, x1, y1


def grabcut_mask(image: np.ndarray, bbox, iterations: int = 5) -> np.ndarray:
    """Return the GrabCut foreground inside `bbox` (x, y, w, h) as HxW bool.

    GrabCut runs on a crop around the box padded by half its size, enlarged so the box's
    shorter side reaches GRABCUT_MIN_SIDE px (crop at most GRABCUT_MAX_CROP px): on small
    objects its colour models and smoothness term work far better enlarged (measured on
    synthetic data: yield 0.58 -> 0.88, mean IoU 0.38 -> 0.62). Deterministic (seeded).
    """
    height, width = image.shape[:2]
    rgb = np.clip(to_float_rgb(image), 0, 255).astype(np.uint8)
    cx0, cy0, cx1, cy1 = _box_pixels(bbox, height, width, pad=0.5)
    crop = np.ascontiguousarray(rgb[cy0:cy1, cx0:cx1])
    full = np.zeros((height, width), bool)
    if crop.shape[0] < 2 or crop.shape[1] < 2:
        return full
    x0, y0, x1, y1 = _box_pixels(bbox, height, width)
    factor = min(max(1.0, GRABCUT_MIN_SIDE / max(1, min(x1 - x0, y1 - y0))),
                 max(1.0, GRABCUT_MAX_CROP / max(crop.shape[:2])))
    if factor > 1:
        crop = cv2.resize(crop, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    rect = (int((x0 - cx0) * factor), int((y0 - cy0) * factor),
            max(1, int((x1 - x0) * factor)), max(1, int((y1 - y0) * factor)))
    labels = np.zeros(crop.shape[:2], np.uint8)
    background = np.zeros((1, 65), np.float64)
    foreground = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)            # GrabCut's k-means start uses OpenCV's global RNG
    try:
        cv2.grabCut(crop, labels, rect, background, foreground, iterations,
                    cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        return full        # degenerate colour model (e.g. a flat crop): no mask
    mask = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
    if factor > 1:
        mask = cv2.resize(mask, (cx1 - cx0, cy1 - cy0), interpolation=cv2.INTER_AREA)
    full[cy0:cy1, cx0:cx1] = mask > 0
    return full


class SamLabeler:
    """One SAM model folder, used to derive masks for whole images (not tiles).

    The image is resized so its longer side is the model's input size and padded, as
    SamProcessor does; low-res masks are mapped back to the image size bilinearly.
    """

    def __init__(self, model_dir, device: str = 'cpu'):
        """Load the SamModel (torch and transformers are imported here)."""
        import torch
        from transformers.utils import logging as hf_logging

        from sat_seg_ros.modeling import load_sam_model

        hf_logging.disable_progress_bar()
        self.torch = torch
        self.model_dir = str(model_dir)
        self.device = torch.device(device)
        # A Hugging Face SamModel or a compact CNN-encoder SAM: the same prompt interface.
        self.model = load_sam_model(model_dir).to(self.device)
        self.input_size = int(self.model.config.vision_config.image_size)

    def _embed(self, image: np.ndarray):
        height, width = image.shape[:2]
        scale = self.input_size / max(height, width)
        new_h, new_w = int(round(height * scale)), int(round(width * scale))
        pixels = (resize(to_float_rgb(image), new_h, new_w) - PIXEL_MEAN) / PIXEL_STD
        padded = np.zeros((self.input_size, self.input_size, 3), np.float32)
        padded[:new_h, :new_w] = pixels
        tensor = self.torch.from_numpy(padded.transpose(2, 0, 1)[None]).to(self.device)
        with self.torch.inference_mode():
            if hasattr(self.model, 'get_image_features'):  # a compact SAM: maybe mask features
                features = self.model.get_image_features(tensor)
            else:
                features = {'image_embeddings': self.model.get_image_embeddings(tensor)}
        return features, scale, (new_h, new_w)

    def _to_image(self, logits: np.ndarray, valid, height, width) -> np.ndarray:
        """Low-res logits (K, m, m) -> (K, height, width) float32 logits."""
        size = self.input_size
        out = np.empty((len(logits), height, width), np.float32)
        for k, low in enumerate(logits):
            up = cv2.resize(low, (size, size), interpolation=cv2.INTER_LINEAR)
            out[k] = cv2.resize(up[:valid[0], :valid[1]], (width, height),
                                interpolation=cv2.INTER_LINEAR)
        return out

    def box_mask(self, image: np.ndarray, bbox) -> np.ndarray:
        """Return SAM's single mask for the box prompt `bbox` (x, y, w, h), clipped to the box."""
        height, width = image.shape[:2]
        features, scale, valid = self._embed(image)
        x, y, w, h = bbox
        box = self.torch.tensor([[[x * scale, y * scale, (x + w) * scale, (y + h) * scale]]],
                                dtype=self.torch.float32, device=self.device)
        with self.torch.inference_mode():
            out = self.model(**features, input_boxes=box,
                             multimask_output=False)
        logits = out.pred_masks[0, 0].float().cpu().numpy()
        mask = self._to_image(logits, valid, height, width)[0] > 0
        x0, y0, x1, y1 = _box_pixels(bbox, height, width)
        clipped = np.zeros_like(mask)
        clipped[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
        return clipped

    def auto_masks(self, image: np.ndarray, params: AutoParams) -> List[np.ndarray]:
        """Return SAM automatic masks of the whole image (filtered, NMS-ed, bool HxW)."""
        height, width = image.shape[:2]
        features, scale, valid = self._embed(image)
        n = params.points_per_side
        centres_x = (np.arange(n) + 0.5) / n * width * scale
        centres_y = (np.arange(n) + 0.5) / n * height * scale
        xs, ys = np.meshgrid(centres_x, centres_y)
        points = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32)
        kept_logits, kept_scores = [], []
        for start in range(0, len(points), params.points_per_batch):
            batch = self.torch.from_numpy(points[start:start + params.points_per_batch])
            batch = batch[None, :, None, :].to(self.device)
            labels = self.torch.ones(batch.shape[:3], dtype=self.torch.long, device=self.device)
            with self.torch.inference_mode():
                out = self.model(**features, input_points=batch,
                                 input_labels=labels, multimask_output=True)
            logits = out.pred_masks[0].flatten(0, 1).float().cpu().numpy()   # (P*3, m, m)
            scores = out.iou_scores[0].flatten().float().cpu().numpy()
            stable = stability_score(logits, params.stability_offset)
            keep = (scores >= params.pred_iou_thresh) & (stable >= params.stability_thresh)
            kept_logits.extend(logits[keep])
            kept_scores.extend(scores[keep])
        if not kept_logits:
            return []
        # NMS on boxes measured on the low-res masks (scaled to the image), so that only the
        # survivors are upsampled to full size.
        logits = np.stack(kept_logits)
        low = logits.shape[-1]
        low_h = max(1, int(round(valid[0] * low / self.input_size)))
        low_w = max(1, int(round(valid[1] * low / self.input_size)))
        sx, sy = width / low_w, height / low_h
        boxes, scores, index = [], [], []
        for k, mask in enumerate(logits[:, :low_h, :low_w] > 0):
            box = ds.mask_bbox(mask)
            if box is not None:
                boxes.append([box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy])
                scores.append(float(kept_scores[k]))
                index.append(k)
        if not boxes:
            return []
        # NMSBoxes needs a threshold >= 0 and keeps scores above it: shift (order unchanged).
        shifted = [score - min(scores) + 1.0 for score in scores]
        keep = cv2.dnn.NMSBoxes(boxes, shifted, 0.0, params.nms_iou)
        keep = np.asarray(keep).reshape(-1)
        masks = self._to_image(logits[[index[int(k)] for k in keep]], valid, height, width) > 0
        return [mask for mask in masks if mask.any()]


def stability_score(logits: np.ndarray, offset: float, threshold: float = 0.0) -> np.ndarray:
    """Return SAM's stability score per mask: IoU of the masks at threshold +- offset."""
    flat = logits.reshape(len(logits), -1)
    intersection = (flat > threshold + offset).sum(1)
    union = (flat > threshold - offset).sum(1)
    return np.where(union > 0, intersection / np.maximum(union, 1), 0.0)


def pick_mask(candidates: Sequence[np.ndarray], bbox, params: AutoParams):
    """Return (mask, box IoU) of the candidate inside `bbox` best matching it, or (None, 0)."""
    best, best_score = None, 0.0
    if not candidates:
        return best, best_score
    height, width = candidates[0].shape
    x0, y0, x1, y1 = _box_pixels(bbox, height, width, pad=0.1)
    for mask in candidates:
        total = np.count_nonzero(mask)
        if total == 0 or np.count_nonzero(mask[y0:y1, x0:x1]) < params.inside_fraction * total:
            continue
        score = box_iou(ds.mask_bbox(mask), bbox)
        if score > best_score:
            best, best_score = mask, score
    if best_score < params.min_box_iou:
        return None, best_score
    return best, best_score


def _model_mask(method, labeler, image, bbox, params):
    """Return (mask or None, reason) from one model (or GrabCut) for one labelled image."""
    if method == 'grabcut':
        mask = grabcut_mask(image, bbox)
    elif method == 'box':
        mask = labeler.box_mask(image, bbox)
    else:
        mask, _ = pick_mask(labeler.auto_masks(image, params), bbox, params)
        if mask is None:
            return None, ('no automatic mask inside the bbox matched it (box IoU < '
                          f'{params.min_box_iou})')
    if not mask.any():
        return None, 'the mask inside the bbox is empty'
    return mask, ''


def label_dataset(dataset: ds.Dataset, out, method: str, models: Sequence = (),
                  device: str = 'cpu', params: Optional[AutoParams] = None,
                  progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Derive masks for every positive of `dataset`; write OUT and OUT/label_report.json.

    OUT holds the images without a satellite and the positives that got a mask; positives
    left without one are listed in the report's `unlabelled` with the reason. `models` are
    SamModel folders; none means the bundled default model (auto and box).
    """
    if method not in METHODS:
        raise ValueError(f'method {method!r} is not one of {", ".join(METHODS)}')
    params = params or AutoParams()
    start = time.perf_counter()
    if method == 'grabcut':
        labelers, names = [None], ['grabcut']
    else:
        paths = [resolve_model_dir(m) for m in models or [None]]
        labelers = [SamLabeler(path, device) for path in paths]
        names = [str(path) for path in paths]
    per_model = [{'labelled': 0, 'iou_sum': 0.0, 'seconds': 0.0} for _ in names]
    truth_images, iou_sum, labelled, unlabelled = 0, 0.0, 0, []
    with ds.DatasetWriter(out, info={'labelled_from': str(dataset.root), 'method': method,
                                     'models': names}) as writer:
        for index, record in enumerate(dataset):
            best, best_score, reason = None, -1.0, ''
            if record.positive:
                image = record.read_image()
                truth = record.read_mask()
                truth_images += truth is not None
                for labeler, stats in zip(labelers, per_model):
                    tick = time.perf_counter()
                    mask, reason = _model_mask(method, labeler, image, record.bbox_xywh, params)
                    stats['seconds'] += time.perf_counter() - tick
                    if mask is None:
                        continue
                    stats['labelled'] += 1
                    stats['iou_sum'] += iou(mask, truth) if truth is not None else 0.0
                    score = box_iou(ds.mask_bbox(mask), record.bbox_xywh)
                    if score > best_score:
                        best, best_score = mask, score
                if best is None:
                    unlabelled.append({'file': record.file_name, 'reason': reason})
                else:
                    labelled += 1
                    iou_sum += iou(best, truth) if truth is not None else 0.0
            if best is not None or not record.positive:
                writer.add(record.file_name, None, record.bbox_xywh, best,
                           source_path=record.image_path, width=record.width,
                           height=record.height)
            if progress:
                progress(index + 1, len(dataset))
    positives = sum(r.positive for r in dataset)

    def ratio(value, total):
        return round(value / total, 4) if total else None

    report = {
        'method': method,
        'images': len(dataset),
        'positives': positives,
        'negatives': len(dataset) - positives,
        'labelled': labelled,
        'yield': ratio(labelled, positives),
        'mean_iou_vs_truth': ratio(iou_sum, truth_images),
        'truth_images': truth_images,
        'models': [{'model': name, 'labelled': stats['labelled'],
                    'yield': ratio(stats['labelled'], positives),
                    'mean_iou_vs_truth': ratio(stats['iou_sum'], truth_images),
                    'seconds_per_image': ratio(stats['seconds'], positives)}
                   for name, stats in zip(names, per_model)],
        'seconds': round(time.perf_counter() - start, 2),
        'unlabelled': unlabelled,
    }
    if method == 'auto':
        report['auto_params'] = dataclasses.asdict(params)
    ds.write_json(pathlib.Path(out) / 'label_report.json', report)
    return report


def yield_table(report: dict) -> str:
    """Return the per-model yield table of a label report as aligned text."""
    def fmt(value):
        return '      -' if value is None else f'{value:7.3f}'

    rows = [(row['model'][-40:], row['labelled'], row['yield'], row['mean_iou_vs_truth'],
             row['seconds_per_image']) for row in report['models']]
    rows.append(('selected (best box match)', report['labelled'], report['yield'],
                 report['mean_iou_vs_truth'], None))
    lines = [f'{"model":<40} {"labelled":>8} {"yield":>7} {"mIoU":>7} {"s/img":>7}']
    lines += [f'{name:<40} {count:>8} {fmt(share)} {fmt(score)} {fmt(seconds)}'
              for name, count, share, score, seconds in rows]
    return '\n'.join(lines)
