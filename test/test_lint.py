"""ament's code style (flake8 with ament's plugins and settings, pep257) over the whole tree."""

from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ('flake8_quotes', 'flake8_import_order', 'flake8_docstrings', 'flake8_builtins',
           'flake8_comprehensions')


def test_flake8_ament_rules():
    for plugin in PLUGINS:  # without them the check would pass while checking less
        pytest.importorskip(plugin, reason='%s is part of the test extras' % plugin)
    names = ('sat_seg_ros', 'training', 'test', 'launch', 'setup.py', 'benchmarks', 'scripts')
    targets = [str(ROOT / name) for name in names if (ROOT / name).exists()]
    run = subprocess.run([sys.executable, '-m', 'flake8', '--config', str(ROOT / 'setup.cfg'),
                          *targets], capture_output=True, text=True)
    assert run.returncode == 0, 'flake8 found:\n' + run.stdout + run.stderr


def test_pep257_docstrings():
    run = subprocess.run(
        [sys.executable, '-m', 'pydocstyle', '--add-ignore',
         'D100,D101,D102,D103,D104,D105,D106,D107,D203,D212,D404', str(ROOT / 'sat_seg_ros'),
         str(ROOT / 'training')],
        capture_output=True, text=True)
    assert run.returncode == 0, 'pep257 found:\n' + run.stdout + run.stderr
