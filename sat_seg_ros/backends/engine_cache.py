"""File names and metadata of exported ONNX graphs and TensorRT engines in a model folder.

A TensorRT engine only runs on the TensorRT version and GPU it was built for, so every engine
gets a JSON sidecar recording the TensorRT version, GPU name, compute capability, precision and
input shapes; :func:`engine_mismatches` compares it with the running system and the caller
either rebuilds (where allowed) or refuses with a message naming the difference and the
command that fixes it. Pure Python: no TensorRT, CUDA or torch import here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
import re
from typing import Any, Dict, List, Optional

from sat_seg_ros.config import atomic_write_text

#: ONNX opset of exported graphs: the newest TensorRT 8.2 (JetPack 4.6, Jetson TX2) parses.
ONNX_OPSET = 13
ENGINE_SUFFIX = '.engine'
METADATA_SUFFIX = '.json'
PRECISIONS = ('fp32', 'fp16')
#: Keys of an engine's metadata that must equal the running system's / request's values.
ENGINE_KEYS = ('tensorrt_version', 'gpu_name', 'compute_capability', 'precision',
               'input_size', 'min_batch', 'opt_batch', 'max_batch', 'onnx_sha256')


def prompt_tag(prompt_mode: str, grid_points: int) -> str:
    """Return the prompt part of a file name: 'grid4', 'box' or 'none'."""
    return 'grid%d' % grid_points if prompt_mode == 'grid' else prompt_mode


def onnx_file_name(input_size: int, prompt_mode: str, grid_points: int,
                   batch: Optional[int] = None) -> str:
    """Return the ONNX file name of a tile graph: dynamic batch when ``batch`` is None."""
    return 'sat_seg_s%d_%s_%s.onnx' % (input_size, prompt_tag(prompt_mode, grid_points),
                                       'dyn' if batch is None else 'b%d' % batch)


def export_command(model_dir: os.PathLike | str, prompt_mode: str, grid_points: int) -> str:
    """Return the ``sat-seg export`` command line that writes the graphs a backend looks for."""
    command = 'sat-seg export --model %s --out %s --prompt-mode %s' % (
        model_dir, model_dir, prompt_mode)
    if prompt_mode == 'grid':
        command += ' --grid-points %d' % grid_points
    return command


def find_onnx(model_dir: os.PathLike | str, input_size: Optional[int], prompt_mode: str,
              grid_points: int) -> Path:
    """Return the model folder's tile graph for this prompt, preferring the dynamic-batch one.

    ``input_size`` None accepts any size. Raises FileNotFoundError naming the exact
    ``sat-seg export`` command when the folder has none.
    """
    folder = Path(model_dir)
    tag = prompt_tag(prompt_mode, grid_points)
    size = r'\d+' if input_size is None else str(int(input_size))
    pattern = re.compile(r'^sat_seg_s(%s)_%s_(dyn|b\d+)\.onnx$' % (size, re.escape(tag)))
    found = sorted((path for path in folder.glob('sat_seg_s*.onnx') if pattern.match(path.name)),
                   key=lambda path: (not path.name.endswith('_dyn.onnx'), path.name))
    if not found:
        raise FileNotFoundError(
            'model folder %s has no exported ONNX graph sat_seg_s%s_%s_{dyn,bN}.onnx; create it '
            'with:  %s' % (folder, '*' if input_size is None else input_size, tag,
                           export_command(folder, prompt_mode, grid_points)))
    return found[0]


def file_sha256(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for block in iter(lambda: stream.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def slug(text: str) -> str:
    """Return ``text`` reduced to a file-name-safe lower-case token ('NVIDIA Tegra X2' -> ...)."""
    return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-') or 'unknown'


def engine_key(tensorrt_version: str, gpu_name: str, compute_capability: str, precision: str,
               input_size: int, min_batch: int, opt_batch: int, max_batch: int,
               onnx_sha256: str) -> Dict[str, Any]:
    """Return the metadata dict identifying one engine build; validates precision and batches."""
    if precision not in PRECISIONS:
        raise ValueError('precision=%r is not one of %s' % (precision, PRECISIONS))
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError('batch profile min=%d opt=%d max=%d must satisfy 1 <= min <= opt <= max'
                         % (min_batch, opt_batch, max_batch))
    return {'tensorrt_version': str(tensorrt_version), 'gpu_name': str(gpu_name),
            'compute_capability': str(compute_capability), 'precision': precision,
            'input_size': int(input_size), 'min_batch': int(min_batch),
            'opt_batch': int(opt_batch), 'max_batch': int(max_batch),
            'onnx_sha256': str(onnx_sha256)}


def engine_file_name(onnx_name: str, key: Dict[str, Any]) -> str:
    """Return the engine file name for an ONNX graph and an :func:`engine_key`.

    The name carries everything an engine is tied to, so engines for several GPUs and TensorRT
    versions can sit side by side in one model folder.
    """
    stem = onnx_name[:-len('.onnx')] if onnx_name.endswith('.onnx') else onnx_name
    return '%s_b%d-%d-%d_%s_%s_sm%s_trt%s%s' % (
        stem, key['min_batch'], key['opt_batch'], key['max_batch'], key['precision'],
        slug(key['gpu_name']), key['compute_capability'].replace('.', ''),
        key['tensorrt_version'], ENGINE_SUFFIX)


def metadata_path(engine_path: os.PathLike | str) -> Path:
    """Return the JSON sidecar of an engine file."""
    return Path(str(engine_path) + METADATA_SUFFIX)


def write_engine_metadata(engine_path: os.PathLike | str, key: Dict[str, Any],
                          extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write the engine's metadata sidecar atomically; return its path."""
    record = dict(extra or {})
    record.update(key)
    path = metadata_path(engine_path)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + '\n')
    return path


def read_engine_metadata(engine_path: os.PathLike | str) -> Dict[str, Any]:
    """Return an engine's metadata; raise FileNotFoundError / ValueError naming the file."""
    path = metadata_path(engine_path)
    if not path.is_file():
        raise FileNotFoundError("engine %s has no metadata file %s: rebuild it with 'sat-seg "
                                "build-engine' so it can be checked" % (engine_path, path))
    try:
        record = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError('%s is not valid JSON (%s): rebuild the engine' % (path, error)) from None
    if not isinstance(record, dict):
        raise ValueError('%s must hold a JSON object: rebuild the engine' % path)
    return record


def engine_mismatches(found: Dict[str, Any], expected: Dict[str, Any]) -> List[str]:
    """Return one 'key: engine has X, needed Y' line per :data:`ENGINE_KEYS` difference."""
    return ['%s: engine has %r, this system needs %r' % (name, found.get(name), expected[name])
            for name in ENGINE_KEYS if name in expected and found.get(name) != expected[name]]


def other_engines(folder: os.PathLike | str, onnx_name: str) -> List[Path]:
    """Return the engines in ``folder`` built from ``onnx_name`` (any GPU / version)."""
    stem = onnx_name[:-len('.onnx')]
    return sorted(Path(folder).glob(stem + '_b*' + ENGINE_SUFFIX))
