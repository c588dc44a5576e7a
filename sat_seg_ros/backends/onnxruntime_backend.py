"""ONNX Runtime backend: runs the exported tile graph; no torch or transformers needed.

The graph comes from ``sat-seg export`` (training/export.py) and sits in the model
folder as ``sat_seg_s<S>_<prompt>_{dyn,b<N>}.onnx``. Execution providers: CPU everywhere,
CUDA and TensorRT where the installed onnxruntime build has them (``device='cuda'``).
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional

import numpy as np

from sat_seg_ros.backends import Backend, INPUT_NAME, OUTPUT_NAME
from sat_seg_ros.backends.engine_cache import file_sha256, find_onnx

LOG = logging.getLogger(__name__)

#: Providers tried for device 'cuda' / 'tensorrt', best first; CPU is always the fallback.
GPU_PROVIDERS = {
    'cuda': ['CUDAExecutionProvider'],
    'tensorrt': ['TensorrtExecutionProvider', 'CUDAExecutionProvider'],
}


def choose_providers(device: str, available: List[str]) -> List[str]:
    """Return the execution providers for ``device`` ('cpu', 'cuda[:N]', 'tensorrt').

    Raises ValueError naming what is installed when a GPU device has no GPU provider.
    """
    kind, _, index = device.partition(':')
    if index and not index.isdigit():
        raise ValueError("device=%r: the GPU index after ':' must be a number, e.g. 'cuda:0'"
                         % (device,))
    if kind == 'cpu':
        return ['CPUExecutionProvider']
    if kind not in GPU_PROVIDERS:
        raise ValueError("device=%r is not one of 'cpu', 'cuda', 'cuda:N', 'tensorrt'"
                         % (device,))
    wanted = [name for name in GPU_PROVIDERS[kind] if name in available]
    if not wanted:
        raise ValueError('device=%r needs onnxruntime with %s, but this onnxruntime has %s: '
                         "install onnxruntime-gpu or use device 'cpu'"
                         % (device, ' or '.join(GPU_PROVIDERS[kind]), available))
    return wanted + ['CPUExecutionProvider']


class OnnxRuntimeBackend(Backend):
    """Runs the exported tile graph with ONNX Runtime.

    Options: ``onnx_path`` (default: the model folder's graph for this prompt, the dynamic-batch
    one first), ``threads`` (intra-op threads; default ONNX Runtime's choice), ``spinning``
    (False: idle intra-op threads sleep instead of spinning, which leaves the CPU to the rest of
    the process and machine, e.g. DDS threads or a second pipeline; default ONNX Runtime's).
    """

    name = 'onnxruntime'

    def __init__(self, model_dir: os.PathLike | str, device: str = 'cpu',
                 prompt_mode: str = 'grid', grid_points: int = 4,
                 onnx_path: Optional[os.PathLike | str] = None,
                 threads: Optional[int] = None, spinning: Optional[bool] = None) -> None:
        super().__init__(model_dir, prompt_mode, grid_points)
        import onnxruntime

        path = str(onnx_path or find_onnx(model_dir, None, prompt_mode, grid_points))
        if not os.path.isfile(path):
            raise FileNotFoundError('onnx_path %s does not exist; create it with sat-seg export'
                                    % path)
        providers = choose_providers(device, onnxruntime.get_available_providers())
        index = device.partition(':')[2]
        if index:
            providers = [(name, {'device_id': int(index)}) if name != 'CPUExecutionProvider'
                         else name for name in providers]
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        if spinning is not None:
            flag = '1' if spinning else '0'
            options.add_session_config_entry('session.intra_op.allow_spinning', flag)
            options.add_session_config_entry('session.inter_op.allow_spinning', flag)
        self.onnx_path = path
        self.device = device
        self.session = onnxruntime.InferenceSession(path, options, providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        self._check_prompt(meta)
        self._warn_if_stale(meta)
        shape = self.session.get_inputs()[0].shape
        self.input_size = int(shape[2])
        self.batch = shape[0] if isinstance(shape[0], int) else None

    def _check_prompt(self, meta: dict) -> None:
        """Refuse a graph exported with another prompt than this backend was asked for."""
        found = (meta.get('sat_seg.prompt_mode'), meta.get('sat_seg.grid_points'))
        if found[0] is None:
            return  # a graph from elsewhere (e.g. trtexec users' own export): trust the name
        expected = (self.prompt_mode, str(self.grid_points))
        if found[0] != expected[0] or (expected[0] == 'grid' and found[1] != expected[1]):
            raise ValueError('%s was exported with prompt %s/%s but the model asks for %s/%s: '
                             're-export with sat-seg export --prompt-mode %s'
                             % (self.onnx_path, found[0], found[1], expected[0], expected[1],
                                expected[0]))

    def _warn_if_stale(self, meta: dict) -> None:
        """Warn when the model folder's weights are not the ones the graph was exported from."""
        weights = os.path.join(self.model_dir, 'model.safetensors')
        exported = meta.get('sat_seg.weights_sha256')
        if exported and os.path.isfile(weights) and file_sha256(weights) != exported:
            LOG.warning('%s was exported from other weights than %s: re-run sat-seg export',
                        self.onnx_path, weights)

    def run_batch(self, pixel_values: np.ndarray) -> np.ndarray:
        """Return low-res logits (N, m, m) float32 for pre-processed tiles (N, 3, S, S).

        A static-batch graph gets the tiles in chunks of its batch, the last one zero-padded.
        """
        pixel_values = np.ascontiguousarray(pixel_values, np.float32)
        if self.batch is None:
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values})[0]
        count = len(pixel_values)
        outputs = []
        for start in range(0, count, self.batch):
            chunk = pixel_values[start:start + self.batch]
            if len(chunk) < self.batch:
                padding = np.zeros((self.batch - len(chunk),) + chunk.shape[1:], np.float32)
                chunk = np.concatenate([chunk, padding])
            outputs.append(self.session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0])
        return np.concatenate(outputs)[:count]

    def describe(self) -> str:
        """Return a one-line description with the graph file and the providers."""
        return '%s, %s, %s' % (super().describe(), os.path.basename(self.onnx_path),
                               '+'.join(self.session.get_providers()))

    def close(self) -> None:
        """Drop the session."""
        self.session = None
