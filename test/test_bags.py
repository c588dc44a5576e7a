"""rosbag2 round trips: ``bag make`` -> ``bag run`` -> read back (mcap, sqlite3); ``bag play``."""

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from sat_seg_ros import bags
from sat_seg_ros.cli import main as sat_seg
from sat_seg_training.dataset import DatasetWriter


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """Three frames: a gray positive with a mask, an empty gray one, a colour positive."""
    root = tmp_path_factory.mktemp('dataset')
    rng = np.random.default_rng(0)
    mask = np.zeros((48, 64), bool)
    mask[10:20, 30:44] = True
    with DatasetWriter(root) as writer:
        writer.add('a.png', rng.integers(0, 255, (48, 64), dtype=np.uint8), mask=mask)
        writer.add('b.png', rng.integers(0, 255, (48, 64), dtype=np.uint8))
        writer.add('c.png', rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
                   bbox_xywh=(1, 2, 3, 4))
    return root


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_make_run_read_back(dataset, tiny_model_dir, tmp_path, storage, capsys):
    camera = tmp_path / 'camera'
    assert sat_seg(['bag', 'make', '--dataset', str(dataset), '--out', str(camera),
                    '--rate', '4', '--storage', storage]) == 0
    topics = bags.bag_topics(camera)
    assert topics[bags.IMAGE_TOPIC] == (bags.IMAGE_TYPE, 3)
    # Truth known for a (mask) and b (no satellite); c has a box but no mask file.
    assert topics[bags.TRUE_MASK_TOPIC] == (bags.COMPRESSED_TYPE, 2)
    frames = list(bags.read_messages(camera, [bags.IMAGE_TOPIC]))
    assert [msg.encoding for _, _, _, msg in frames] == ['mono8', 'mono8', 'rgb8']
    stamps = [bags.stamp_ns(msg.header) for _, _, _, msg in frames]
    assert stamps == [bags.FIRST_STAMP_NS + i * 250_000_000 for i in range(3)]
    assert [timestamp for _, _, timestamp, _ in frames] == stamps
    truth = {bags.stamp_ns(msg.header): bags.decode_png_message(msg)
             for _, _, _, msg in bags.read_messages(camera, [bags.TRUE_MASK_TOPIC])}
    assert truth[stamps[0]][10:20, 30:44].all() and truth[stamps[0]].sum() == 140
    assert not truth[stamps[1]].any()

    out = tmp_path / 'out'
    assert sat_seg(['bag', 'run', '--bag', str(camera), '--out', str(out), '--model',
                    str(tiny_model_dir), '--model-size', '256', '--storage', storage,
                    '--overlay']) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.rindex('{\n'):])
    assert (summary['frames'], summary['rejected']) == (3, 0)
    topics = bags.bag_topics(out)
    expected = ((bags.MASK_TOPIC, bags.IMAGE_TYPE), (bags.DETECTED_TOPIC, bags.BOOL_TYPE),
                (bags.DETECTIONS_TOPIC, bags.DETECTIONS_TYPE),
                (bags.OVERLAY_TOPIC, bags.IMAGE_TYPE))
    for topic, msgtype in expected:
        assert topics[topic] == (msgtype, 3), topic
    for _, _, timestamp, msg in bags.read_messages(out, [bags.MASK_TOPIC]):
        assert bags.stamp_ns(msg.header) == timestamp and timestamp in stamps
        assert (msg.height, msg.width, msg.encoding) == (48, 64, 'mono8')
        assert set(np.unique(msg.data).tolist()) <= {0, 255}
    for _, _, timestamp, msg in bags.read_messages(out, [bags.DETECTIONS_TOPIC]):
        assert bags.stamp_ns(msg.header) == timestamp


def test_existing_output_is_refused_and_bad_storage_named(dataset, tmp_path):
    camera = tmp_path / 'camera'
    camera.mkdir()
    with pytest.raises(FileExistsError, match='camera exists'):
        bags.make_bag(dataset, camera)
    with pytest.raises(ValueError, match="storage='rosbag1'"):
        bags.make_bag(dataset, tmp_path / 'other', storage='rosbag1')
    assert not list(tmp_path.glob('.other*'))  # nothing half-written left behind


def test_interrupted_write_leaves_no_bag(tmp_path):
    target = tmp_path / 'bag'
    with pytest.raises(RuntimeError):
        with bags.BagWriter(target) as writer:
            writer.write(bags.DETECTED_TOPIC, bags.BOOL_TYPE,
                         bags.typestore().types[bags.BOOL_TYPE](data=True), 1)
            raise RuntimeError('interrupted')
    assert not target.exists() and not list(tmp_path.iterdir())


def test_run_rejects_malformed_frames_and_goes_on(tmp_path, tiny_model_dir):
    from sat_seg_ros.segmenter import Segmenter

    camera = tmp_path / 'camera'
    with bags.BagWriter(camera) as writer:
        for index in range(2):
            header = bags.header(bags.FIRST_STAMP_NS + index, 'cam')
            msg = bags.image_message(np.zeros((16, 16), np.uint8), header)
            if index == 0:
                msg.step = 3
            writer.write(bags.IMAGE_TOPIC, bags.IMAGE_TYPE, msg, bags.FIRST_STAMP_NS + index)
    segmenter = Segmenter.from_model(tiny_model_dir, model_size=256)
    summary = bags.run_bag(camera, tmp_path / 'out', segmenter)
    assert (summary['frames'], summary['rejected']) == (1, 1)


def test_play_publishes_the_frames_over_dds_with_their_stamps(dataset, tmp_path):
    rclpy = pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')
    from sensor_msgs.msg import Image

    from sat_seg_ros import qos

    camera = tmp_path / 'camera'
    bags.make_bag(dataset, camera, rate_hz=20.0)
    domain = random.randint(40, 99)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain,
               signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = rclpy.create_node('play_checker', context=context)
    got = []
    node.create_subscription(Image, '/replayed', got.append, qos.image_qos('reliable', 10))
    log = tmp_path / 'published.json'
    player = subprocess.Popen(
        [sys.executable, '-m', 'sat_seg_ros.cli', 'bag', 'play', '--bag', str(camera),
         '--remap', '/replayed', '--wait-for-subscribers', '1', '--publish-log', str(log)],
        env=dict(os.environ, ROS_DOMAIN_ID=str(domain)), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 60
        while player.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        end = time.monotonic() + 1.0
        while len(got) < 3 and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        output = player.communicate(timeout=10)[0]
    finally:
        if player.poll() is None:
            player.kill()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert player.returncode == 0, output
    assert [bags.stamp_ns(msg.header) for msg in got] == [
        bags.FIRST_STAMP_NS + i * 50_000_000 for i in range(3)]
    assert [msg.encoding for msg in got] == ['mono8', 'mono8', 'rgb8']
    assert len(json.loads(log.read_text())) == 3
