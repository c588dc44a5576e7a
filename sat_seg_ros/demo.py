"""The main job (``make demo``): the node and a bag replay in separate processes over DDS.

1. starts ``sat_seg_node`` (its own process) with the bundled default model (or ``--model``);
2. replays the bundled sample bag (``sat-seg bag play``, another process) into it, each frame
   after the previous frame's mask came back (``--paced-by``), so every frame is segmented;
3. records the node's outputs here, like ``ros2 bag record``: ``demo_out/output_bag`` (mcap:
   camera frames, masks, detected, detections, overlays, diagnostics), overlay PNGs and
   ``summary.json`` (frames, detections, accuracy against the bag's true masks, end-to-end
   latency p50/p95), and prints a summary.

Everything runs on a private ROS domain (random 40-99 unless ``--domain-id``), so two demos on
one network never see each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from sat_seg_ros import bags

SAMPLE_BAG = Path(__file__).resolve().parent / 'data' / 'sample_bag'
CAMERA_TOPIC = bags.IMAGE_TOPIC


def private_domain_id() -> int:
    """Return a random ROS domain id in 40..99 (kept clear of the default 0 and common ones)."""
    return random.randint(40, 99)


class Recorder:
    """Records the node's topics (serialized, as received) into a bag and keeps what it needs.

    Runs its own rclpy context on a private executor thread.
    """

    def __init__(self, bag_path: Path, domain_id: int) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id,
                   signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
        self.node = rclpy.create_node('sat_seg_demo_recorder', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.bag = bags.BagWriter(bag_path, 'mcap', overwrite=True)
        self.bag.__enter__()
        self._lock = threading.Lock()
        self.mask_arrivals: Dict[int, float] = {}
        self.masks: Dict[int, np.ndarray] = {}
        self.overlays: Dict[int, np.ndarray] = {}
        self.detected: List[bool] = []
        self.detection_counts: Dict[int, int] = {}
        self.diagnostics: Dict[str, str] = {}
        self._subscribe_all()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _subscribe_all(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from std_msgs.msg import Bool

        from sat_seg_ros.qos import image_qos

        reliable = image_qos('reliable', 10)
        topics = [(CAMERA_TOPIC, Image, bags.IMAGE_TYPE, None),
                  (bags.MASK_TOPIC, Image, bags.IMAGE_TYPE, self._on_mask),
                  (bags.OVERLAY_TOPIC, Image, bags.IMAGE_TYPE, self._on_overlay),
                  (bags.DETECTED_TOPIC, Bool, bags.BOOL_TYPE, self._on_detected),
                  ('/diagnostics', DiagnosticArray, 'diagnostic_msgs/msg/DiagnosticArray',
                   self._on_diagnostics)]
        try:
            from vision_msgs.msg import Detection2DArray
            topics.append((bags.DETECTIONS_TOPIC, Detection2DArray, bags.DETECTIONS_TYPE,
                           self._on_detections))
        except ImportError:
            pass  # the node does not publish ~/detections either; counted from the masks
        for topic, msg_class, msgtype, handler in topics:
            self.node.create_subscription(
                msg_class, topic, self._callback(topic, msg_class, msgtype, handler), reliable,
                raw=True)

    def _callback(self, topic: str, msg_class: Any, msgtype: str,
                  handler: Optional[Callable[[Any, float], None]]) -> Callable[[bytes], None]:
        from rclpy.serialization import deserialize_message

        def receive(data: bytes) -> None:
            arrival = time.time()
            with self._lock:
                self.bag.write_raw(topic, msgtype, data, time.time_ns())
                if handler is not None:
                    handler(deserialize_message(data, msg_class), arrival)
        return receive

    def _on_mask(self, msg: Any, arrival: float) -> None:
        from sat_seg_ros.conversions import image_to_numpy

        stamp = bags.stamp_ns(msg.header)
        self.mask_arrivals[stamp] = arrival
        self.masks[stamp] = image_to_numpy(msg) > 0

    def _on_overlay(self, msg: Any, arrival: float) -> None:
        from sat_seg_ros.conversions import image_to_numpy

        self.overlays[bags.stamp_ns(msg.header)] = np.array(image_to_numpy(msg))

    def _on_detected(self, msg: Any, arrival: float) -> None:
        self.detected.append(bool(msg.data))

    def _on_detections(self, msg: Any, arrival: float) -> None:
        self.detection_counts[bags.stamp_ns(msg.header)] = len(msg.detections)

    def _on_diagnostics(self, msg: Any, arrival: float) -> None:
        for status in msg.status:
            if status.name.startswith('sat_seg'):
                self.diagnostics = {item.key: item.value for item in status.values}

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self._rclpy.ok(context=self.context):
                self.executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            pass  # close() shut the context down

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds (checked under the lock) or the timeout; return it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if predicate():
                    return True
            time.sleep(0.1)
        with self._lock:
            return predicate()

    def close(self) -> None:
        """Stop receiving and finish the bag."""
        self._rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        with self._lock:
            self.bag.__exit__(None, None, None)


def _follow(process: subprocess.Popen, lines: List[str], log: Callable[[str], None]) -> None:
    """Collect a child's output lines; pass its progress lines on to ``log``."""
    for line in process.stdout:
        lines.append(line)
        if line.startswith(('playing', 'waiting', 'no message')):
            log('player: ' + line.rstrip())


def _true_masks(bag: Path) -> Dict[int, np.ndarray]:
    truth = {}
    for _, _, _, msg in bags.read_messages(bag, [bags.TRUE_MASK_TOPIC]):
        truth[bags.stamp_ns(msg.header)] = bags.decode_png_message(msg)
    return truth


def _stop(process: subprocess.Popen, timeout_s: float = 15.0) -> Optional[int]:
    """SIGINT, then SIGTERM, then SIGKILL; return the exit code."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if process.poll() is not None:
            break
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            continue
    if process.poll() is None:
        process.kill()
        process.wait()
    return process.returncode


def run_demo(out: os.PathLike | str = 'demo_out', bag: Optional[os.PathLike | str] = None,
             model: Optional[os.PathLike | str] = None, backend: str = 'torch',
             device: str = 'cpu', domain_id: Optional[int] = None, rate: float = 1.0,
             startup_timeout_s: float = 300.0, frame_timeout_s: float = 120.0,
             log: Callable[[str], None] = print, mode: str = '') -> Dict[str, Any]:
    """Run the demo; write ``out``; return the summary (also in ``out/summary.json``).

    ``mode`` names a mode of the model's ``sat_seg.json`` for the node (e.g. 'multiscale';
    '': the default settings).
    """
    from sat_seg_ros.config import atomic_write_text, resolve_model_dir
    from sat_seg_ros.imageio import write_png
    from sat_seg_ros.metrics import summarize

    bag = Path(bag) if bag else SAMPLE_BAG
    if not bag.exists():
        raise FileNotFoundError('sample bag %s is missing; make it with '
                                'scripts/make_sample_bag.sh or pass --bag' % bag)
    if model in (None, ''):
        log('model: the bundled default model')
    model_dir = resolve_model_dir(model)  # names the fix when the bundled model is missing
    out = Path(out)
    overlays_dir = out / 'overlays'
    overlays_dir.mkdir(parents=True, exist_ok=True)
    for old in overlays_dir.glob('*.png'):
        old.unlink()
    domain_id = private_domain_id() if domain_id is None else domain_id
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id))
    publish_log = out / 'publish_log.json'
    if publish_log.exists():
        publish_log.unlink()
    truth = _true_masks(bag)
    log('demo: bag %s, model %s (%s on %s), ROS_DOMAIN_ID=%d, outputs in %s/'
        % (bag, model_dir, backend, device, domain_id, out))

    node_cmd = [sys.executable, '-m', 'sat_seg_ros.node', '--ros-args',
                '-r', 'image:=' + CAMERA_TOPIC, '-p', 'model_path:=%s' % model_dir,
                '-p', 'backend:=' + backend, '-p', 'device:=' + device]
    if mode:
        node_cmd += ['-p', 'mode:=' + mode]
    play_cmd = [sys.executable, '-m', 'sat_seg_ros.cli', 'bag', 'play', '--bag', str(bag),
                '--rate', str(rate), '--wait-for-subscribers', '2',
                '--wait-timeout', str(startup_timeout_s), '--paced-by', bags.MASK_TOPIC,
                '--pace-timeout', str(frame_timeout_s), '--publish-log', str(publish_log)]
    recorder = Recorder(out / 'output_bag', domain_id)
    node_log = open(out / 'node.log', 'w')
    node = subprocess.Popen(node_cmd, env=env, stdout=node_log, stderr=subprocess.STDOUT)
    player = None
    try:
        log('started sat_seg_node (pid %d, log %s); replaying when it subscribes'
            % (node.pid, out / 'node.log'))
        player = subprocess.Popen(play_cmd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        player_lines: List[str] = []
        reader = threading.Thread(target=_follow, args=(player, player_lines, log), daemon=True)
        reader.start()
        deadline = time.monotonic() + startup_timeout_s + frame_timeout_s * max(1, len(truth))
        while player.poll() is None and node.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        player_code = _stop(player, 5.0) if player.poll() is None else player.wait()
        reader.join(timeout=5.0)
        if node.poll() is not None:
            raise RuntimeError('sat_seg_node exited with code %s during the demo; see %s'
                               % (node.returncode, out / 'node.log'))
        if player_code != 0:
            raise RuntimeError('bag play exited with code %s:\n%s'
                               % (player_code, ''.join(player_lines[-15:])))
        published = [tuple(item) for item in json.loads(publish_log.read_text())]
        stamps = [stamp for stamp, _ in published]
        recorder.wait_for(lambda: all(s in recorder.masks for s in stamps), 10.0)
        recorder.wait_for(lambda: bool(recorder.diagnostics)
                          and recorder.diagnostics.get('processed') == str(len(stamps)), 3.0)
    finally:
        if player is not None and player.poll() is None:
            _stop(player, 5.0)
        node_code = _stop(node)
        node_log.close()
        recorder.close()

    latencies = [recorder.mask_arrivals[stamp] - sent for stamp, sent in published
                 if stamp in recorder.mask_arrivals]
    pairs = [(recorder.masks[stamp], truth[stamp]) for stamp in stamps
             if stamp in recorder.masks and stamp in truth]
    metrics = summarize(pairs)
    for index, stamp in enumerate(stamps):
        if stamp in recorder.overlays:
            write_png(overlays_dir / ('frame_%03d_%d.png' % (index, stamp)),
                      recorder.overlays[stamp])
    if recorder.detection_counts:
        detections = sum(recorder.detection_counts.get(s, 0) for s in stamps)
    else:  # the node's detections are exactly the components of its published mask
        detections = sum(_components(recorder.masks[s]) for s in stamps if s in recorder.masks)
    diagnostics = recorder.diagnostics
    summary = {
        'bag': str(bag), 'model': str(model_dir), 'backend': backend, 'device': device,
        'mode': mode or None, 'ros_domain_id': domain_id,
        'frames_published': len(stamps),
        'masks_received': sum(s in recorder.masks for s in stamps),
        'frames_detected': sum(bool(recorder.masks[s].any()) for s in stamps
                               if s in recorder.masks),
        'detections': detections,
        'detections_from': ('~/detections' if recorder.detection_counts
                            else 'mask components (vision_msgs not installed)'),
        'labelled_frames': len(pairs),
        'accuracy': metrics['accuracy'], 'mean_iou': metrics['mean_iou'],
        'precision': metrics['precision'], 'recall': metrics['recall'],
        'latency_ms': {'p50': _ms(latencies, 0.5), 'p95': _ms(latencies, 0.95),
                       'what': 'bag play publish -> mask received, across processes over DDS'},
        'node_latency_ms': {'p50': _float(diagnostics.get('latency_p50_ms')),
                            'p95': _float(diagnostics.get('latency_p95_ms')),
                            'what': "node's receive -> all outputs published, from /diagnostics"},
        'node_tiles': {'p50': _float(diagnostics.get('tiles_p50')),
                       'max': _float(diagnostics.get('tiles_max')),
                       'what': 'tiles the model ran per frame, from /diagnostics'},
        'node_counters': {key: int(_float(diagnostics.get(key)) or 0)
                          for key in ('received', 'processed', 'dropped', 'rejected', 'failed')},
        'node_exit_code': node_code,
        'output_bag': str(out / 'output_bag'),
        'output_bag_topics': dict(recorder.bag.counts),
        'overlays': len(list(overlays_dir.glob('*.png'))),
    }
    atomic_write_text(out / 'summary.json', json.dumps(summary, indent=1) + '\n')
    publish_log.unlink()
    log(format_summary(summary, out))
    return summary


def _components(mask: np.ndarray) -> int:
    import cv2

    count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return count - 1


def _ms(values: List[float], fraction: float) -> Optional[float]:
    from sat_seg_ros.diagnostics import percentile

    return round(percentile(values, fraction) * 1e3, 1) if values else None


def _float(text: Optional[str]) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def format_summary(summary: Dict[str, Any], out: Path) -> str:
    """Return the printed demo summary."""
    def number(value: Any, pattern: str = '%.3f') -> str:
        return 'n/a' if value is None or value != value else pattern % value

    latency = summary['latency_ms']
    node = summary['node_latency_ms']
    lines = [
        '',
        'sat_seg demo summary',
        '  frames          %d published, %d masks received (%s)' % (
            summary['frames_published'], summary['masks_received'],
            'one per frame' if summary['masks_received'] == summary['frames_published']
            else 'MISSING %d' % (summary['frames_published'] - summary['masks_received'])),
        '  detections      %d in %d frame(s) with a mask (from %s)' % (
            summary['detections'], summary['frames_detected'], summary['detections_from']),
        '  accuracy        %s on %d labelled frames (IoU > 0.5; empty on empty), mean IoU %s,'
        ' precision %s, recall %s' % (
            number(summary['accuracy']), summary['labelled_frames'],
            number(summary['mean_iou']), number(summary['precision']),
            number(summary['recall'])),
        '  latency         p50 %s ms, p95 %s ms end to end (node alone: p50 %s, p95 %s ms)' % (
            number(latency['p50'], '%.1f'), number(latency['p95'], '%.1f'),
            number(node['p50'], '%.1f'), number(node['p95'], '%.1f')),
        '  model           %s (%s on %s%s), %s tiles per frame (median)' % (
            summary['model'], summary['backend'], summary['device'],
            ', mode %s' % summary['mode'] if summary.get('mode') else '',
            number((summary.get('node_tiles') or {}).get('p50'), '%.0f')),
        '  outputs         %s (rosbag2 mcap), %s/overlays/ (%d PNG), %s/summary.json' % (
            summary['output_bag'], out, summary['overlays'], out),
    ]
    return '\n'.join(lines)
