"""The node survives malformed frames: >= 1,000 of every kind, then it still answers a good one.

A real SatSegNode (rclpy, Fast DDS, a small CNN-encoder SAM) in this process. Every malformed
``sensor_msgs/Image`` goes through the worker's own frame path (``_process``: conversion,
Segmenter, publishing), so none is lost to the newest-frame policy, and a share of them is also
published over DDS into the subscription. Afterwards a valid frame sent over DDS must come back
as a mask with its stamp, and no frame may have failed with anything but a clean rejection.
"""

import array
import random
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')

from rclpy.parameter import Parameter  # noqa: E402, I100
from sensor_msgs.msg import Image  # noqa: E402

from sat_seg_ros import conversions, qos  # noqa: E402

DOMAIN_ID = random.randint(100, 160)
KINDS = ('truncated', 'oversized', 'short_step', 'odd_step', 'huge_step', 'zero_size',
         'one_pixel', 'nan_inf', 'big_endian16', 'huge_claim', 'unknown_encoding',
         'random_fields')


def malformed(kind, rng):
    """Return a sensor_msgs/Image that is broken (or merely odd) in the way ``kind`` names."""
    msg = Image()
    height, width = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    encoding = str(rng.choice(sorted(conversions.ENCODINGS)))
    layout = conversions.ENCODINGS[encoding]
    itemsize = np.dtype(layout.dtype).itemsize
    step = width * layout.channels * itemsize
    size = step * height
    data = rng.integers(0, 256, size, dtype=np.uint8)
    if kind == 'truncated':
        data = data[:int(rng.integers(0, max(1, size)))]
    elif kind == 'oversized':
        data = np.concatenate([data, rng.integers(0, 256, int(rng.integers(1, 500)),
                                                  dtype=np.uint8)])
    elif kind == 'short_step':
        step = int(rng.integers(0, step))
    elif kind == 'odd_step':
        step = step + (1 if itemsize > 1 else 0) + int(rng.integers(0, 3)) * itemsize
        data = rng.integers(0, 256, step * height, dtype=np.uint8)
    elif kind == 'huge_step':
        step = 2 ** 32 - 1
    elif kind == 'zero_size':
        height, width = (0, width) if rng.random() < 0.5 else (height, 0)
    elif kind == 'one_pixel':
        height = width = 1
        step = layout.channels * itemsize
        data = rng.integers(0, 256, step, dtype=np.uint8)
    elif kind == 'nan_inf':
        encoding, step = '32FC1', width * 4
        values = rng.normal(0.5, 2.0, (height, width)).astype(np.float32)
        values[rng.random((height, width)) < 0.3] = np.nan
        values[rng.random((height, width)) < 0.1] = np.inf
        values[rng.random((height, width)) < 0.1] = -np.inf
        data = values.view(np.uint8).reshape(-1)
    elif kind == 'big_endian16':
        encoding, step = 'mono16', width * 2
        msg.is_bigendian = 1
        data = rng.integers(0, 65535, (height, width)).astype('>u2').view(np.uint8).reshape(-1)
    elif kind == 'huge_claim':
        height, width = 2 ** 31 - 1, 2 ** 31 - 1
        step = 2 ** 32 - 1
        data = data[:64]
    elif kind == 'unknown_encoding':
        encoding = str(rng.choice(['', 'foo', 'RGB8', 'rgb8 ', 'bayer_rggb8', '8UC5', '64FC1',
                                   'yuv422', 'jpeg', 'mono8\x00']))
    elif kind == 'random_fields':
        height, width = int(rng.integers(0, 3000)), int(rng.integers(0, 3000))
        step = int(rng.integers(0, 2 ** 32))
        data = rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8)
        msg.is_bigendian = int(rng.integers(0, 2))
    msg.height, msg.width, msg.step, msg.encoding = height, width, step, encoding
    msg.data = array.array('B', data.tobytes())
    return msg


@pytest.fixture(scope='module')
def in_process_node(cnn_model_dir):
    from sat_seg_ros.node import SatSegNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID,
               signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = SatSegNode(context=context, parameter_overrides=[
        Parameter('model_path', value=str(cnn_model_dir)), Parameter('model_size', value=256),
        Parameter('reject_log_period_s', value=60.0),
        Parameter('qos.reliability', value='reliable'), Parameter('qos.depth', value=10)])
    client = rclpy.create_node('fuzz_client', context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(client)
    yield node, client, executor
    node.close()
    node.destroy_node()
    client.destroy_node()
    rclpy.try_shutdown(context=context)


def spin_until(executor, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        executor.spin_once(timeout_sec=0.02)
    return predicate()


def test_node_survives_malformed_frames_and_still_answers(in_process_node):
    node, client, executor = in_process_node
    rng = np.random.default_rng(20261201)
    messages = [malformed(KINDS[index % len(KINDS)], rng) for index in range(1200)]
    escaped = []
    for index, msg in enumerate(messages):
        msg.header.stamp.sec = 10_000 + index
        try:
            node._process(msg, time.monotonic())  # the worker's frame path, every frame
        except Exception as error:  # noqa: B902 - what the test looks for
            escaped.append((KINDS[index % len(KINDS)], type(error).__name__, str(error)[:120]))
    assert escaped == [], escaped[:10]
    counts = dict(node.stats.counts)
    assert counts['rejected'] >= 800  # most kinds must be refused, cleanly
    assert counts['processed'] >= 100  # one-pixel, NaN/inf and big-endian frames are served
    assert counts['failed'] == 0
    nan_frame = malformed('nan_inf', rng)
    probability = node.segmenter.probability(conversions.image_to_frame(nan_frame))
    assert np.isfinite(probability).all()

    # Over DDS, through the subscription and the worker thread, too.
    publisher = client.create_publisher(Image, '/image', qos.image_qos('reliable', 10))
    assert spin_until(executor, lambda: publisher.get_subscription_count() > 0, 20.0)
    for msg in messages[:240]:
        before = node.stats.counts['received']
        publisher.publish(msg)
        assert spin_until(executor, lambda: node.stats.counts['received'] > before, 10.0)

    masks = {}
    client.create_subscription(Image, '/sat_seg/mask',
                               lambda m: masks.update({m.header.stamp.sec: m}),
                               qos.image_qos('reliable', 10))
    good = conversions.fill_image(Image(), np.full((60, 80), 120, np.uint8), 'mono8')
    good.header.stamp.sec = 99_999
    good.header.frame_id = 'fuzz'
    assert spin_until(executor, lambda: client.count_publishers('/sat_seg/mask') > 0, 10.0)
    publisher.publish(good)
    assert spin_until(executor, lambda: 99_999 in masks, 60.0), node.stats.counts
    answer = masks[99_999]
    assert (answer.height, answer.width, answer.encoding) == (60, 80, 'mono8')
    assert answer.header.frame_id == 'fuzz'
    assert node.stats.counts['failed'] == 0
