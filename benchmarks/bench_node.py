"""The node's own per-frame work on 512x641 frames, without the model (budget: 5 ms).

Measures what sat_seg_node does around ``Segmenter.segment``: decoding the Image message,
building the output messages and publishing them to matched subscribers in another process
(real serialization and transport, as for the node's real subscribers). The model's result is
replaced by a fixed Result of the right size, so the numbers are the node's overhead only; the
first 20 frames of each encoding warm up and are not counted.

    .venv/bin/python benchmarks/bench_node.py [--frames 200]
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

import numpy as np


LISTENER = """
import rclpy
from sensor_msgs.msg import Image
from std_msgs.msg import Bool
from sat_seg_ros import node, qos
rclpy.init()
listener = rclpy.create_node('bench_listener')
profile = qos.image_qos('reliable', 5)
for name, kind in (('mask', Image), ('detected', Bool), ('probability', Image),
                   ('overlay', Image), ('detections', node.Detection2DArray or Bool)):
    listener.create_subscription(kind, '/bench/' + name, lambda msg: None, profile)
try:
    rclpy.spin(listener)
except BaseException:
    pass
"""


def main():
    """Run the benchmark and print per-stage milliseconds (median, p95)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=200)
    parser.add_argument('--height', type=int, default=512)
    parser.add_argument('--width', type=int, default=641)
    args = parser.parse_args()
    os.environ.setdefault('ROS_DOMAIN_ID', str(random.randint(40, 99)))

    import rclpy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Bool

    from sat_seg_ros import conversions, node, qos
    from sat_seg_ros.postprocess import Detection, overlay
    from sat_seg_ros.segmenter import Result

    rclpy.init()
    publisher_node = rclpy.create_node('bench_publisher')
    profile = qos.image_qos('reliable', 5)
    pubs = {name: publisher_node.create_publisher(kind, '/bench/' + name, profile)
            for name, kind in (('mask', Image), ('detected', Bool), ('probability', Image),
                               ('overlay', Image))}
    detections_pub = None
    if node.Detection2DArray is not None:
        detections_pub = publisher_node.create_publisher(node.Detection2DArray,
                                                         '/bench/detections', profile)
    listener = subprocess.Popen([sys.executable, '-c', LISTENER], env=os.environ)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(p.get_subscription_count() == 0
                                              for p in pubs.values()):
        time.sleep(0.05)

    height, width = args.height, args.width
    rng = np.random.default_rng(0)
    frames = {
        'mono8': conversions.fill_image(Image(), rng.integers(0, 255, (height, width),
                                                              dtype=np.uint8), 'mono8'),
        'rgb8': conversions.fill_image(Image(), rng.integers(0, 255, (height, width, 3),
                                                             dtype=np.uint8), 'rgb8'),
    }
    mask = np.zeros((height, width), bool)
    mask[100:130, 200:240] = True
    result = Result(probability=rng.random((height, width), dtype=np.float32), mask=mask,
                    detections=[Detection((200, 100, 240, 130), 0.9, 1200)], detected=True,
                    timings={})

    print('node overhead per %dx%d frame (%d frames, ms: median / p95), model excluded'
          % (width, height, args.frames))
    for encoding, msg in frames.items():
        times = {key: [] for key in ('convert', 'build+publish mask, detected, detections',
                                     'probability+overlay (only while subscribed)')}
        for index in range(args.frames + 20):
            start = time.perf_counter()
            frame = conversions.image_to_frame(msg)
            converted = time.perf_counter()
            out = Image()
            conversions.fill_image(out, conversions.mask_to_mono8(result.mask), 'mono8',
                                   msg.header)
            pubs['mask'].publish(out)
            pubs['detected'].publish(Bool(data=result.detected))
            if detections_pub is not None:
                detections_pub.publish(node.detections_message(msg.header, result.detections))
            published = time.perf_counter()
            probability = Image()
            conversions.fill_image(probability, result.probability, '32FC1', msg.header)
            pubs['probability'].publish(probability)
            picture = Image()
            conversions.fill_image(picture, overlay(frame, result.mask), 'rgb8', msg.header)
            pubs['overlay'].publish(picture)
            done = time.perf_counter()
            if index < 20:
                continue
            keys = list(times)
            times[keys[0]].append(converted - start)
            times[keys[1]].append(published - converted)
            times[keys[2]].append(done - published)
        core = [a + b for a, b in zip(*list(times.values())[:2])]
        print('  input %s:' % encoding)
        for key, values in list(times.items()) + [('TOTAL always-on work', core)]:
            ordered = sorted(values)
            p95 = ordered[int(0.95 * (len(ordered) - 1))]
            print('    %-45s %7.3f / %7.3f' % (key, statistics.median(ordered) * 1e3, p95 * 1e3))
    print('  vision_msgs detections included: %s' % (detections_pub is not None))
    listener.terminate()
    listener.wait()
    publisher_node.destroy_node()
    rclpy.shutdown()


if __name__ == '__main__':
    main()
