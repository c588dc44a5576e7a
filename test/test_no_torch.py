"""The onnxruntime / tensorrt runtime path never imports torch or transformers.

Each check runs in a fresh interpreter whose ``sitecustomize`` installs an import hook that
makes ``import torch`` / ``import transformers`` raise ImportError, as on a Jetson container
with neither installed.
"""

import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

BLOCKER = """
import sys


class BlockTorch:
    # Meta path finder that fails every import of torch / transformers.

    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'torchvision'):
            raise ImportError('%s is blocked: the runtime path must not import it' % name)
        return None


sys.meta_path.insert(0, BlockTorch())
"""

#: Modules of the runtime path (segmenter, tiling, postprocess, backends registry, conversions,
#: node, CLI infer, onnxruntime / tensorrt backends and their engine cache).
RUNTIME_MODULES = [
    'sat_seg_ros.config', 'sat_seg_ros.tiling', 'sat_seg_ros.postprocess',
    'sat_seg_ros.segmenter', 'sat_seg_ros.backends', 'sat_seg_ros.backends.engine_cache',
    'sat_seg_ros.backends.onnxruntime_backend', 'sat_seg_ros.backends.tensorrt_backend',
    'sat_seg_ros.conversions', 'sat_seg_ros.node', 'sat_seg_ros.cli',
    'sat_seg_ros.commands.infer', 'sat_seg_ros.commands.build_engine',
]


@pytest.fixture(scope='module')
def blocked_env(tmp_path_factory):
    """Environment for a subprocess in which torch and transformers cannot be imported."""
    site = tmp_path_factory.mktemp('no_torch_site')
    (site / 'sitecustomize.py').write_text(BLOCKER)
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env['PYTHONPATH'] = os.pathsep.join([str(site), repo] + (
        [env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    return env


@pytest.fixture(scope='module')
def exported_model(exported_model_dir):
    """Return the session's tiny model with its dynamic-batch graph (copy it before writes)."""
    return exported_model_dir


def run_python(code, env):
    return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_blocker_blocks(blocked_env):
    result = run_python('import torch', blocked_env)
    assert result.returncode != 0 and 'blocked' in result.stderr


def test_runtime_modules_import_without_torch(blocked_env):
    code = ('import importlib, sys\n'
            'for name in %r:\n'
            '    importlib.import_module(name)\n'
            "assert not {'torch', 'transformers'} & set(sys.modules)\n" % RUNTIME_MODULES)
    result = run_python(code, blocked_env)
    assert result.returncode == 0, result.stderr


def test_segmenter_with_onnxruntime_without_torch(blocked_env, exported_model):
    code = """
import sys
import numpy as np
from sat_seg_ros.segmenter import Segmenter
segmenter = Segmenter.from_model(%r, backend='onnxruntime', model_size=512)
result = segmenter.segment(np.zeros((200, 300, 3), np.uint8))
assert result.probability.shape == (200, 300), result.probability.shape
assert not {'torch', 'transformers'} & set(sys.modules)
print('ok', segmenter.backend.describe())
""" % str(exported_model)
    result = run_python(code, blocked_env)
    assert result.returncode == 0, result.stderr
    assert 'ok onnxruntime' in result.stdout


def test_cli_infer_with_onnxruntime_without_torch(blocked_env, exported_model, tmp_path):
    image = tmp_path / 'frame.png'
    cv2.imwrite(str(image), np.full((120, 160, 3), 90, np.uint8))
    out = tmp_path / 'out'
    cli = shutil.which('sat-seg', path=os.path.dirname(sys.executable))
    command = [cli] if cli else [sys.executable, '-m', 'sat_seg_ros.cli']
    result = subprocess.run(
        command + ['infer', '--backend', 'onnxruntime', '--model', str(exported_model),
                   '--out', str(out), str(image)],
        env=blocked_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    mask = cv2.imread(str(out / 'frame.png'), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (120, 160)
    assert 'frame.png' in json.loads((out / 'detections.json').read_text())


def _cli():
    cli = shutil.which('sat-seg', path=os.path.dirname(sys.executable))
    return [cli] if cli else [sys.executable, '-m', 'sat_seg_ros.cli']


def _frames(folder, count=3):
    """Write synthetic scenes with satellites (the package's own generator) as PNG files."""
    from sat_seg_training.synth import make_sample

    folder.mkdir()
    for index in range(count):
        sample = make_sample(21, index, positive=True)
        cv2.imwrite(str(folder / ('frame%d.png' % index)), sample.image)
    return folder


@pytest.mark.parametrize('model', ['bundled', 'cnn'])
def test_exported_folder_runs_alone_without_torch(blocked_env, tmp_path, model, cnn_model_dir):
    """Check that `export --out D` gives a folder onnxruntime runs with torch blocked."""
    source = [] if model == 'bundled' else ['--model', str(cnn_model_dir)]
    device_dir = tmp_path / 'device_copy'
    export = subprocess.run(_cli() + ['export', *source, '--out', str(device_dir),
                                      '--static-batch', '0'],
                            capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr
    assert {'config.json', 'sat_seg.json'} <= {p.name for p in device_dir.iterdir()}
    assert not (device_dir / 'model.safetensors').exists()  # weights only with --with-weights
    frames = _frames(tmp_path / 'frames')
    by_ort = subprocess.run(_cli() + ['infer', '--backend', 'onnxruntime', '--model',
                                      str(device_dir), '--out', str(tmp_path / 'ort'),
                                      str(frames)],
                            env=blocked_env, capture_output=True, text=True, timeout=300)
    assert by_ort.returncode == 0, by_ort.stderr
    from sat_seg_ros.imageio import read_image
    from sat_seg_ros.segmenter import Segmenter

    # The torch side runs in this process: `infer` with torch has its own tests.
    reference = Segmenter.from_model(None if model == 'bundled' else cnn_model_dir)
    inter = union = differing = 0
    for index in range(3):
        a = reference.segment(read_image(frames / ('frame%d.png' % index))).mask
        b = cv2.imread(str(tmp_path / 'ort' / ('frame%d.png' % index)), 0) > 0
        inter, union = inter + (a & b).sum(), union + (a | b).sum()
        differing += (a != b).sum()
    assert differing <= 0.001 * 3 * a.size
    if union:
        assert inter / union >= 0.99
    # The probabilities themselves agree too (a mask-free check that cannot pass vacuously).
    code = ('import numpy as np, cv2\n'
            'from sat_seg_ros.segmenter import Segmenter\n'
            "s = Segmenter.from_model(%r, backend='onnxruntime')\n"
            'np.save(%r, s.probability(cv2.imread(%r, 0)))\n'
            % (str(device_dir), str(tmp_path / 'p.npy'), str(frames / 'frame0.png')))
    assert run_python(code, blocked_env).returncode == 0
    expected = reference.probability(cv2.imread(str(frames / 'frame0.png'), 0))
    assert np.abs(np.load(tmp_path / 'p.npy') - expected).max() < 1e-4
    if model == 'bundled':  # the folder carries the named mode and the input colour along
        from sat_seg_ros.config import DEFAULT_MODEL_DIR
        bundled = json.loads((DEFAULT_MODEL_DIR / 'sat_seg.json').read_text())
        assert bundled['input_color'] in ('rgb', 'luma')
        code = ('from sat_seg_ros.segmenter import Segmenter\n'
                "s = Segmenter.from_model(%r, backend='onnxruntime', mode='accurate')\n"
                'c = s.config\n'
                'assert (c.flips, c.tile_overlap, c.input_color) == (4, 64, %r), c\n'
                % (str(device_dir), bundled['input_color']))
        assert run_python(code, blocked_env).returncode == 0
        # ... and the mode multiscale with its fuse_gate and fuse_max_tiles, which run without
        # torch too.
        code = ('import cv2\n'
                'from sat_seg_ros.segmenter import Segmenter\n'
                "s = Segmenter.from_model(%r, backend='onnxruntime', mode='multiscale')\n"
                'c = s.config\n'
                'assert (c.fuse_sizes, c.fuse_gate, c.fuse_max_tiles) == ((768, 1024), %r, %r)\n'
                'r = s.segment(cv2.imread(%r, 0))\n'
                'assert 4 <= r.tiles <= 4 + c.fuse_max_tiles, r.tiles\n'
                % (str(device_dir), bundled['modes']['multiscale']['fuse_gate'],
                   bundled['modes']['multiscale']['fuse_max_tiles'], str(frames / 'frame0.png')))
        assert run_python(code, blocked_env).returncode == 0


def test_export_into_another_models_folder_is_refused(tmp_path, cnn_model_dir, tiny_model_dir):
    target = tmp_path / 'target'
    shutil.copytree(tiny_model_dir, target)
    before = sorted(p.name for p in target.iterdir())
    result = subprocess.run(_cli() + ['export', '--model', str(cnn_model_dir), '--out',
                                      str(target), '--no-verify'],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "holds another model's files" in result.stderr and 'config.json' in result.stderr
    assert sorted(p.name for p in target.iterdir()) == before  # nothing mixed in


def test_torch_backend_on_an_exported_folder_names_the_fix(tmp_path, cnn_model_dir):
    from sat_seg_ros.segmenter import Segmenter
    from sat_seg_training.export import export_model

    export_model(cnn_model_dir, tmp_path / 'd', static_batch=None, verify=False)
    with pytest.raises(FileNotFoundError, match='has no weights.*--backend onnxruntime'):
        Segmenter.from_model(tmp_path / 'd', backend='torch')


def test_node_loads_an_exported_folder_without_torch(blocked_env, cnn_model_dir, tmp_path):
    """The node with backend onnxruntime starts on an exported folder with torch blocked."""
    pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')
    from sat_seg_training.export import export_model

    device_dir = tmp_path / 'device_copy'
    export_model(cnn_model_dir, device_dir, static_batch=None, verify=False)
    env = dict(blocked_env, ROS_DOMAIN_ID='231', PYTHONUNBUFFERED='1',
               RCUTILS_LOGGING_BUFFERED_STREAM='0')
    process = subprocess.Popen(
        [sys.executable, '-m', 'sat_seg_ros.node', '--ros-args', '-p',
         'model_path:=%s' % device_dir, '-p', 'backend:=onnxruntime'],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if 'ready:' in line or 'Traceback' in line or 'error' in line.lower():
                break
        assert any('ready:' in line and 'onnxruntime' in line for line in lines), ''.join(lines)
    finally:
        process.terminate()
        process.wait(timeout=30)
