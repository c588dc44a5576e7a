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
