"""Inference backends behind one small interface, and the numpy pre/post-processing they share.

Every backend receives the same numpy tiles, pre-processed by :func:`preprocess_tiles`, runs SAM
with the prompt fixed by the model's prompt mode and returns low-resolution mask logits, which
:func:`upsample_logits` brings to the tile size. The runtimes (torch, onnxruntime, tensorrt) are
imported only by the backend that needs them.
"""

from __future__ import annotations

import importlib
import os
from typing import Dict, Optional

import cv2
import numpy as np

#: I/O tensor names of the exported tile graph (ONNX / TensorRT), defined once.
INPUT_NAME = 'pixel_values'
OUTPUT_NAME = 'low_res_logits'

#: SAM's pixel normalisation (ImageNet statistics on the 0..255 scale), as in SamProcessor.
PIXEL_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
PIXEL_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255.0

BACKENDS: Dict[str, str] = {
    'torch': 'sat_seg_ros.backends.torch_backend:TorchBackend',
    'onnxruntime': 'sat_seg_ros.backends.onnxruntime_backend:OnnxRuntimeBackend',
    'tensorrt': 'sat_seg_ros.backends.tensorrt_backend:TensorRTBackend',
}


class Backend:
    """Runs SAM on batches of tiles with a fixed prompt.

    Subclasses set ``input_size`` (the model's square pixel input) and implement
    :meth:`run_batch`; ``name``, ``model_dir``, ``prompt_mode`` and ``grid_points`` describe them.
    """

    name = 'base'

    def __init__(self, model_dir: os.PathLike | str, prompt_mode: str = 'grid',
                 grid_points: int = 4) -> None:
        self.model_dir = str(model_dir)
        self.prompt_mode = prompt_mode
        self.grid_points = grid_points
        self.input_size = 0

    def run_batch(self, pixel_values: np.ndarray) -> np.ndarray:
        """Return low-res logits (N, m, m) float32 for pre-processed tiles (N, 3, S, S)."""
        raise NotImplementedError

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """Return mask logits (N, t, t) float32 for tiles (N, t, t, 3 or 1) on the 0..255 scale."""
        low_res = self.run_batch(preprocess_tiles(tiles, self.input_size))
        return upsample_logits(low_res, tiles.shape[1])

    def describe(self) -> str:
        """Return a one-line description for logs and diagnostics."""
        return '%s (%s, input %d, prompt %s)' % (
            self.name, os.path.basename(self.model_dir.rstrip('/')), self.input_size,
            self.prompt_mode)

    def close(self) -> None:
        """Release the runtime's resources (GPU memory, sessions); unusable afterwards."""


def create_backend(name: str, model_dir: os.PathLike | str, device: str = 'cpu',
                   prompt_mode: str = 'grid', grid_points: int = 4, **options) -> Backend:
    """Instantiate backend ``name`` ('torch', 'onnxruntime' or 'tensorrt') for ``model_dir``."""
    if name not in BACKENDS:
        raise ValueError('backend=%r is not one of %s' % (name, sorted(BACKENDS)))
    module_name, class_name = BACKENDS[name].split(':')
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError('backend %r needs a package that is not installed (%s); install it or '
                          'choose another backend' % (name, error)) from error
    backend_class = getattr(module, class_name)
    return backend_class(model_dir, device=device, prompt_mode=prompt_mode,
                         grid_points=grid_points, **options)


def preprocess_tiles(tiles: np.ndarray, input_size: int) -> np.ndarray:
    """Resize tiles (N, t, t, 3 RGB or 1 gray; 0..255) to the model input, normalise: NCHW.

    Returns (N, 3, S, S) float32. Matches SamProcessor (bilinear resize, ImageNet mean/std); a
    gray tile becomes SAM's three equal channels without making them first. Channels are
    written straight into the NCHW output, with no transposed copy; a tile already at the
    model's input size is only normalised.
    """
    if tiles.ndim != 4 or tiles.shape[3] not in (1, 3) or tiles.shape[1] != tiles.shape[2]:
        raise ValueError('tiles must be (N, t, t, 3) or (N, t, t, 1), got %s' % (tiles.shape,))
    tiles = tiles.astype(np.float32, copy=False)
    if tiles.shape[1] != input_size:
        resized = [cv2.resize(tile, (input_size, input_size), interpolation=cv2.INTER_LINEAR)
                   for tile in tiles]
        tiles = np.stack([tile.reshape(input_size, input_size, -1) for tile in resized])
    out = np.empty((len(tiles), 3, input_size, input_size), np.float32)
    for channel in range(3):
        source = tiles[..., channel if tiles.shape[3] == 3 else 0]
        np.subtract(source, PIXEL_MEAN[channel], out=out[:, channel])
        out[:, channel] /= PIXEL_STD[channel]
    return out


def upsample_logits(low_res: np.ndarray, tile_size: int) -> np.ndarray:
    """Bilinearly resize low-res logits (N, m, m) to (N, tile_size, tile_size) float32."""
    low_res = np.asarray(low_res, np.float32)
    if low_res.shape[1] == tile_size:
        return low_res
    return np.stack([cv2.resize(tile, (tile_size, tile_size), interpolation=cv2.INTER_LINEAR)
                     for tile in low_res])


def prompt_arrays(prompt_mode: str, input_size: int,
                  grid_points: int = 4) -> Dict[str, Optional[np.ndarray]]:
    """Return the fixed SAM prompt of a tile as SamModel keyword arrays (batch of one).

    'grid': ``grid_points`` x ``grid_points`` positive points at cell centres (the report's
    inference prompt); 'box': the whole tile as a box; 'none': no prompt at all.
    """
    if prompt_mode == 'grid':
        centres = (np.arange(grid_points, dtype=np.float32) + 0.5) * (input_size / grid_points)
        xs, ys = np.meshgrid(centres, centres)
        points = np.stack([xs.ravel(), ys.ravel()], axis=1)[None, None]
        labels = np.ones(points.shape[:3], np.int64)
        return {'input_points': points.astype(np.float32), 'input_labels': labels,
                'input_boxes': None}
    if prompt_mode == 'box':
        box = np.array([[[0.0, 0.0, float(input_size), float(input_size)]]], np.float32)
        return {'input_points': None, 'input_labels': None, 'input_boxes': box}
    if prompt_mode == 'none':
        return {'input_points': None, 'input_labels': None, 'input_boxes': None}
    raise ValueError("prompt_mode=%r is not one of 'grid', 'box', 'none'" % (prompt_mode,))
