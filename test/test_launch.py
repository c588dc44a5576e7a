"""launch/sat_seg.launch.py: arguments map to real parameters and the installed paths exist.

``launch`` / ``launch_ros`` are not on PyPI: the launch description itself is built only where
they are importable; everything else is checked everywhere.
"""

import configparser
import fnmatch
import importlib.util
from pathlib import Path
import runpy
from unittest import mock

import pytest
import setuptools

from sat_seg_ros import node_config

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILE = REPO / 'launch' / 'sat_seg.launch.py'


@pytest.fixture(scope='module')
def launch_module():
    spec = importlib.util.spec_from_file_location('sat_seg_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def setup_kwargs():
    with mock.patch.object(setuptools, 'setup') as setup:
        runpy.run_path(str(REPO / 'setup.py'), run_name='__main__')
    return setup.call_args.kwargs


def test_arguments_are_described_and_map_to_real_parameters(launch_module):
    names = [name for name, _, _ in launch_module.ARGUMENTS]
    for required in ('params_file', 'image_topic', 'namespace', 'model_path', 'backend'):
        assert required in names
    assert all(description for _, _, description in launch_module.ARGUMENTS)
    for name in launch_module.PARAMETER_ARGUMENTS:
        assert name in names and name in node_config.SPECS
    assert launch_module.NODE_NAME == node_config.NODE_NAME


def test_parameters_keep_the_file_and_only_non_empty_overrides(launch_module):
    default = launch_module.default_params_file()
    assert Path(default).is_file()
    assert node_config.load_params_file(Path(default)) == node_config.defaults()
    assert launch_module.node_parameters('', {'model_path': '', 'backend': ''}) == [default]
    assert launch_module.node_parameters('x.yaml', {'model_path': '/m', 'backend': ''}) == [
        'x.yaml', {'model_path': '/m'}]


def test_install_layout_has_the_executable_launch_config_and_sample(setup_kwargs):
    scripts = setup_kwargs['entry_points']['console_scripts']
    assert 'sat_seg_node = sat_seg_ros.node:main' in scripts
    config = configparser.ConfigParser()
    config.read(REPO / 'setup.cfg')
    assert config['install']['install_scripts'] == '$base/lib/sat_seg_ros'  # for ros2 run
    installed = {(folder, Path(path).name) for folder, paths in setup_kwargs['data_files']
                 for path in paths}
    assert ('share/sat_seg_ros/launch', 'sat_seg.launch.py') in installed
    assert ('share/sat_seg_ros/config', 'sat_seg.yaml') in installed
    assert ('share/sat_seg_ros/config', 'fastdds_large_frames.xml') in installed
    assert ('share/ament_index/resource_index/packages', 'sat_seg_ros') in installed
    # The sample bag and the bundled model are namespace packages with file patterns for all.
    patterns = setup_kwargs['package_data']['']
    for folder in ('data/sample_bag', 'models/default'):
        assert 'sat_seg_ros.' + folder.replace('/', '.') in setup_kwargs['packages']
        for path in (REPO / 'sat_seg_ros' / folder).iterdir():
            assert any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns), path


def test_launch_description_where_launch_ros_is_installed(launch_module):
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (not on PyPI)')
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument

    description = launch_module.generate_launch_description()
    declared = [entity.name for entity in description.entities
                if isinstance(entity, DeclareLaunchArgument)]
    assert declared == [name for name, _, _ in launch_module.ARGUMENTS]
    context = LaunchContext()
    for entity in description.entities:
        entity.visit(context)
    nodes = launch_module._launch_setup(context)
    assert len(nodes) == 1
