"""The design card's layout: offline tools in the top-level training/, never run by the runtime."""

import ast
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]
#: Functions of sat_seg_ros that may import the offline package, lazily, and why.
OFFLINE_USES = {
    ('bags.py', 'make_bag'): 'dataset folder -> camera bag (data preparation)',
    ('commands/bench.py', '_export'): 'the benchmark exports its models to ONNX',
}


def _offline_imports(path):
    """Yield (function name or '<module>', line) of every import of sat_seg_training."""
    tree = ast.parse(path.read_text())
    scopes = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(node):
                scopes.setdefault(id(child), node.name)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or '']
        if any(name.split('.')[0] in ('sat_seg_training', 'training') for name in names):
            yield scopes.get(id(node), '<module>'), node.lineno


def test_training_lives_at_the_top_level_and_the_package_holds_none_of_it():
    assert (ROOT / 'training' / 'train.py').is_file()
    assert (ROOT / 'training' / 'commands' / 'train.py').is_file()
    assert not (ROOT / 'sat_seg_ros' / 'training').exists()
    found = {}
    for path in sorted((ROOT / 'sat_seg_ros').rglob('*.py')):
        for scope, line in _offline_imports(path):
            found[(str(path.relative_to(ROOT / 'sat_seg_ros')), scope)] = line
    assert set(found) <= set(OFFLINE_USES), found
    assert all(scope != '<module>' for _, scope in found)


CHECK = """
import sys

class BlockOffline:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'sat_seg_training':
            raise ImportError('%s is offline code: the runtime must not import it' % name)
        return None

sys.meta_path.insert(0, BlockOffline())
import numpy as np
import sat_seg_ros.node, sat_seg_ros.commands.infer, sat_seg_ros.backends.torch_backend
import sat_seg_ros.backends.onnxruntime_backend, sat_seg_ros.backends.tensorrt_backend
from sat_seg_ros.cli import main
from sat_seg_ros.segmenter import Segmenter
segmenter = Segmenter.from_model(sys.argv[1], backend='torch', model_size=256)
segmenter.segment(np.zeros((64, 80), np.uint8))
assert main(['infer', '--model', sys.argv[1], '--out', sys.argv[2], sys.argv[3]]) == 0
assert not [m for m in sys.modules if m.startswith('sat_seg_training')]
print('ok')
"""


def test_runtime_runs_with_the_offline_package_blocked(tiny_model_dir, tmp_path):
    import cv2
    import numpy as np

    image = tmp_path / 'frame.png'
    cv2.imwrite(str(image), np.full((50, 60), 100, np.uint8))
    run = subprocess.run([sys.executable, '-c', CHECK, str(tiny_model_dir),
                          str(tmp_path / 'out'), str(image)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and 'ok' in run.stdout, run.stderr[-3000:]


def test_an_offline_command_without_the_offline_package_says_what_to_install(tmp_path):
    code = ('import sys\n'
            'class Block:\n'
            '    def find_spec(self, name, path=None, target=None):\n'
            "        if name.startswith('sat_seg_training'):\n"
            "            raise ImportError('No module named %r' % name)\n"
            'sys.meta_path.insert(0, Block())\n'
            'from sat_seg_ros.cli import main\n'
            "sys.exit(main(['train', '--help']))\n")
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2
    assert 'needs a package that is not installed' in run.stderr
