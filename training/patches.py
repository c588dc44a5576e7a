"""Multi-scale training patches: the report's training set, cut with the runtime's tiling.

For every image and every model size S, the image is resized to S x S with
sat_seg_ros.tiling.resize (exactly as the Segmenter does at run time) and cut into
tile_size tiles with sat_seg_ros.tiling.TileGrid; tiles with satellite pixels are kept, empty
tiles with probability `empty_frac`. The mask is resized the same way (area/bilinear on 0/1)
and thresholded at 0.5.

Output::

    OUT/tiles/<stem>_s<S>_y<y>_x<x>.png   image tile (dtype and channels as stored)
    OUT/masks/<same name>                  0/255 mask tile
    OUT/manifest.csv                       one row per tile (MANIFEST_FIELDS)
    OUT/patches.json                       parameters and counts per split and size
"""

from __future__ import annotations

import csv
import io
import pathlib
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from sat_seg_ros.config import atomic_write_text
from sat_seg_ros.tiling import resize, TileGrid
from sat_seg_training import dataset as ds

MANIFEST_FIELDS = ('tile', 'mask', 'source', 'split', 'size', 'y', 'x', 'tile_size',
                   'satellite_px', 'image_positive')
DEFAULT_SIZES = (512, 1024, 2048)


def resized_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a bool HxW mask to size x size the way images are resized; bool result."""
    return resize(mask.astype(np.float32), size, size) >= 0.5


def tile_name(file_name: str, size: int, y: int, x: int) -> str:
    """Return the tile file name for an image, model size and tile origin."""
    stem = pathlib.PurePosixPath(file_name).with_suffix('').as_posix().replace('/', '__')
    return f'{stem}_s{size}_y{y}_x{x}.png'


def make_patches(dataset: ds.Dataset, out, sizes: Sequence[int] = DEFAULT_SIZES,
                 tile_size: int = 256, overlap: int = 0, empty_frac: float = 0.0,
                 seed: int = 0, assignment: Optional[Dict[str, str]] = None,
                 progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Write a patch set from `dataset` to `out`; return the summary (also in patches.json).

    assignment maps file_name -> split (from splits.json); without it every tile is 'all'.
    Positive images without a mask file cannot give satellite pixels: they are skipped and
    listed under 'skipped' in the summary.
    """
    if not 0.0 <= empty_frac <= 1.0:
        raise ValueError(f'empty_frac={empty_frac}: use a fraction between 0 and 1')
    if not sizes or min(sizes) < tile_size:
        raise ValueError(f'sizes {list(sizes)}: every model size must be >= tile_size '
                         f'{tile_size}')
    out = pathlib.Path(out)
    rows: List[dict] = []
    skipped = []
    for index, record in enumerate(dataset):
        split = assignment.get(record.file_name, 'unassigned') if assignment else 'all'
        if record.missing_mask:
            skipped.append({'file': record.file_name, 'reason': 'positive image without a mask '
                            '(derive masks with `sat-seg label` first)'})
            continue
        image = record.read_image()
        mask = record.read_mask()
        if mask is None:
            mask = np.zeros(image.shape[:2], bool)
        rng = np.random.default_rng([seed, index])
        for size in sizes:
            grid = TileGrid(size, size, tile_size, overlap)
            image_tiles = grid.cut(resize(image, size, size))
            mask_tiles = grid.cut(resized_mask(mask, size))
            pixels = mask_tiles.reshape(len(grid), -1).sum(1)
            keep = (pixels > 0) | (rng.random(len(grid)) < empty_frac)
            for k in np.flatnonzero(keep):
                y, x = grid.origins[k]
                name = tile_name(record.file_name, size, y, x)
                ds.write_image(out / 'tiles' / name, image_tiles[k])
                ds.write_image(out / 'masks' / name, mask_tiles[k])
                rows.append({'tile': f'tiles/{name}', 'mask': f'masks/{name}',
                             'source': record.file_name, 'split': split, 'size': size,
                             'y': y, 'x': x, 'tile_size': tile_size,
                             'satellite_px': int(pixels[k]),
                             'image_positive': int(record.positive)})
        if progress:
            progress(index + 1, len(dataset))
    _write_manifest(out / 'manifest.csv', rows)
    summary = {'dataset': str(dataset.root), 'sizes': list(sizes), 'tile_size': tile_size,
               'overlap': overlap, 'empty_frac': empty_frac, 'seed': seed,
               'tiles': len(rows), 'counts': _counts(rows), 'skipped': skipped}
    ds.write_json(out / 'patches.json', summary)
    return summary


def _counts(rows: Iterable[dict]) -> dict:
    counts: Dict[str, Dict[str, Dict[str, int]]] = {}
    for row in rows:
        entry = counts.setdefault(row['split'], {}).setdefault(
            str(row['size']), {'tiles': 0, 'with_satellite': 0})
        entry['tiles'] += 1
        entry['with_satellite'] += row['satellite_px'] > 0
    return counts


def _write_manifest(path: pathlib.Path, rows: List[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_manifest(root) -> List[dict]:
    """Return the manifest rows of a patch set (ints converted)."""
    path = pathlib.Path(root) / 'manifest.csv'
    if not path.is_file():
        raise ds.DatasetError(f'{path} not found; create a patch set with `sat-seg patches`')
    with open(path, newline='') as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in ('size', 'y', 'x', 'tile_size', 'satellite_px', 'image_positive'):
            row[key] = int(row[key])
    return rows


def stitch_mask(root, source: str, size: int) -> np.ndarray:
    """Reassemble the size x size mask of `source` from its tiles (missing tiles are empty).

    With every tile that holds satellite pixels kept, this equals resized_mask() of the
    source mask exactly (tiles cut and stitched by the runtime's TileGrid).
    """
    root = pathlib.Path(root)
    rows = [r for r in read_manifest(root) if r['source'] == source and r['size'] == size]
    if not rows:
        raise ValueError(f'no tiles of {source!r} at size {size} in {root}')
    tile_size = rows[0]['tile_size']
    overlap = ds.read_json(root / 'patches.json', 'the summary of `sat-seg patches`')['overlap']
    grid = TileGrid(size, size, tile_size, overlap)
    tiles = np.zeros((len(grid), tile_size, tile_size), np.float32)
    index = {origin: k for k, origin in enumerate(grid.origins)}
    for row in rows:
        tiles[index[(row['y'], row['x'])]] = ds.read_image(root / row['mask'], True) > 0
    return grid.stitch(tiles) >= 0.5
