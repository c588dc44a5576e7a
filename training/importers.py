"""Import bbox labels (COCO json, YOLO txt, CSV) into the dataset layout, with a report.

Every image of the source ends up either in the output dataset or in the report's `rejected`
list with its file and reason; nothing is dropped silently. Rules, the same for every format:

- the image must exist and decode (width and height are taken from the file);
- a bbox must have w > 0 and h > 0 and lie inside the image (boxes over the edge by at most
  EDGE_TOLERANCE_PX are clipped and counted in `clipped`; further out, the image is rejected);
- one satellite per image (the report's data): an image with several boxes is rejected;
- duplicate image ids / file names / annotation ids reject the images involved;
- an image without any box is imported as an image without a satellite.

Images are copied byte for byte (same format and name); COCO polygon segmentations become
mask PNGs.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
import pathlib
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from sat_seg_ros import imageio
from sat_seg_training import dataset as ds

EDGE_TOLERANCE_PX = 1.0
CSV_HEADERS = ('file', 'file_name', 'filename', 'image')


@dataclasses.dataclass
class Item:
    """One source image and its labels before validation."""

    file_name: str                      # name inside the output dataset
    source_path: pathlib.Path
    boxes: List[Sequence[float]]        # (x, y, w, h) pixels
    polygons: List[List[float]] = dataclasses.field(default_factory=list)
    normalized: bool = False            # boxes as fractions of the image size (YOLO)
    problems: List[str] = dataclasses.field(default_factory=list)   # found while parsing


@dataclasses.dataclass
class ImportReport:
    """What an import did: counts, rejected images with reasons, notes."""

    label_format: str
    source: str
    imported: int = 0
    positives: int = 0
    negatives: int = 0
    clipped: int = 0
    rejected: List[Dict[str, str]] = dataclasses.field(default_factory=list)
    notes: List[Dict[str, str]] = dataclasses.field(default_factory=list)

    def reject(self, file: str, reason: str) -> None:
        """Record an image (or label file) that was not imported, and why."""
        self.rejected.append({'file': file, 'reason': reason})

    def as_dict(self) -> dict:
        """Return the report as a JSON-ready dict."""
        return dataclasses.asdict(self)


def check_box(box: Sequence, width: int, height: int) -> Tuple[Optional[tuple], str]:
    """Validate an (x, y, w, h) box against the image size.

    Returns (clipped box, '') when usable, or (None, reason). The reason names the values.
    """
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        return None, f'bbox {box!r} is not four numbers x, y, w, h'
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, f'bbox {[x, y, w, h]} has a non-finite value'
    if w <= 0 or h <= 0:
        return None, f'bbox {[x, y, w, h]} has non-positive width or height'
    tol = EDGE_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return None, (f'bbox {[x, y, w, h]} lies outside the {width}x{height} image '
                      f'(x + w = {x + w:g}, y + h = {y + h:g})')
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    return (x0, y0, x1 - x0, y1 - y0), ''


def _image_size(path: pathlib.Path) -> Tuple[Optional[Tuple[int, int]], str]:
    if not path.is_file():
        return None, f'image file {path} is missing'
    try:
        image = imageio.read_image(path)
    except ValueError as error:
        return None, f'image unreadable: {error}'
    return image.shape[:2], ''


def write_items(items: Iterable[Item], out, report: ImportReport) -> ImportReport:
    """Validate `items` and write the accepted ones to the dataset folder `out`."""
    out = pathlib.Path(out)
    with ds.DatasetWriter(out, info={'imported_from': report.source,
                                     'format': report.label_format}) as writer:
        for item in items:
            if item.problems:
                report.reject(item.file_name, '; '.join(item.problems))
                continue
            size, reason = _image_size(item.source_path)
            if size is None:
                report.reject(item.file_name, reason)
                continue
            height, width = size
            if item.normalized:
                item.boxes = [(x * width, y * height, w * width, h * height)
                              for x, y, w, h in item.boxes]
            if len(item.boxes) > 1:
                report.reject(item.file_name, f'{len(item.boxes)} boxes: the dataset layout '
                                              'holds one satellite per image')
                continue
            box = None
            if item.boxes:
                box, reason = check_box(item.boxes[0], width, height)
                if box is None:
                    report.reject(item.file_name, reason)
                    continue
                if tuple(box) != tuple(float(v) for v in item.boxes[0]):
                    report.clipped += 1
            mask = None
            if item.polygons and box is not None:
                mask = np.zeros((height, width), np.uint8)
                polygons = [np.round(np.asarray(p, np.float64).reshape(-1, 2)).astype(np.int32)
                            for p in item.polygons if len(p) >= 6]
                cv2.fillPoly(mask, polygons, 1)
            writer.add(item.file_name, None, box, mask, source_path=item.source_path,
                       width=width, height=height)
            report.imported += 1
            report.positives += box is not None
            report.negatives += box is None
    ds.write_json(out / 'import_report.json', report.as_dict())
    return report


def coco_items(annotations_path, images_dir, report: ImportReport) -> List[Item]:
    """Parse a COCO json file; duplicate or dangling ids go to the report."""
    annotations_path = pathlib.Path(annotations_path)
    images_dir = pathlib.Path(images_dir)
    try:
        coco = json.loads(annotations_path.read_text())
        images = coco['images']
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f'{annotations_path}: not a COCO json with an "images" list '
                         f'({error}); export COCO detection format') from None
    id_counts = collections.Counter(image.get('id') for image in images)
    name_counts = collections.Counter(image.get('file_name') for image in images)
    items: Dict[object, Item] = {}
    ordered = []
    for image in images:
        name = str(image.get('file_name', ''))
        item = Item(name, images_dir / name, [])
        if not name:
            item.file_name = f'<image id {image.get("id")}>'
            item.problems.append('image entry without file_name')
        if id_counts[image.get('id')] > 1:
            item.problems.append(f'duplicate image id {image.get("id")} '
                                 f'({id_counts[image.get("id")]} images share it)')
        if name and name_counts[name] > 1:
            item.problems.append(f'file_name listed {name_counts[name]} times')
        items.setdefault(image.get('id'), item)
        ordered.append(item)
    ann_counts = collections.Counter(a.get('id') for a in coco.get('annotations', []))
    for ann in coco.get('annotations', []):
        item = items.get(ann.get('image_id'))
        if item is None:
            report.reject(f'annotation {ann.get("id")}',
                          f'refers to image id {ann.get("image_id")}, which is not in images')
            continue
        if ann.get('id') is not None and ann_counts[ann['id']] > 1:
            item.problems.append(f'duplicate annotation id {ann["id"]}')
        item.boxes.append(ann.get('bbox'))
        segmentation = ann.get('segmentation')
        if isinstance(segmentation, list):
            item.polygons.extend(p for p in segmentation if isinstance(p, list))
        elif segmentation:
            report.notes.append({'file': item.file_name,
                                 'note': 'RLE segmentation ignored (bbox kept)'})
    return ordered


def yolo_items(images_dir, labels_dir, report: ImportReport) -> List[Item]:
    """Pair images with YOLO label files (class cx cy w h, normalised to 0..1).

    An image without a label file, or with an empty one, has no satellite (YOLO's convention);
    a label file without an image is reported.
    """
    images_dir = pathlib.Path(images_dir)
    labels_dir = pathlib.Path(labels_dir)
    used_labels = set()
    items = []
    for path in imageio.expand_inputs([images_dir]):
        relative = path.relative_to(images_dir)
        label = labels_dir / relative.with_suffix('.txt')
        item = Item(relative.as_posix(), path, [])
        items.append(item)
        if not label.is_file():
            report.notes.append({'file': item.file_name,
                                 'note': 'no label file: imported without a satellite'})
            continue
        used_labels.add(label.resolve())
        item.normalized = True
        for number, line in enumerate(label.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            try:
                _, cx, cy, w, h = (float(v) for v in fields)
            except ValueError:
                item.problems.append(f'{label.name} line {number}: {line.strip()!r} is not '
                                     '"class cx cy w h"')
                continue
            if not all(-0.001 <= v <= 1.001 for v in (cx, cy, w, h)):
                item.problems.append(f'{label.name} line {number}: values {fields[1:]} are '
                                     'not normalised to 0..1')
                continue
            item.boxes.append((cx - w / 2, cy - h / 2, w, h))
    for label in sorted(labels_dir.rglob('*.txt')):
        if label.resolve() not in used_labels and label.name != 'classes.txt':
            report.reject(str(label.relative_to(labels_dir)), 'label file without an image')
    return items


def csv_items(csv_path, images_dir, report: ImportReport) -> List[Item]:
    """Parse `file,x,y,w,h` rows (a header line is optional; empty x,y,w,h = no satellite).

    Images in images_dir that the CSV does not list are reported, not imported.
    """
    csv_path = pathlib.Path(csv_path)
    images_dir = pathlib.Path(images_dir)
    items: Dict[str, Item] = {}
    with open(csv_path, newline='') as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if not row or not ''.join(row).strip():
                continue
            if number == 1 and row[0].strip().lower() in CSV_HEADERS:
                continue
            name = row[0].strip()
            item = items.setdefault(name, Item(name, images_dir / name, []))
            values = [v.strip() for v in row[1:]]
            if not any(values):
                continue
            if len(values) != 4:
                item.problems.append(f'{csv_path.name} line {number}: expected file,x,y,w,h, '
                                     f'got {len(row)} fields')
                continue
            item.boxes.append(values)
    listed = {item.source_path.resolve() for item in items.values()}
    for path in imageio.expand_inputs([images_dir]):
        if path.resolve() not in listed:
            report.reject(path.relative_to(images_dir).as_posix(),
                          f'image not listed in {csv_path.name}: not imported')
    return list(items.values())


def import_dataset(fmt: str, out, images_dir, labels) -> ImportReport:
    """Import `labels` (COCO json, YOLO labels folder or CSV file) of `images_dir` into `out`.

    Writes OUT/annotations.json, OUT/images, OUT/masks (COCO polygons) and
    OUT/import_report.json; returns the report.
    """
    for path, what in ((images_dir, 'images folder'), (labels, 'labels')):
        if not pathlib.Path(path).exists():
            raise FileNotFoundError(f'{what} {path} does not exist')
    report = ImportReport(label_format=fmt, source=str(labels))
    if fmt == 'coco':
        items = coco_items(labels, images_dir, report)
    elif fmt == 'yolo':
        items = yolo_items(images_dir, labels, report)
    else:
        items = csv_items(labels, images_dir, report)
    return write_items(items, out, report)
