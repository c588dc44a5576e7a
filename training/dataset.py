"""Shared reader and writer for the COCO-style dataset layout.

Layout (the contract in ARCHITECTURE.md)::

    DIR/annotations.json   images[id, file_name, width, height],
                           annotations[id, image_id, category_id, bbox [x, y, w, h], area],
                           categories [{"id": 1, "name": "satellite"}]
    DIR/images/<file_name> grayscale or colour image
    DIR/masks/<stem>.png   optional mask, non-zero = satellite

An image without an annotation has no satellite. Each image holds at most one satellite
(the report's data); `load_dataset` takes the union box when several annotations exist.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from sat_seg_ros import imageio
from sat_seg_ros.config import atomic_write_bytes, atomic_write_text

ANNOTATIONS = 'annotations.json'
IMAGES = 'images'
MASKS = 'masks'
CATEGORY = {'id': 1, 'name': 'satellite'}
IMAGE_KEYS = ('id', 'file_name', 'width', 'height')  # an image entry's keys that are not extra


class DatasetError(ValueError):
    """A dataset folder, image or annotation that cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One image of a dataset.

    bbox_xywh is (x, y, w, h) in pixels (floats as stored) or None for an image without a
    satellite; mask_path is None when the dataset has no mask for this image; extra holds the
    image entry's other keys as stored (e.g. 'synth': how `sat-seg synth` made the scene).
    """

    file_name: str
    image_path: pathlib.Path
    width: int
    height: int
    bbox_xywh: Optional[Tuple[float, float, float, float]]
    mask_path: Optional[pathlib.Path]
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def positive(self) -> bool:
        """True when the image contains a satellite."""
        return self.bbox_xywh is not None

    @property
    def missing_mask(self) -> bool:
        """True for an image with a satellite box but no mask (``sat-seg label`` makes one)."""
        return self.positive and self.mask_path is None

    def read_image(self) -> np.ndarray:
        """Return the image array (HxW or HxWx3 as stored)."""
        return read_image(self.image_path)

    def read_mask(self) -> Optional[np.ndarray]:
        """Return the mask as HxW bool, or None when the record has no mask."""
        if self.mask_path is None:
            return None
        return read_image(self.mask_path, grayscale=True) > 0


@dataclasses.dataclass
class Dataset:
    """The records of one dataset folder, in annotations.json order."""

    root: pathlib.Path
    records: List[Record]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    @property
    def has_masks(self) -> bool:
        """True when every positive record has a mask file."""
        positives = [r for r in self.records if r.positive]
        return bool(positives) and all(r.mask_path is not None for r in positives)


def mask_name(file_name: str) -> str:
    """Return the mask file name of an image: same relative path, .png extension."""
    return str(pathlib.PurePosixPath(file_name).with_suffix('.png'))


def read_image(path, grayscale: bool = False) -> np.ndarray:
    """Read an image file as stored (8 or 16 bit; HxW, or HxWx3/4 in RGB order).

    grayscale=True returns HxW (colour converted). Raises sat_seg_ros.imageio.ImageReadError
    (a ValueError) naming the path when the file is missing or cannot be decoded.
    """
    image = imageio.read_image(path)
    if grayscale and image.ndim == 3:
        code = cv2.COLOR_RGBA2GRAY if image.shape[2] == 4 else cv2.COLOR_RGB2GRAY
        image = cv2.cvtColor(image, code)
    return image


def write_image(path, image: np.ndarray) -> None:
    """Write an HxW or HxWx3 (RGB) array atomically; the format follows the suffix."""
    path = pathlib.Path(path)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(path.suffix or '.png', image)
    if not ok:
        raise DatasetError(f'cannot encode image for {path}; use a .png or .jpg name')
    atomic_write_bytes(path, encoded.tobytes())


def write_json(path, payload) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    atomic_write_text(path, json.dumps(payload, indent=1) + '\n')


def read_json(path, what: str):
    """Load a JSON file; DatasetError naming the file and `what` it should be otherwise."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f'{path} not found: expected {what}') from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f'{path} is not readable JSON ({error}): expected {what}') from None


def union_bbox(boxes: Sequence[Sequence[float]]) -> Tuple[float, float, float, float]:
    """Return the (x, y, w, h) box enclosing all given (x, y, w, h) boxes."""
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return (float(x0), float(y0), float(x1 - x0), float(y1 - y0))


def mask_bbox(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """Return the tight (x, y, w, h) box of the non-zero pixels of a mask, None if empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return (int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1))


def load_dataset(root) -> Dataset:
    """Read DIR/annotations.json and return a Dataset of Records.

    Raises DatasetError when annotations.json is missing or malformed. Image files are not
    opened here (use Record.read_image); masks are listed when DIR/masks/<stem>.png exists.
    """
    root = pathlib.Path(root)
    path = root / ANNOTATIONS
    if not path.is_file():
        raise DatasetError(f'{path} not found; a dataset folder needs annotations.json '
                           '(create one with `sat-seg synth` or `sat-seg import`)')
    coco = read_json(path, 'COCO annotations')
    try:
        images = coco['images']
        annotations = coco.get('annotations', [])
    except (KeyError, TypeError, AttributeError) as error:
        raise DatasetError(f'{path} is not COCO json with an "images" list: {error}') from None
    boxes = {}
    for ann in annotations:
        boxes.setdefault(ann['image_id'], []).append(ann['bbox'])
    records = []
    for image in images:
        file_name = image['file_name']
        mask_path = root / MASKS / mask_name(file_name)
        image_boxes = boxes.get(image['id'])
        records.append(Record(
            file_name=file_name,
            image_path=root / IMAGES / file_name,
            width=int(image['width']),
            height=int(image['height']),
            bbox_xywh=union_bbox(image_boxes) if image_boxes else None,
            mask_path=mask_path if mask_path.is_file() else None,
            extra={key: value for key, value in image.items() if key not in IMAGE_KEYS},
        ))
    return Dataset(root=root, records=records)


def validate_dataset(dataset: Dataset, bbox_tolerance_px: float = 1.0) -> List[str]:
    """Check every record against its files; return the problems found (empty list = valid).

    Checks: the image decodes and has the listed width and height; a mask has the image's
    size and is non-empty; a positive's bbox lies inside the image and, where a mask exists,
    equals the mask's tight box within `bbox_tolerance_px`; a negative has no mask.
    """
    problems = []
    for record in dataset:
        try:
            image = record.read_image()
        except ValueError as error:
            problems.append(f'{record.file_name}: {error}')
            continue
        if image.shape[:2] != (record.height, record.width):
            problems.append(f'{record.file_name}: image is {image.shape[1]}x{image.shape[0]}, '
                            f'annotations say {record.width}x{record.height}')
        mask = record.read_mask()
        if record.bbox_xywh is None:
            if mask is not None:
                problems.append(f'{record.file_name}: mask file but no annotation')
            continue
        x, y, w, h = record.bbox_xywh
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > record.width or \
                y + h > record.height:
            problems.append(f'{record.file_name}: bbox {list(record.bbox_xywh)} is not inside '
                            f'the {record.width}x{record.height} image')
        if mask is None:
            continue
        if mask.shape != image.shape[:2]:
            problems.append(f'{record.file_name}: mask is {mask.shape[1]}x{mask.shape[0]}, '
                            f'image {image.shape[1]}x{image.shape[0]}')
            continue
        tight = mask_bbox(mask)
        if tight is None:
            problems.append(f'{record.file_name}: mask is empty')
        elif max(abs(a - b) for a, b in zip(tight, record.bbox_xywh)) > bbox_tolerance_px:
            problems.append(f'{record.file_name}: bbox {list(record.bbox_xywh)} differs from '
                            f'the mask box {list(tight)}')
    return problems


class DatasetWriter:
    """Write a dataset folder: images and masks as they are added, annotations.json at close.

    Usage::

        with DatasetWriter(out) as writer:
            writer.add('a.png', image, bbox_xywh=(x, y, w, h), mask=mask)

    A bbox or mask of None means no satellite (a mask without a bbox gets the mask's tight box;
    an empty mask means no satellite). annotations.json is written atomically at close(), so a
    reader never sees a half-written list; `extra` keys are stored per image (e.g. 'source').
    """

    def __init__(self, root, info: Optional[dict] = None):
        """Create the folder (it may already hold images: they are overwritten by name)."""
        self.root = pathlib.Path(root)
        (self.root / IMAGES).mkdir(parents=True, exist_ok=True)
        self.info = dict(info or {})
        self._images: List[dict] = []
        self._annotations: List[dict] = []
        self._names = set()

    def __enter__(self) -> 'DatasetWriter':
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    def __len__(self) -> int:
        return len(self._images)

    def add(self, file_name: str, image: Optional[np.ndarray],
            bbox_xywh: Optional[Sequence[float]] = None,
            mask: Optional[np.ndarray] = None, *,
            source_path=None, width: Optional[int] = None, height: Optional[int] = None,
            extra: Optional[dict] = None) -> int:
        """Add one image; return its image id.

        image: HxW or HxWx3 array written to images/<file_name>, or None with source_path to
        copy an existing file unchanged (width and height then required).
        """
        if file_name in self._names:
            raise DatasetError(f'file_name {file_name!r} added twice; '
                               'give each image a unique name')
        if image is not None:
            height, width = image.shape[:2]
            write_image(self.root / IMAGES / file_name, image)
        elif source_path is not None and width and height:
            atomic_write_bytes(self.root / IMAGES / file_name,
                               pathlib.Path(source_path).read_bytes())
        else:
            raise DatasetError(f'{file_name}: give an image array, or source_path with width '
                               'and height')
        if mask is not None:
            mask = np.asarray(mask) > 0
            if mask.shape != (height, width):
                raise DatasetError(f'{file_name}: mask shape {mask.shape} differs from the image '
                                   f'({height}, {width}); masks must have the image size')
            if bbox_xywh is None:
                bbox_xywh = mask_bbox(mask)
            if mask.any():
                write_image(self.root / MASKS / mask_name(file_name), mask)
        return self._register(file_name, width, height, bbox_xywh, extra)

    def add_existing(self, record: Record) -> int:
        """Register `record`, whose image (and mask) already sit in this folder; return its id."""
        if not (self.root / IMAGES / record.file_name).is_file():
            raise DatasetError(f'{record.file_name} is not in {self.root / IMAGES}; '
                               'copy it there first or use add()')
        return self._register(record.file_name, record.width, record.height,
                              record.bbox_xywh, record.extra)

    def _register(self, file_name, width, height, bbox_xywh, extra) -> int:
        image_id = len(self._images) + 1
        entry = {'id': image_id, 'file_name': file_name, 'width': int(width),
                 'height': int(height)}
        entry.update(extra or {})
        self._images.append(entry)
        self._names.add(file_name)
        if bbox_xywh is not None:
            x, y, w, h = (float(v) for v in bbox_xywh)
            self._annotations.append({
                'id': len(self._annotations) + 1, 'image_id': image_id, 'category_id': 1,
                'bbox': [x, y, w, h], 'area': w * h, 'iscrowd': 0})
        return image_id

    def close(self) -> pathlib.Path:
        """Write annotations.json atomically and return its path."""
        path = self.root / ANNOTATIONS
        write_json(path, {'info': self.info, 'images': self._images,
                          'annotations': self._annotations, 'categories': [CATEGORY]})
        return path
