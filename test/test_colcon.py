"""The ROS install layout, for real: ``colcon build`` of this package into a temporary folder."""

import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _colcon():
    found = shutil.which('colcon') or shutil.which('colcon', path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip('colcon is not installed (pip install colcon-common-extensions: test extra)')
    return found


def test_colcon_build_installs_executables_launch_config_and_data(tmp_path):
    colcon = _colcon()
    run = subprocess.run(
        [colcon, '--log-base', str(tmp_path / 'log'), 'build', '--base-paths', str(ROOT),
         '--build-base', str(tmp_path / 'build'), '--install-base', str(tmp_path / 'install'),
         '--packages-select', 'sat_seg_ros'],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    prefix = tmp_path / 'install' / 'sat_seg_ros'
    for executable in ('sat_seg_node', 'sat-seg'):  # where `ros2 run sat_seg_ros ...` looks
        path = prefix / 'lib' / 'sat_seg_ros' / executable
        assert path.is_file() and os.access(path, os.X_OK), executable
    share = prefix / 'share' / 'sat_seg_ros'
    for name in ('package.xml', 'launch/sat_seg.launch.py', 'config/sat_seg.yaml'):
        assert (share / name).is_file(), name
    index = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'sat_seg_ros'
    assert index.is_file()
    site = next(prefix.glob('lib/python3*/site-packages'))
    assert (site / 'sat_seg_ros' / 'data' / 'sample_bag' / 'metadata.yaml').is_file()
    # The installed CLI runs from the install space alone.
    env = dict(os.environ, PYTHONPATH=str(site))
    run = subprocess.run([sys.executable, str(prefix / 'lib' / 'sat_seg_ros' / 'sat-seg'),
                          '--version'], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0 and 'sat-seg' in run.stdout, run.stderr
    where = 'import sat_seg_ros; print(sat_seg_ros.__file__)'
    check = subprocess.run([sys.executable, '-c', where], capture_output=True, text=True,
                           env=env, cwd=tmp_path)
    assert check.stdout.strip().startswith(str(site)), check.stdout + check.stderr
    # The offline tools (top-level training/) install beside it, and every command loads.
    assert (site / 'sat_seg_training' / 'train.py').is_file()
    assert (site / 'sat_seg_training' / 'commands' / 'synth.py').is_file()
    from sat_seg_ros.cli import COMMANDS

    for name in COMMANDS:
        run = subprocess.run([sys.executable, str(prefix / 'lib' / 'sat_seg_ros' / 'sat-seg'),
                              name, '--help'], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=120)
        assert run.returncode == 0 and 'usage: sat-seg ' + name in run.stdout, (
            name, run.stderr[-2000:])
