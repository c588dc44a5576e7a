"""Reliability that adapts to the publishers (as rosbag2 does), with explicit overrides."""

import random

import pytest

from sat_seg_ros import qos


@pytest.mark.parametrize('mode, offered, expected', [
    ('auto', [], 'best_effort'),                       # nobody yet: compatible with anyone
    ('auto', ['reliable'], 'reliable'),                # big frames survive across processes
    ('auto', ['reliable', 'reliable'], 'reliable'),
    ('auto', ['reliable', 'best_effort'], 'best_effort'),  # else the BE camera gets nothing
    ('auto', ['unknown'], 'best_effort'),
    ('reliable', ['best_effort'], 'reliable'),         # explicit overrides win
    ('best_effort', ['reliable'], 'best_effort'),
])
def test_choose_reliability(mode, offered, expected):
    assert qos.choose_reliability(mode, offered) == expected


def test_bad_mode_and_profile_values_are_named():
    with pytest.raises(ValueError, match="qos.reliability='sometimes'"):
        qos.choose_reliability('sometimes', [])
    pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')
    with pytest.raises(ValueError, match='qos.depth=0'):
        qos.image_qos('reliable', 0)
    with pytest.raises(ValueError, match="reliability='auto'"):
        qos.image_qos('auto', 1)


def test_offered_reliabilities_read_the_real_graph():
    rclpy = pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')
    from rclpy.qos import qos_profile_sensor_data, ReliabilityPolicy
    from sensor_msgs.msg import Image

    assert qos.reliability_name(ReliabilityPolicy.RELIABLE) == 'reliable'
    assert qos.reliability_name(ReliabilityPolicy.BEST_EFFORT) == 'best_effort'
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=random.randint(40, 99),
               signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    try:
        node = rclpy.create_node('qos_probe', context=context)
        node.create_publisher(Image, '/probe', qos.image_qos('reliable', 1))
        assert qos.offered_reliabilities(node, '/probe') == ['reliable']
        node.create_publisher(Image, '/probe', qos_profile_sensor_data)
        offered = qos.offered_reliabilities(node, '/probe')
        assert sorted(offered) == ['best_effort', 'reliable']
        assert qos.choose_reliability('auto', offered) == 'best_effort'
        assert qos.offered_reliabilities(node, '/probe', ignore_node='qos_probe') == []
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_large_frame_profile_is_used_unless_the_user_chose_otherwise():
    path = qos.fastdds_profile_path()
    assert path is not None and path.name == 'fastdds_large_frames.xml'
    environ = {}
    assert qos.use_large_frame_profile(environ) == str(path)
    assert environ['FASTDDS_DEFAULT_PROFILES_FILE'] == str(path)
    mine = {'FASTRTPS_DEFAULT_PROFILES_FILE': '/etc/my_profile.xml'}
    assert qos.use_large_frame_profile(mine) == '/etc/my_profile.xml'
    assert 'FASTDDS_DEFAULT_PROFILES_FILE' not in mine
    cyclone = {'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'}
    assert qos.use_large_frame_profile(cyclone) is None and len(cyclone) == 1
    import xml.etree.ElementTree as ElementTree
    root = ElementTree.parse(path).getroot()
    segment = root.find('.//{http://www.eprosima.com}segment_size')
    assert int(segment.text) >= 2048 * 2048 * 3 * 2  # two 2048x2048 rgb8 frames
