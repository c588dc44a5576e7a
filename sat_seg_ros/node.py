"""``sat_seg_node``: segments satellites in ``sensor_msgs/Image`` frames (rclpy glue only).

Subscribes ``image``; publishes ``~/mask`` (mono8 0/255), ``~/detected``, ``~/detections``
(vision_msgs, when installed), ``~/probability`` and ``~/overlay`` (only while subscribed) and
``/diagnostics``. Every image output carries the input frame's header.

Threads: the executor thread only stores the newest frame (counting the one it replaces as
dropped) and serves parameters, timers and the graph; one worker thread converts, segments and
publishes, so inference never blocks callbacks and the node never falls behind the camera.
See docs/ros.md for topics, parameters, QoS and why this is a plain (not lifecycle) node.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, List, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Bool

from sat_seg_ros import conversions, node_config, qos
from sat_seg_ros.config import fusion_label
from sat_seg_ros.diagnostics import format_value, NodeStats, RateLimitedLog, status_level

try:  # optional: vision_msgs is not on PyPI (see docs/ros.md for building it)
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
except ImportError:  # pragma: no cover - depends on the environment
    Detection2DArray = None

CLASS_ID = 'satellite'


def detections_message(header: Any, detections: List[Any]) -> Any:
    """Return a vision_msgs/Detection2DArray for ``detections`` (postprocess.Detection).

    Boxes are in input pixels, (0, 0) being the top-left corner of the top-left pixel: a box
    covering pixel columns x0..x1-1 has center x (x0 + x1) / 2 and size_x x1 - x0.
    """
    array_msg = Detection2DArray(header=header)
    for index, detection in enumerate(detections):
        x0, y0, x1, y1 = detection.bbox_xyxy
        item = Detection2D(header=header, id=str(index))
        item.bbox.center.position.x = (x0 + x1) / 2.0
        item.bbox.center.position.y = (y0 + y1) / 2.0
        item.bbox.size_x = float(x1 - x0)
        item.bbox.size_y = float(y1 - y0)
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = CLASS_ID
        hypothesis.hypothesis.score = float(detection.score)
        item.results.append(hypothesis)
        array_msg.detections.append(item)
    return array_msg


class SatSegNode(Node):
    """The segmentation node: parameters -> Segmenter, newest-frame worker, publishers."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(node_config.NODE_NAME, **node_kwargs)
        self.values = node_config.declare_parameters(self)
        self.segmenter = self._load_segmenter()
        self.stats = NodeStats()
        self._previous_snapshot: Optional[dict] = None
        self._reject_log = RateLimitedLog(self.values['reject_log_period_s'])
        self._overlay_alpha = self.values['overlay_alpha']
        self._pending: Optional[Tuple[Image, float]] = None
        self._wake = threading.Condition()
        self._stopping = False

        out_qos = self.values['qos.output_depth']
        self._mask_pub = self.create_publisher(Image, '~/mask', out_qos)
        self._detected_pub = self.create_publisher(Bool, '~/detected', out_qos)
        self._probability_pub = self.create_publisher(Image, '~/probability', out_qos)
        self._overlay_pub = self.create_publisher(Image, '~/overlay', out_qos)
        self._detections_pub = None
        if Detection2DArray is not None:
            self._detections_pub = self.create_publisher(Detection2DArray, '~/detections',
                                                         out_qos)
        else:
            self.get_logger().warning(
                'vision_msgs is not installed: ~/detections is not published (masks, '
                '~/detected and the rest are); see docs/ros.md')
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)

        self._mode = self.values['qos.reliability']
        self._reliability = qos.choose_reliability(self._mode, [])
        self._subscription = self._subscribe(self._reliability)
        if self._mode == 'auto':
            self.create_timer(self.values['qos.graph_check_period_s'], self._match_publishers)
        self.create_timer(self.values['diagnostics_period_s'], self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._worker = threading.Thread(target=self._work, name='sat_seg_worker', daemon=True)
        self._worker.start()
        config = self.segmenter.config
        seed = ('none' if config.seed_threshold is None else '%.3f' % config.seed_threshold)
        self.get_logger().info(
            'ready: model %s%s, backend %s on %s, model_size %d%s, tile_overlap %d, flips %d, '
            'input_color %s, threshold %.3f, seed_threshold %s, min_area_px %d; subscribed to '
            '%s (%s, qos.reliability=%s)'
            % (self.model_dir, ' (mode %s)' % self.values['mode'] if self.values['mode'] else '',
               self.values['backend'], self.values['device'], config.model_size,
               fusion_label(config),
               config.tile_overlap, config.flips, config.input_color, config.threshold, seed,
               config.min_area_px, self._subscription.topic_name, self._reliability,
               self._mode))

    # -- set-up ---------------------------------------------------------------------------------
    def _load_segmenter(self) -> Any:
        from sat_seg_ros.config import resolve_model_dir
        from sat_seg_ros.segmenter import Segmenter

        arguments = node_config.segmenter_arguments(self.values)
        model_dir = arguments.pop('model_dir')
        self.model_dir = str(resolve_model_dir(model_dir))
        return Segmenter.from_model(self.model_dir, **arguments)

    def _subscribe(self, reliability: str) -> Any:
        profile = qos.image_qos(reliability, self.values['qos.depth'])
        return self.create_subscription(Image, 'image', self._on_image, profile)

    def _match_publishers(self) -> None:
        """'auto' reliability: re-subscribe when the publishers' offers call for the other mode."""
        topic = self._subscription.topic_name
        offered = qos.offered_reliabilities(self, topic)
        wanted = qos.choose_reliability(self._mode, offered)
        if wanted == self._reliability:
            return
        self.destroy_subscription(self._subscription)
        self._subscription = self._subscribe(wanted)
        self.get_logger().info('publishers of %s offer %s: subscription is now %s'
                               % (topic, offered or 'nothing', wanted))
        self._reliability = wanted

    # -- executor thread ------------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        """Keep only the newest frame for the worker; the one it replaces is counted dropped."""
        received = time.monotonic()
        self.stats.count('received')
        with self._wake:
            if self._pending is not None:
                self.stats.count('dropped')
            self._pending = (msg, received)
            self._wake.notify()

    def _on_set_parameters(self, parameters: List[Any]) -> SetParametersResult:
        """Validate run-time changes, then apply threshold, min_area_px and the others.

        The fusion's gate and cap change which tiles the next frame runs (the fused sizes
        themselves are fixed at start-up).
        """
        changes = {}
        for parameter in parameters:
            if parameter.name not in node_config.SPECS:
                continue
            try:
                changes[parameter.name] = node_config.check_value(parameter.name,
                                                                  parameter.value)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
        info = self.segmenter.model_info
        try:
            if 'threshold' in changes:
                self.segmenter.set_threshold(changes['threshold'] or info['threshold'])
            if 'seed_threshold' in changes:
                self.segmenter.set_seed_threshold(changes['seed_threshold']
                                                  or info.get('seed_threshold'))
            if 'min_area_px' in changes:
                value = changes['min_area_px']
                self.segmenter.set_min_area(value if value >= 0 else int(info['min_area_px']))
            if 'max_detections' in changes:
                value = changes['max_detections']
                self.segmenter.set_max_detections(
                    value if value >= 0 else int(info.get('max_detections', 0)))
            if 'fuse_gate' in changes:
                value = changes['fuse_gate']
                self.segmenter.set_fuse_gate(value if value >= 0
                                             else float(info.get('fuse_gate', 0.0)))
            if 'fuse_max_tiles' in changes:
                value = changes['fuse_max_tiles']
                self.segmenter.set_fuse_max_tiles(value if value >= 0
                                                  else int(info.get('fuse_max_tiles', 0)))
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        if 'overlay_alpha' in changes:
            self._overlay_alpha = changes['overlay_alpha']
        if 'reject_log_period_s' in changes:
            self._reject_log.period_s = changes['reject_log_period_s']
        self.values.update(changes)
        if changes:
            self.get_logger().info('parameters changed: %s' % ', '.join(
                '%s=%r' % item for item in sorted(changes.items())))
        return SetParametersResult(successful=True)

    def _publish_diagnostics(self) -> None:
        values = self.stats.snapshot()
        level, message = status_level(values, self._previous_snapshot)
        self._previous_snapshot = values
        config = self.segmenter.config
        values.update({
            'backend': self.values['backend'], 'device': self.values['device'],
            'model': self.model_dir, 'model_size': config.model_size,
            'threshold': config.threshold,
            'seed_threshold': ('none' if config.seed_threshold is None
                               else '%.4g' % config.seed_threshold),
            'min_area_px': config.min_area_px, 'max_detections': config.max_detections,
            'flips': config.flips,
            'fuse_sizes': ','.join(str(size) for size in config.fuse_sizes) or 'none',
            'fuse_gate': config.fuse_gate,
            'fuse_max_tiles': config.fuse_max_tiles,
            'image_topic': self._subscription.topic_name,
            'image_reliability': self._reliability,
            'detections_published': self._detections_pub is not None,
            'last_error': self.stats.last_error,
        })
        status = DiagnosticStatus(
            level=bytes([level]), name='%s: satellite segmentation' % self.get_name(),
            message=message,
            hardware_id='%s/%s' % (self.values['backend'], self.values['device']),
            values=[KeyValue(key=key, value=format_value(value))
                    for key, value in values.items()])
        array_msg = DiagnosticArray(status=[status])
        array_msg.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array_msg)

    # -- worker thread --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                msg, received = self._pending
                self._pending = None
            try:
                self._process(msg, received)
            except Exception as error:  # noqa: B902 - the node must survive any frame
                if self._stopping or not rclpy.ok(context=self.context):
                    return
                self.stats.count('failed')
                self._log_problem('failed', 'frame %s failed: %s: %s'
                                  % (_stamp_text(msg), type(error).__name__, error))

    def _process(self, msg: Image, received: float) -> None:
        try:
            frame = conversions.image_to_frame(msg)
        except conversions.ImageConversionError as error:
            self.stats.count('rejected')
            self._log_problem('rejected', 'rejected frame %s (%dx%d %r): %s'
                              % (_stamp_text(msg), msg.width, msg.height, msg.encoding, error))
            return
        result = self.segmenter.segment(frame)
        self._publish(msg.header, frame, result)
        self.stats.frame_done(time.monotonic() - received, result.timings.get('model', 0.0),
                              result.tiles)

    def _publish(self, header: Any, frame: Any, result: Any) -> None:
        """Publish one frame's outputs; probability and overlay only when someone listens."""
        mask = Image()
        conversions.fill_image(mask, conversions.mask_to_mono8(result.mask), 'mono8', header)
        self._mask_pub.publish(mask)
        self._detected_pub.publish(Bool(data=bool(result.detected)))
        if self._detections_pub is not None:
            self._detections_pub.publish(detections_message(header, result.detections))
        if self._probability_pub.get_subscription_count() > 0:
            probability = Image()
            conversions.fill_image(probability, result.probability.astype('float32'), '32FC1',
                                   header)
            self._probability_pub.publish(probability)
        if self._overlay_pub.get_subscription_count() > 0:
            from sat_seg_ros.postprocess import overlay

            picture = Image()
            conversions.fill_image(picture, overlay(frame, result.mask,
                                                    alpha=self._overlay_alpha), 'rgb8', header)
            self._overlay_pub.publish(picture)

    def _log_problem(self, kind: str, text: str) -> None:
        self.stats.error(text)
        allowed, suppressed = self._reject_log.check(kind)
        if allowed:
            more = (' (%d more %s since the last message)' % (suppressed, kind)
                    if suppressed else '')
            self.get_logger().warning(text + more)

    def close(self) -> None:
        """Stop the worker (after its current frame, at most a few seconds) and free the model."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._worker.join(timeout=10.0)
        if not self._worker.is_alive():
            self.segmenter.close()


class _RosLogHandler(logging.Handler):
    """Forward the library's Python log records (e.g. a model's warning) to the node's logger."""

    def __init__(self, logger: Any) -> None:
        super().__init__(logging.INFO)
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        text = '%s: %s' % (record.name, record.getMessage())
        if record.levelno >= logging.ERROR:
            self._logger.error(text)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(text)
        else:
            self._logger.info(text)


def _stamp_text(msg: Any) -> str:
    stamp = msg.header.stamp
    return '%d.%09d' % (stamp.sec, stamp.nanosec)


def main(args: Optional[List[str]] = None) -> int:
    """Run the node until SIGINT / SIGTERM; return 0, or 2 when start-up fails (logged).

    rclpy's signal handlers shut the context down on SIGINT and SIGTERM; a signal that lands
    while the model loads or before spinning ends the node just as cleanly.
    """
    # Spinning OpenMP threads make torch several times slower when the robot's other
    # processes share the CPU (see sat_seg_ros/cli.py); set before torch loads.
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    qos.use_large_frame_profile()
    rclpy.init(args=args)
    executor = SingleThreadedExecutor()
    logger = rclpy.logging.get_logger(node_config.NODE_NAME)
    library_logger = logging.getLogger('sat_seg_ros')  # to /rosout, not bare stderr
    library_logger.addHandler(_RosLogHandler(logger))
    library_logger.setLevel(logging.INFO)
    node = None
    code = 0
    try:
        node = SatSegNode()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, OSError, ImportError, RuntimeError, ParameterException) as error:
        if rclpy.ok():  # a bad parameter or model: one line naming it, no traceback
            logger.fatal('cannot start: %s: %s (see config/sat_seg.yaml and docs/ros.md)'
                         % (type(error).__name__, error))
            code = 2
    except Exception:  # noqa: B902 - a failure caused by the shutdown itself is a clean exit
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    sys.exit(main())
