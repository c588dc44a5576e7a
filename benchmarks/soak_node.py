"""Soak sat_seg_node: frames at a fixed rate for N minutes; delivery, latency and memory.

The node runs in its own process (the bundled model unless --model), subscribed to a camera
topic; this process publishes 512x641 mono8 scenes at --rate Hz with a reliable profile and
listens to ``/sat_seg/mask``. A frame is delivered when its mask (same stamp) comes back;
frames the node could not keep up with are dropped by its newest-frame policy (the node counts
them too). Every second the node's resident memory (VmRSS) is sampled. Prints a summary, writes
JSON and a plot (memory, latency and delivered rate over time).

    .venv/bin/python benchmarks/soak_node.py --rate 30 --minutes 10 --out soak/
"""

import argparse
import json
import os
from pathlib import Path
import platform
import random
import subprocess
import sys
import threading
import time

import numpy as np


def rss_mb(pid):
    """Return a process's resident set size in MB (Linux /proc), or NaN once it is gone."""
    try:
        with open('/proc/%d/status' % pid) as status:
            for line in status:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float('nan')


def percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else float('nan')


def plot(path, samples, latencies, delivered_times, started):
    """Write memory, latency and delivered-rate curves as one PNG."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    times = [t - started for t, _ in samples]
    axes[0].plot(times, [m for _, m in samples])
    axes[0].set_ylabel('node RSS (MB)')
    if latencies:
        axes[1].plot([t - started for t, _ in latencies], [1000 * v for _, v in latencies],
                     '.', markersize=2)
    axes[1].set_ylabel('latency (ms)')
    if delivered_times:
        edges = np.arange(0, max(times + [1.0]) + 10, 10)
        counts, _ = np.histogram(np.asarray(delivered_times) - started, edges)
        axes[2].step(edges[:-1], counts / 10.0, where='post')
    axes[2].set_ylabel('delivered (Hz, 10 s bins)')
    axes[2].set_xlabel('seconds')
    figure.tight_layout()
    figure.savefig(str(path), dpi=80)
    plt.close(figure)


def main():
    """Run the soak and print its summary; exit 1 if the node died."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rate', type=float, default=30.0, help='frames per second (30)')
    parser.add_argument('--minutes', type=float, default=10.0, help='duration (10)')
    parser.add_argument('--model', default='', help='model folder (default: the bundled one)')
    parser.add_argument('--backend', default='torch', help='node backend (torch)')
    parser.add_argument('--out', type=Path, default=Path('soak_out'), help='output folder')
    args = parser.parse_args()
    if not args.rate > 0 or not args.minutes > 0:
        parser.error('--rate and --minutes must be > 0')
    domain = str(random.randint(161, 230))
    env = dict(os.environ, ROS_DOMAIN_ID=domain, PYTHONUNBUFFERED='1')
    os.environ['ROS_DOMAIN_ID'] = domain

    import rclpy
    from sensor_msgs.msg import Image

    from sat_seg_ros import conversions, qos
    from sat_seg_ros.commands.bench import synthetic_frames

    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / 'node.log', 'w')
    parameters = ['-p', 'backend:=%s' % args.backend, '-p', 'qos.reliability:=reliable']
    if args.model:  # empty: the node's default, the bundled model
        parameters += ['-p', 'model_path:=%s' % args.model]
    node = subprocess.Popen(
        [sys.executable, '-m', 'sat_seg_ros.node', '--ros-args', '-r', 'image:=/soak/image',
         *parameters], env=env, stdout=log, stderr=subprocess.STDOUT)
    rclpy.init()
    client = rclpy.create_node('soak_client')
    profile = qos.image_qos('reliable', 5)
    publisher = client.create_publisher(Image, '/soak/image', profile)
    sent, received = {}, {}
    lock = threading.Lock()

    def on_mask(msg):
        key = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with lock:
            received[key] = time.monotonic()

    client.create_subscription(Image, '/sat_seg/mask', on_mask, qos.image_qos('reliable', 50))
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and node.poll() is None and (
            publisher.get_subscription_count() == 0
            or client.count_publishers('/sat_seg/mask') == 0):
        time.sleep(0.1)
    if node.poll() is not None or publisher.get_subscription_count() == 0:
        print('the node did not come up; see %s' % (args.out / 'node.log'))
        return 1
    time.sleep(3.0)  # model load and first-frame warm-up happen before the clock starts

    frames = [conversions.fill_image(Image(), frame, 'mono8')
              for frame in synthetic_frames(16, seed=4)]
    period = 1.0 / args.rate
    started = time.monotonic()
    end = started + 60.0 * args.minutes
    samples = [(started, rss_mb(node.pid))]
    next_sample = started + 1.0
    index = 0
    while time.monotonic() < end and node.poll() is None:
        due = started + index * period
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        msg = frames[index % len(frames)]
        stamp = 1_700_000_000 * 1_000_000_000 + index * 1_000_000
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        with lock:
            sent[stamp] = time.monotonic()
        publisher.publish(msg)
        index += 1
        if time.monotonic() >= next_sample:
            samples.append((time.monotonic(), rss_mb(node.pid)))
            next_sample += 1.0
    time.sleep(3.0)  # the last masks in flight
    alive = node.poll() is None
    samples.append((time.monotonic(), rss_mb(node.pid)))
    node.terminate()
    try:
        node.wait(timeout=30)
    except subprocess.TimeoutExpired:
        node.kill()
    executor.shutdown()
    client.destroy_node()
    rclpy.try_shutdown()
    log.close()

    with lock:
        latencies = sorted((sent[k], received[k] - sent[k]) for k in received if k in sent)
    values = [v for _, v in latencies]
    memory = [m for _, m in samples if m == m]
    first_minute = [m for t, m in samples if t - started <= 60 and m == m]
    summary = {
        'rate_hz': args.rate, 'minutes': args.minutes, 'sent': len(sent),
        'delivered': len(latencies), 'dropped': len(sent) - len(latencies),
        'delivered_hz': round(len(latencies) / (60.0 * args.minutes), 2),
        'latency_ms': {'p50': round(1000 * percentile(values, 50), 1),
                       'p95': round(1000 * percentile(values, 95), 1),
                       'p99': round(1000 * percentile(values, 99), 1),
                       'max': round(1000 * max(values), 1) if values else None},
        'rss_mb': {'start': round(memory[0], 1) if memory else None,
                   'after_1_min': round(first_minute[-1], 1) if first_minute else None,
                   'end': round(memory[-1], 1) if memory else None,
                   'max': round(max(memory), 1) if memory else None},
        'node_alive_at_end': alive, 'backend': args.backend,
        'model': args.model or 'bundled default',
        'machine': '%s, %d CPU cores, Python %s' % (
            platform.processor() or platform.machine(), os.cpu_count(),
            platform.python_version()),
        'date': time.strftime('%Y-%m-%d'),
    }
    (args.out / 'soak.json').write_text(json.dumps(summary, indent=2) + '\n')
    delivered_times = [received[k] for k in received if k in sent]
    plot(args.out / 'soak.png', samples, latencies, delivered_times, started)
    print(json.dumps(summary, indent=2))
    print('wrote %s and %s' % (args.out / 'soak.json', args.out / 'soak.png'))
    return 0 if alive else 1


if __name__ == '__main__':
    sys.exit(main())
