"""Launch sat_seg_node.

    ros2 launch sat_seg_ros sat_seg.launch.py image_topic:=/camera/image_raw
    ros2 launch sat_seg_ros sat_seg.launch.py params_file:=my.yaml namespace:=left model_path:=/m

Arguments left empty (model_path, backend, device) keep the value in ``params_file``; the others
override it. ``launch`` and ``launch_ros`` are imported only when the description is generated,
so the argument table can be checked where ROS 2 launch is not installed.
"""

import os

PACKAGE = 'sat_seg_ros'
EXECUTABLE = 'sat_seg_node'
NODE_NAME = 'sat_seg'

#: (name, default, description). Names after params_file/image_topic/namespace are parameters.
ARGUMENTS = (
    ('params_file', '',
     'Parameter file (ROS 2 YAML); empty: the installed config/sat_seg.yaml.'),
    ('image_topic', '/camera/image',
     'Camera topic (sensor_msgs/Image) remapped onto the node\'s "image" input.'),
    ('namespace', '', 'Namespace for the node and its topics (e.g. a camera name).'),
    ('model_path', '',
     'Model folder (SamModel files + sat_seg.json); empty: params_file value (empty there: the '
     'bundled default model).'),
    ('backend', '', 'torch | onnxruntime | tensorrt; empty: the params_file value.'),
    ('device', '', 'cpu | cuda | cuda:N; empty: the params_file value.'),
)
PARAMETER_ARGUMENTS = ('model_path', 'backend', 'device')


def default_params_file():
    """Return config/sat_seg.yaml from the installed share folder, else from the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = os.path.join(get_package_share_directory(PACKAGE), 'config', 'sat_seg.yaml')
        if os.path.isfile(installed):
            return installed
    except (ImportError, LookupError, OSError, ValueError):
        pass
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'config',
                        'sat_seg.yaml')


def node_parameters(params_file, overrides):
    """Return the node's ``parameters`` list: the file, then the non-empty overrides."""
    chosen = {name: value for name, value in overrides.items() if value != ''}
    return [params_file or default_params_file()] + ([chosen] if chosen else [])


def _launch_setup(context):
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def value(name):
        return LaunchConfiguration(name).perform(context)

    return [Node(
        package=PACKAGE, executable=EXECUTABLE, name=NODE_NAME, namespace=value('namespace'),
        parameters=node_parameters(value('params_file'),
                                   {name: value(name) for name in PARAMETER_ARGUMENTS}),
        remappings=[('image', value('image_topic'))], output='screen', emulate_tty=True)]


def generate_launch_description():
    """Return the LaunchDescription: the declared arguments and the node."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    declared = [DeclareLaunchArgument(name, default_value=default, description=description)
                for name, default, description in ARGUMENTS]
    return LaunchDescription(declared + [OpaqueFunction(function=_launch_setup)])
