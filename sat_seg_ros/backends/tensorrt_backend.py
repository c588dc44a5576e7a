"""TensorRT backend: deserialises an engine built offline from the exported tile graph; no torch.

Engines are built by ``sat-seg build-engine`` (or :func:`build_engine`, or ``trtexec`` plus a
metadata file) from the ``sat-seg export`` ONNX graph, on the device that runs them. They are
cached in the model folder under names keyed by TensorRT version, GPU, compute capability,
precision and batch profile (see :mod:`sat_seg_ros.backends.engine_cache`).

Works with the TensorRT 8.x Python API (bindings, ``execute_async_v2``; JetPack 4.6 ships
8.2) and the 10.x one (named tensors, ``execute_async_v3``), and with pycuda or cuda-python for
device buffers and the stream.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from sat_seg_ros.backends import Backend, INPUT_NAME, OUTPUT_NAME
from sat_seg_ros.backends import engine_cache
from sat_seg_ros.config import atomic_write_bytes

LOG = logging.getLogger(__name__)
MEMORY_LIBRARIES = ('pycuda', 'cuda-python')


class EngineMismatchError(RuntimeError):
    """A cached engine was built for another TensorRT / GPU / precision / shape / graph."""


def import_tensorrt():
    """Return the ``tensorrt`` module, or raise ImportError saying how to get it."""
    try:
        import tensorrt
    except ImportError as error:
        raise ImportError(
            'the tensorrt backend needs the TensorRT Python package (%s): on a Jetson it comes '
            'with JetPack (python3-libnvinfer); elsewhere pip install tensorrt' % error) from None
    return tensorrt


def tensorrt_major(trt) -> int:
    """Return TensorRT's major version (8 for 8.2.1.8)."""
    return int(str(trt.__version__).split('.')[0])


class PycudaMemory:
    """Device buffers and a stream through pycuda (the usual choice on JetPack 4.6)."""

    library = 'pycuda'

    def __init__(self, device_index: int = 0) -> None:
        import pycuda.driver as cuda

        cuda.init()
        self._cuda = cuda
        self._device = cuda.Device(device_index)
        self._context = self._device.retain_primary_context()
        self._context.push()
        self._stream = cuda.Stream()
        self._allocations: List[Any] = []

    @property
    def stream_handle(self) -> int:
        """The CUDA stream as an integer handle for TensorRT."""
        return self._stream.handle

    def device_name(self) -> str:
        """Return the GPU's name."""
        return self._device.name()

    def compute_capability(self) -> str:
        """Return the compute capability as 'major.minor'."""
        return '%d.%d' % self._device.compute_capability()

    def alloc(self, nbytes: int) -> int:
        """Allocate ``nbytes`` of device memory; return its address."""
        allocation = self._cuda.mem_alloc(nbytes)
        self._allocations.append(allocation)
        return int(allocation)

    def to_device(self, address: int, host: np.ndarray) -> None:
        """Queue a copy of ``host`` to ``address`` on the stream."""
        self._cuda.memcpy_htod_async(address, host, self._stream)

    def to_host(self, host: np.ndarray, address: int) -> None:
        """Queue a copy from ``address`` into ``host`` on the stream."""
        self._cuda.memcpy_dtoh_async(host, address, self._stream)

    def synchronize(self) -> None:
        """Wait for the stream."""
        self._stream.synchronize()

    def close(self) -> None:
        """Free the buffers and release the context."""
        for allocation in self._allocations:
            allocation.free()
        self._allocations = []
        self._context.pop()


class CudaPythonMemory:
    """Device buffers and a stream through NVIDIA's cuda-python runtime bindings."""

    library = 'cuda-python'

    def __init__(self, device_index: int = 0) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        self._cudart = cudart
        self._device_index = device_index
        self._call('cudaSetDevice', device_index)
        self._stream = self._call('cudaStreamCreate')
        self._allocations: List[int] = []

    def _call(self, name: str, *args):
        """Call a cudart function; raise RuntimeError naming it when it fails."""
        result = getattr(self._cudart, name)(*args)
        error, values = result[0], result[1:]
        if int(error) != 0:
            raise RuntimeError('CUDA %s failed: %s' % (name, error))
        return values[0] if len(values) == 1 else values or None

    @property
    def stream_handle(self) -> int:
        """The CUDA stream as an integer handle for TensorRT."""
        return int(self._stream)

    def device_name(self) -> str:
        """Return the GPU's name."""
        name = self._call('cudaGetDeviceProperties', self._device_index).name
        return name.decode().rstrip('\x00') if isinstance(name, bytes) else str(name)

    def compute_capability(self) -> str:
        """Return the compute capability as 'major.minor'."""
        properties = self._call('cudaGetDeviceProperties', self._device_index)
        return '%d.%d' % (properties.major, properties.minor)

    def alloc(self, nbytes: int) -> int:
        """Allocate ``nbytes`` of device memory; return its address."""
        address = int(self._call('cudaMalloc', nbytes))
        self._allocations.append(address)
        return address

    def to_device(self, address: int, host: np.ndarray) -> None:
        """Queue a copy of ``host`` to ``address`` on the stream."""
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call('cudaMemcpyAsync', address, host.ctypes.data, host.nbytes, kind, self._stream)

    def to_host(self, host: np.ndarray, address: int) -> None:
        """Queue a copy from ``address`` into ``host`` on the stream."""
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call('cudaMemcpyAsync', host.ctypes.data, address, host.nbytes, kind, self._stream)

    def synchronize(self) -> None:
        """Wait for the stream."""
        self._call('cudaStreamSynchronize', self._stream)

    def close(self) -> None:
        """Free the buffers and the stream."""
        for address in self._allocations:
            self._call('cudaFree', address)
        self._allocations = []
        self._call('cudaStreamDestroy', self._stream)


def open_device_memory(device_index: int = 0, library: Optional[str] = None):
    """Return device-memory helpers from ``library`` (pycuda, cuda-python; None: first found)."""
    if library is not None and library not in MEMORY_LIBRARIES:
        raise ValueError('memory=%r is not one of %s' % (library, MEMORY_LIBRARIES))
    errors = []
    for name, factory in (('pycuda', PycudaMemory), ('cuda-python', CudaPythonMemory)):
        if library in (None, name):
            try:
                return factory(device_index)
            except ImportError as error:
                errors.append('%s: %s' % (name, error))
    raise ImportError('the tensorrt backend needs pycuda or cuda-python for GPU buffers (%s): '
                      'pip install pycuda (JetPack: python3-pycuda) or pip install cuda-python'
                      % '; '.join(errors))


def device_index(device: str) -> int:
    """Return N for 'cuda' (0) or 'cuda:N'; raise ValueError for anything else."""
    kind, _, index = device.partition(':')
    if kind != 'cuda' or (index and not index.isdigit()):
        raise ValueError("device=%r: the tensorrt backend runs on a GPU, set device 'cuda' or "
                         "'cuda:N'" % (device,))
    return int(index or 0)


def build_engine(trt, onnx_path: os.PathLike | str, key: Dict[str, Any],
                 engine_path: os.PathLike | str, workspace_mb: int = 1024) -> Path:
    """Build and write a serialized engine for ``key`` (engine_cache.engine_key) + metadata.

    Uses ``build_serialized_network`` (TensorRT 8.0+ and 10.x); the workspace limit goes through
    ``set_memory_pool_limit`` where it exists (8.4+) and ``max_workspace_size`` on 8.2.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, 'EXPLICIT_BATCH', None)
    flags = 0 if explicit is None or tensorrt_major(trt) >= 10 else 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, 'rb') as stream:
        parsed = parser.parse(stream.read())
    if not parsed:
        errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        raise RuntimeError('TensorRT %s could not parse %s:\n  %s'
                           % (trt.__version__, onnx_path, '\n  '.join(errors)))
    config = builder.create_builder_config()
    workspace = int(workspace_mb) << 20
    if hasattr(config, 'set_memory_pool_limit'):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:
        config.max_workspace_size = workspace
    if key['precision'] == 'fp16':
        if not builder.platform_has_fast_fp16:
            raise RuntimeError('precision fp16 requested but this GPU has no fast fp16: '
                               'build with --precision fp32')
        config.set_flag(trt.BuilderFlag.FP16)
    size = key['input_size']
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (key['min_batch'], 3, size, size),
                      (key['opt_batch'], 3, size, size), (key['max_batch'], 3, size, size))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError('TensorRT %s failed to build an engine from %s (see its log above)'
                           % (trt.__version__, onnx_path))
    atomic_write_bytes(engine_path, bytes(serialized))
    engine_cache.write_engine_metadata(engine_path, key, {'onnx': os.path.basename(onnx_path)})
    return Path(engine_path)


class EngineRunner:
    """One deserialised engine with its context and buffers; hides the 8.x / 10.x API split."""

    def __init__(self, trt, engine_bytes: bytes, memory, max_batch: int) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError('TensorRT %s could not deserialise the engine: it was built by '
                               'another TensorRT version or is damaged; rebuild it'
                               % trt.__version__)
        self.context = self.engine.create_execution_context()
        self.memory = memory
        self.tensor_api = hasattr(self.engine, 'num_io_tensors')
        input_shape = self._shape(INPUT_NAME)
        output_shape = self._shape(OUTPUT_NAME)
        self.input_size = int(input_shape[2])
        self.mask_size = int(output_shape[1])
        self.max_batch = max_batch
        self.input_address = memory.alloc(max_batch * 3 * self.input_size ** 2 * 4)
        self.output_address = memory.alloc(max_batch * self.mask_size ** 2 * 4)
        if self.tensor_api:
            self.context.set_tensor_address(INPUT_NAME, self.input_address)
            self.context.set_tensor_address(OUTPUT_NAME, self.output_address)
        else:
            self.bindings = [0] * self.engine.num_bindings
            self.bindings[self.engine.get_binding_index(INPUT_NAME)] = self.input_address
            self.bindings[self.engine.get_binding_index(OUTPUT_NAME)] = self.output_address

    def _shape(self, name: str) -> Tuple[int, ...]:
        if self.tensor_api:
            names = [self.engine.get_tensor_name(index)
                     for index in range(self.engine.num_io_tensors)]
            if name not in names:
                raise RuntimeError('engine has tensors %s, not %r: it was not built from a '
                                   'sat-seg export graph' % (names, name))
            return tuple(self.engine.get_tensor_shape(name))
        index = self.engine.get_binding_index(name)
        if index < 0:
            raise RuntimeError('engine has no binding %r: it was not built from a sat-seg export '
                               'graph' % name)
        return tuple(self.engine.get_binding_shape(index))

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """Run up to ``max_batch`` pre-processed tiles; return (N, m, m) float32 logits."""
        count = len(pixel_values)
        host_in = np.ascontiguousarray(pixel_values, np.float32)
        host_out = np.empty((count, self.mask_size, self.mask_size), np.float32)
        if self.tensor_api:
            self.context.set_input_shape(INPUT_NAME, host_in.shape)
        else:
            self.context.set_binding_shape(self.engine.get_binding_index(INPUT_NAME),
                                           host_in.shape)
        self.memory.to_device(self.input_address, host_in)
        if self.tensor_api:
            ok = self.context.execute_async_v3(self.memory.stream_handle)
        else:
            ok = self.context.execute_async_v2(bindings=self.bindings,
                                               stream_handle=self.memory.stream_handle)
        if not ok:
            raise RuntimeError('TensorRT execution failed for a batch of %d tiles' % count)
        self.memory.to_host(host_out, self.output_address)
        self.memory.synchronize()
        return host_out


class TensorRTBackend(Backend):
    """Runs a cached TensorRT engine of the exported tile graph on an NVIDIA GPU.

    Options: ``precision`` ('fp16' default, 'fp32'), ``max_batch`` / ``opt_batch`` /
    ``min_batch`` (engine profile; default 16 / max / 1), ``engine_path`` (use this engine file),
    ``onnx_path`` (graph to check against / build from), ``build`` (build or rebuild the engine
    when it is missing or does not match this system; default False: refuse with the command
    that builds it), ``workspace_mb``, ``memory`` ('pycuda' or 'cuda-python').
    """

    name = 'tensorrt'

    def __init__(self, model_dir: os.PathLike | str, device: str = 'cuda',
                 prompt_mode: str = 'grid', grid_points: int = 4, precision: str = 'fp16',
                 max_batch: int = 16, opt_batch: Optional[int] = None, min_batch: int = 1,
                 engine_path: Optional[os.PathLike | str] = None,
                 onnx_path: Optional[os.PathLike | str] = None, build: bool = False,
                 workspace_mb: int = 1024, memory: Optional[str] = None) -> None:
        super().__init__(model_dir, prompt_mode, grid_points)
        trt = import_tensorrt()
        self.memory = open_device_memory(device_index(device), memory)
        try:
            path, key = resolve_engine(
                trt, self.memory, model_dir, prompt_mode, grid_points, precision, min_batch,
                opt_batch or max_batch, max_batch, engine_path, onnx_path, build, workspace_mb)
            with open(path, 'rb') as stream:
                self.runner = EngineRunner(trt, stream.read(), self.memory, key['max_batch'])
        except BaseException:
            self.memory.close()
            raise
        self.engine_path = str(path)
        self.input_size = self.runner.input_size
        self.min_batch = key['min_batch']
        self.precision = key['precision']

    def run_batch(self, pixel_values: np.ndarray) -> np.ndarray:
        """Return low-res logits (N, m, m) float32; chunks of max_batch, padded to min_batch."""
        count = len(pixel_values)
        outputs = []
        for start in range(0, count, self.runner.max_batch):
            chunk = pixel_values[start:start + self.runner.max_batch]
            real = len(chunk)
            if real < self.min_batch:
                padding = np.zeros((self.min_batch - real,) + chunk.shape[1:], np.float32)
                chunk = np.concatenate([chunk, padding])
            outputs.append(self.runner.run(chunk)[:real])
        return np.concatenate(outputs)

    def describe(self) -> str:
        """Return a one-line description with the engine file."""
        return '%s, %s' % (super().describe(), os.path.basename(self.engine_path))

    def close(self) -> None:
        """Free the GPU buffers and the engine."""
        if self.memory is not None:
            self.runner = None
            self.memory.close()
            self.memory = None


def resolve_engine(trt, memory, model_dir, prompt_mode: str, grid_points: int, precision: str,
                   min_batch: int, opt_batch: int, max_batch: int,
                   engine_path: Optional[os.PathLike | str] = None,
                   onnx_path: Optional[os.PathLike | str] = None, build: bool = False,
                   workspace_mb: int = 1024) -> Tuple[Path, Dict[str, Any]]:
    """Return (engine file, its key) for this system, building it if allowed and needed.

    Raises FileNotFoundError / EngineMismatchError with the ``sat-seg build-engine`` command
    when the engine is missing or was built for something else and ``build`` is False.
    """
    if onnx_path is None and engine_path is None:
        onnx_path = engine_cache.find_onnx(model_dir, None, prompt_mode, grid_points)
    onnx_sha = engine_cache.file_sha256(onnx_path) if onnx_path else None
    input_size = onnx_input_size(onnx_path) if onnx_path else None
    expected = engine_cache.engine_key(
        trt.__version__, memory.device_name(), memory.compute_capability(), precision,
        input_size or 0, min_batch, opt_batch, max_batch, onnx_sha or '')
    if engine_path is None:
        engine_path = Path(model_dir) / engine_cache.engine_file_name(
            os.path.basename(onnx_path), expected)
    engine_path = Path(engine_path)
    command = build_command(model_dir, onnx_path, precision, min_batch, opt_batch, max_batch)
    if engine_path.is_file():
        found = engine_cache.read_engine_metadata(engine_path)
        if onnx_path is None:  # an explicit engine alone: check what can be checked
            expected.update(input_size=found.get('input_size'),
                            onnx_sha256=found.get('onnx_sha256'))
        problems = engine_cache.engine_mismatches(found, expected)
        if not problems:
            return engine_path, found
        message = 'engine %s does not match this system:\n  %s' % (
            engine_path, '\n  '.join(problems))
        if not build or onnx_path is None:
            raise EngineMismatchError(message + '\nrebuild it with:  ' + command)
        LOG.warning('%s\nrebuilding it', message)
    elif onnx_path is None:
        raise FileNotFoundError('engine_path %s does not exist' % engine_path)
    else:
        others = engine_cache.other_engines(engine_path.parent, os.path.basename(str(onnx_path)))
        if not build:
            hint = ''
            if others:
                hint = ' (engines for other systems: %s)' % ', '.join(p.name for p in others)
            raise FileNotFoundError('no TensorRT engine %s for this system%s; build it with:  %s'
                                    % (engine_path.name, hint, command))
        LOG.info('building TensorRT engine %s (minutes on a Jetson)', engine_path.name)
    build_engine(trt, onnx_path, expected, engine_path, workspace_mb)
    return engine_path, expected


def onnx_input_size(onnx_path) -> int:
    """Return S from an exported graph's file name ``sat_seg_s<S>_...``; 0 if not in the name."""
    name = os.path.basename(str(onnx_path))
    if name.startswith('sat_seg_s'):
        digits = name[len('sat_seg_s'):].split('_')[0]
        if digits.isdigit():
            return int(digits)
    return 0


def build_command(model_dir, onnx_path, precision: str, min_batch: int, opt_batch: int,
                  max_batch: int) -> str:
    """Return the ``sat-seg build-engine`` command line for these settings."""
    command = 'sat-seg build-engine --model %s --precision %s --min-batch %d --opt-batch %d ' \
              '--max-batch %d' % (model_dir, precision, min_batch, opt_batch, max_batch)
    if onnx_path is not None:
        command += ' --onnx %s' % onnx_path
    return command
