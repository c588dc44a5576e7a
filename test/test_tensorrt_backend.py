"""TensorRT backend and engine cache.

Without a GPU, the backend runs against a stand-in of the TensorRT 8.x (bindings) and 10.x
(named tensors) Python APIs whose "engine" executes the ONNX graph with ONNX Runtime on host
buffers: this checks the build calls, the profile, the cache names and metadata, the mismatch
handling, batching and the I/O wiring. ``test_real_tensorrt_*`` runs the real thing where
TensorRT, pycuda / cuda-python and a GPU exist and is skipped with the reason elsewhere.
"""

import json
import shutil
import types

import numpy as np
import pytest

from sat_seg_ros.backends import create_backend, INPUT_NAME, OUTPUT_NAME
from sat_seg_ros.backends import engine_cache
from sat_seg_ros.backends import tensorrt_backend


@pytest.fixture(scope='module')
def model_dir(exported_model_dir):
    """Return the session's tiny model with its dynamic-batch graph (copy it before writes)."""
    return exported_model_dir


class FakeMemory:
    """Host 'device' memory with the interface of PycudaMemory / CudaPythonMemory."""

    library = 'fake'
    stream_handle = 7

    def __init__(self):
        self.buffers = {}
        self.closed = False

    def device_name(self):
        return 'NVIDIA Tegra X2'

    def compute_capability(self):
        return '6.2'

    def alloc(self, nbytes):
        address = 4096 * (len(self.buffers) + 1)
        self.buffers[address] = bytearray(nbytes)
        return address

    def to_device(self, address, host):
        data = host.tobytes()
        self.buffers[address][:len(data)] = data

    def to_host(self, host, address):
        host[...] = np.frombuffer(bytes(self.buffers[address][:host.nbytes]),
                                  host.dtype).reshape(host.shape)

    def synchronize(self):
        pass

    def close(self):
        self.closed = True


def fake_tensorrt(version, memory, calls):
    """Return a module with the parts of the TensorRT Python API the backend uses."""
    import onnxruntime

    tensor_api = int(version.split('.')[0]) >= 10 or version.startswith('8.5')

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Network:
        onnx = None

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse(self, data):
            self.network.onnx = data
            return True

    class Profile:
        def set_shape(self, name, minimum, optimum, maximum):
            calls['profile'] = (name, minimum, optimum, maximum)

    class Config:
        def __init__(self):
            self.flags = []
            if tensor_api:
                self.set_memory_pool_limit = lambda pool, size: calls.update(pool=size)

        def __setattr__(self, name, value):
            if name == 'max_workspace_size':
                assert not tensor_api, 'max_workspace_size is gone from TensorRT 10'
                calls['max_workspace_size'] = value
            object.__setattr__(self, name, value)

        def set_flag(self, flag):
            self.flags.append(flag)

        def add_optimization_profile(self, profile):
            calls['profiles'] = calls.get('profiles', 0) + 1

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls['network_flags'] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls['builds'] = calls.get('builds', 0) + 1
            calls['fp16'] = 'FP16' in config.flags
            return network.onnx

    class Engine:
        def __init__(self, data):
            self.session = onnxruntime.InferenceSession(data,
                                                        providers=['CPUExecutionProvider'])
            self.shapes = {INPUT_NAME: (-1, 3, 256, 256), OUTPUT_NAME: (-1, 64, 64)}
            self.names = [INPUT_NAME, OUTPUT_NAME]
            if tensor_api:
                self.num_io_tensors = 2
                self.get_tensor_name = self.names.__getitem__
                self.get_tensor_shape = self.shapes.__getitem__
            else:
                self.num_bindings = 2

        def get_binding_index(self, name):
            return self.names.index(name) if name in self.names else -1

        def get_binding_shape(self, index):
            return self.shapes[self.names[index]]

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine = engine
            self.addresses = {}
            self.input_shape = None

        # TensorRT 10 / 8.5+ API
        def set_tensor_address(self, name, address):
            assert tensor_api
            self.addresses[name] = address

        def set_input_shape(self, name, shape):
            assert tensor_api and name == INPUT_NAME
            self.input_shape = tuple(shape)

        def execute_async_v3(self, stream):
            assert tensor_api and stream == memory.stream_handle
            return self._run(self.addresses[INPUT_NAME], self.addresses[OUTPUT_NAME])

        # TensorRT 8.x bindings API
        def set_binding_shape(self, index, shape):
            assert not tensor_api and index == 0
            self.input_shape = tuple(shape)

        def execute_async_v2(self, bindings, stream_handle):
            assert not tensor_api and stream_handle == memory.stream_handle
            return self._run(bindings[0], bindings[1])

        def _run(self, input_address, output_address):
            calls['batches'] = calls.get('batches', []) + [self.input_shape[0]]
            pixels = np.empty(self.input_shape, np.float32)
            memory.to_host(pixels, input_address)
            logits = self.engine.session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]
            memory.to_device(output_address, np.ascontiguousarray(logits))
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine(data)

    flags = types.SimpleNamespace() if version.startswith('10') else \
        types.SimpleNamespace(EXPLICIT_BATCH=0)
    return types.SimpleNamespace(
        __version__=version, Logger=Logger, Builder=Builder, OnnxParser=Parser, Runtime=Runtime,
        NetworkDefinitionCreationFlag=flags, BuilderFlag=types.SimpleNamespace(FP16='FP16'),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE='WORKSPACE'))


@pytest.fixture
def fake_gpu(monkeypatch):
    """Install a fake TensorRT of a given version; return (install(version), memory, calls)."""
    memory = FakeMemory()
    calls = {}

    def install(version):
        calls.clear()
        module = fake_tensorrt(version, memory, calls)
        monkeypatch.setattr(tensorrt_backend, 'import_tensorrt', lambda: module)
        return module

    monkeypatch.setattr(tensorrt_backend, 'open_device_memory', lambda index, library: memory)
    return install, memory, calls


def tiles(count):
    return np.random.default_rng(0).uniform(0, 255, (count, 256, 256, 3)).astype(np.float32)


@pytest.mark.parametrize('version', ['8.2.1.8', '8.5.2.2', '10.3.0'])
def test_build_cache_and_run_with_each_api(model_dir, fake_gpu, version, tmp_path):
    install, memory, calls = fake_gpu
    folder = tmp_path / 'model'
    shutil.copytree(model_dir, folder)
    install(version)
    backend = create_backend('tensorrt', folder, device='cuda', build=True, max_batch=4,
                             precision='fp16')
    engine = folder / ('sat_seg_s256_grid4_dyn_b1-4-4_fp16_nvidia-tegra-x2_sm62_trt%s.engine'
                       % version)
    assert backend.engine_path == str(engine) and engine.is_file()
    meta = json.loads(engine_cache.metadata_path(engine).read_text())
    assert meta['tensorrt_version'] == version and meta['compute_capability'] == '6.2'
    assert meta['onnx_sha256'] == engine_cache.file_sha256(
        folder / 'sat_seg_s256_grid4_dyn.onnx')
    assert calls['profile'] == (INPUT_NAME, (1, 3, 256, 256), (4, 3, 256, 256),
                                (4, 3, 256, 256))
    assert calls['fp16'] and calls['builds'] == 1
    assert calls['network_flags'] == (0 if version.startswith('10') else 1)
    assert ('pool' in calls) == (version != '8.2.1.8')
    assert ('max_workspace_size' in calls) == (version == '8.2.1.8')

    batch = tiles(5)
    logits = backend.predict(batch)
    assert calls['batches'] == [4, 1]
    reference = create_backend('onnxruntime', folder).predict(batch)
    np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-6)

    # A second start reuses the cached engine instead of building again.
    create_backend('tensorrt', folder, device='cuda', max_batch=4, precision='fp16')
    assert calls['builds'] == 1
    backend.close()
    assert memory.closed


def test_missing_engine_names_the_build_command(model_dir, fake_gpu, tmp_path):
    install, _, _ = fake_gpu
    folder = tmp_path / 'model'
    shutil.copytree(model_dir, folder)
    install('8.2.1.8')
    create_backend('tensorrt', folder, device='cuda', build=True, max_batch=2, precision='fp32')
    install('8.4.1.5')
    with pytest.raises(FileNotFoundError) as error:
        create_backend('tensorrt', folder, device='cuda', max_batch=2, precision='fp32')
    message = str(error.value)
    assert 'sat-seg build-engine --model %s --precision fp32' % folder in message
    assert 'trt8.2.1.8.engine' in message  # the engine for the other version is named


def test_mismatch_is_explained_and_rebuilt_where_allowed(model_dir, fake_gpu, tmp_path):
    import onnx

    install, _, calls = fake_gpu
    folder = tmp_path / 'model'
    shutil.copytree(model_dir, folder)
    install('8.2.1.8')
    create_backend('tensorrt', folder, device='cuda', build=True, max_batch=2)
    engine = next(folder.glob('*.engine'))

    # An explicit engine from another TensorRT version: refused, with the differences.
    install('10.3.0')
    with pytest.raises(tensorrt_backend.EngineMismatchError) as error:
        create_backend('tensorrt', folder, device='cuda', max_batch=2, engine_path=engine)
    assert "tensorrt_version: engine has '8.2.1.8', this system needs '10.3.0'" \
        in str(error.value)

    # The graph was re-exported since the engine was built: refused, then rebuilt.
    install('8.2.1.8')
    graph_path = folder / 'sat_seg_s256_grid4_dyn.onnx'
    graph = onnx.load(str(graph_path))
    graph.metadata_props.add(key='sat_seg.note', value='re-exported')
    onnx.save(graph, str(graph_path))
    with pytest.raises(tensorrt_backend.EngineMismatchError, match='onnx_sha256'):
        create_backend('tensorrt', folder, device='cuda', max_batch=2)
    backend = create_backend('tensorrt', folder, device='cuda', max_batch=2, build=True)
    assert calls['builds'] == 1 and backend.engine_path == str(engine)


def test_build_engine_command(model_dir, fake_gpu, tmp_path, capsys):
    from sat_seg_ros.cli import main

    install, _, calls = fake_gpu
    folder = tmp_path / 'model'
    shutil.copytree(model_dir, folder)
    install('8.2.1.8')
    assert main(['build-engine', '--model', str(folder), '--max-batch', '4',
                 '--opt-batch', '2', '--precision', 'fp32']) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed['engine'].endswith('_b1-2-4_fp32_nvidia-tegra-x2_sm62_trt8.2.1.8.engine')
    assert printed['metadata']['opt_batch'] == 2 and calls['builds'] == 1
    assert main(['build-engine', '--model', str(folder), '--max-batch', '4',
                 '--opt-batch', '2', '--precision', 'fp32']) == 0
    assert calls['builds'] == 1  # up to date: reused
    assert main(['build-engine', '--model', str(folder), '--max-batch', '4',
                 '--opt-batch', '2', '--precision', 'fp32', '--force']) == 0
    assert calls['builds'] == 2


def test_tensorrt_needs_a_gpu_device(model_dir, fake_gpu):
    install, _, _ = fake_gpu
    install('8.2.1.8')
    with pytest.raises(ValueError, match="'cuda'"):
        create_backend('tensorrt', model_dir, device='cpu')


def test_engine_cache_names_and_keys(tmp_path):
    key = engine_cache.engine_key('8.2.1.8', 'NVIDIA Tegra X2', '6.2', 'fp16', 1024, 1, 8, 16,
                                  'ab' * 32)
    name = engine_cache.engine_file_name('sat_seg_s1024_box_dyn.onnx', key)
    assert name == 'sat_seg_s1024_box_dyn_b1-8-16_fp16_nvidia-tegra-x2_sm62_trt8.2.1.8.engine'
    path = tmp_path / name
    engine_cache.write_engine_metadata(path, key, {'onnx': 'x.onnx'})
    assert engine_cache.read_engine_metadata(path) == dict(key, onnx='x.onnx')
    other = dict(key, gpu_name='Orin', precision='fp32')
    assert engine_cache.engine_mismatches(other, key) == [
        "gpu_name: engine has 'Orin', this system needs 'NVIDIA Tegra X2'",
        "precision: engine has 'fp32', this system needs 'fp16'"]
    with pytest.raises(ValueError, match='precision'):
        engine_cache.engine_key('8.2', 'x', '6.2', 'int8', 256, 1, 1, 1, '')
    with pytest.raises(ValueError, match='min <= opt <= max'):
        engine_cache.engine_key('8.2', 'x', '6.2', 'fp16', 256, 4, 2, 8, '')
    with pytest.raises(FileNotFoundError, match='no metadata'):
        engine_cache.read_engine_metadata(tmp_path / 'other.engine')


def test_find_onnx_prefers_dynamic(tmp_path):
    for name in ('sat_seg_s256_grid4_b16.onnx', 'sat_seg_s256_grid4_dyn.onnx',
                 'sat_seg_s256_box_dyn.onnx'):
        (tmp_path / name).write_bytes(b'')
    assert engine_cache.find_onnx(tmp_path, 256, 'grid', 4).name == \
        'sat_seg_s256_grid4_dyn.onnx'
    (tmp_path / 'sat_seg_s256_grid4_dyn.onnx').unlink()
    assert engine_cache.find_onnx(tmp_path, None, 'grid', 4).name == \
        'sat_seg_s256_grid4_b16.onnx'
    with pytest.raises(FileNotFoundError, match='--prompt-mode none'):
        engine_cache.find_onnx(tmp_path, 256, 'none', 4)


def _real_gpu_or_skip():
    try:
        trt = tensorrt_backend.import_tensorrt()
        memory = tensorrt_backend.open_device_memory(0)
    except Exception as error:  # noqa: B902 - any failure means: no usable TensorRT GPU here
        pytest.skip('needs TensorRT, pycuda or cuda-python and an NVIDIA GPU: %s' % error)
    memory.close()
    return trt


@pytest.mark.parametrize('precision,tolerance', [('fp32', 1e-3), ('fp16', 5e-2)])
def test_real_tensorrt_matches_onnxruntime(model_dir, tmp_path, precision, tolerance):
    _real_gpu_or_skip()
    folder = tmp_path / 'model'
    shutil.copytree(model_dir, folder)
    backend = create_backend('tensorrt', folder, device='cuda', build=True, max_batch=4,
                             precision=precision)
    batch = tiles(5)
    logits = backend.predict(batch)
    reference = create_backend('onnxruntime', folder).predict(batch)
    backend.close()
    assert np.abs(logits - reference).max() < tolerance
