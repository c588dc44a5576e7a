"""rosbag2 tools on ``rosbags`` (real rosbag2 folders; mcap by default, sqlite3 too).

- :func:`make_bag`: a dataset (contract layout) -> a camera bag: ``sensor_msgs/Image`` frames and,
  where the truth is known, the true masks as PNG ``sensor_msgs/CompressedImage`` (small).
- :func:`run_bag`: every frame through the Segmenter offline (no DDS); the node's topics written
  with the input stamps.
- :func:`play_bag`: publish a bag's image topic over DDS with its timing (rclpy, imported lazily),
  for machines without ``ros2 bag play``.

Bags are written to a temporary folder beside the target and renamed when complete, so an
interrupted run never leaves a half bag under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from sat_seg_ros import conversions

STORAGES = ('mcap', 'sqlite3')
IMAGE_TOPIC = '/camera/image'
TRUE_MASK_TOPIC = '/camera/true_mask/compressed'
MASK_TOPIC = '/sat_seg/mask'
DETECTED_TOPIC = '/sat_seg/detected'
DETECTIONS_TOPIC = '/sat_seg/detections'
OVERLAY_TOPIC = '/sat_seg/overlay'
IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
BOOL_TYPE = 'std_msgs/msg/Bool'
DETECTIONS_TYPE = 'vision_msgs/msg/Detection2DArray'
FIRST_STAMP_NS = 1_700_000_000 * 10**9  # fixed start: bags made twice are byte-identical

#: The published vision_msgs 4.x definitions (ros-perception/vision_msgs, ROS 2 branch) of the
#: types that Detection2DArray uses, so rosbags can write and read ``~/detections`` without the
#: package installed.
VISION_MSGS = {
    'vision_msgs/msg/Point2D': 'float64 x\nfloat64 y\n',
    'vision_msgs/msg/Pose2D': 'vision_msgs/Point2D position\nfloat64 theta\n',
    'vision_msgs/msg/BoundingBox2D': 'vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n',
    'vision_msgs/msg/ObjectHypothesis': 'string class_id\nfloat64 score\n',
    'vision_msgs/msg/ObjectHypothesisWithPose':
        'ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n',
    'vision_msgs/msg/Detection2D':
        'std_msgs/Header header\nObjectHypothesisWithPose[] results\nBoundingBox2D bbox\n'
        'string id\n',
    'vision_msgs/msg/Detection2DArray': 'std_msgs/Header header\nDetection2D[] detections\n',
}

_TYPESTORE = None


def typestore() -> Any:
    """Return the rosbags typestore: ROS 2 Kilted types plus the vision_msgs detection types."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import get_types_from_msg, get_typestore, Stores

        store = get_typestore(Stores.ROS2_KILTED)
        types: Dict[str, Any] = {}
        for name, text in VISION_MSGS.items():
            types.update(get_types_from_msg(text, name))
        store.register(types)
        _TYPESTORE = store
    return _TYPESTORE


def _check_storage(storage: str) -> str:
    if storage not in STORAGES:
        raise ValueError('storage=%r is not one of %s' % (storage, STORAGES))
    return storage


def header(stamp_ns: int, frame_id: str) -> Any:
    """Return a rosbags std_msgs/Header for ``stamp_ns`` nanoseconds."""
    types = typestore().types
    stamp = types['builtin_interfaces/msg/Time'](sec=int(stamp_ns // 10**9),
                                                 nanosec=int(stamp_ns % 10**9))
    return types['std_msgs/msg/Header'](stamp=stamp, frame_id=frame_id)


def stamp_ns(msg_header: Any) -> int:
    """Return a header's stamp in nanoseconds (rosbags or rclpy message)."""
    return int(msg_header.stamp.sec) * 10**9 + int(msg_header.stamp.nanosec)


def image_message(image: np.ndarray, msg_header: Any, encoding: str = '') -> Any:
    """Return a rosbags sensor_msgs/Image of ``image`` (encoding chosen from dtype if empty)."""
    fields = conversions.image_fields(image, encoding)
    fields['data'] = np.frombuffer(fields['data'], np.uint8)
    return typestore().types[IMAGE_TYPE](header=msg_header, **fields)


def png_message(mask: np.ndarray, msg_header: Any) -> Any:
    """Return a rosbags sensor_msgs/CompressedImage holding ``mask`` (HxW) as a 0/255 PNG."""
    import cv2

    ok, encoded = cv2.imencode('.png', conversions.mask_to_mono8(mask))
    if not ok:
        raise ValueError('could not encode a %s mask as PNG' % (mask.shape,))
    return typestore().types[COMPRESSED_TYPE](header=msg_header, format='mono8; png compressed',
                                              data=encoded.reshape(-1))


def decode_png_message(msg: Any) -> np.ndarray:
    """Return the HxW bool mask of a PNG CompressedImage written by :func:`png_message`."""
    import cv2

    image = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError('CompressedImage with format %r is not a readable PNG' % msg.format)
    return image > 0


def detections_message(msg_header: Any, detections: List[Any]) -> Any:
    """Return a rosbags vision_msgs/Detection2DArray (same layout as the node publishes)."""
    types = typestore().types
    items = []
    for index, detection in enumerate(detections):
        x0, y0, x1, y1 = detection.bbox_xyxy
        center = types['vision_msgs/msg/Pose2D'](
            position=types['vision_msgs/msg/Point2D'](x=(x0 + x1) / 2.0, y=(y0 + y1) / 2.0),
            theta=0.0)
        bbox = types['vision_msgs/msg/BoundingBox2D'](center=center, size_x=float(x1 - x0),
                                                      size_y=float(y1 - y0))
        pose = types['geometry_msgs/msg/PoseWithCovariance'](
            pose=types['geometry_msgs/msg/Pose'](
                position=types['geometry_msgs/msg/Point'](x=0.0, y=0.0, z=0.0),
                orientation=types['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=0.0, w=1.0)),
            covariance=np.zeros(36, np.float64))
        hypothesis = types['vision_msgs/msg/ObjectHypothesisWithPose'](
            hypothesis=types['vision_msgs/msg/ObjectHypothesis'](class_id='satellite',
                                                                 score=float(detection.score)),
            pose=pose)
        items.append(types['vision_msgs/msg/Detection2D'](
            header=msg_header, results=[hypothesis], bbox=bbox, id=str(index)))
    return types[DETECTIONS_TYPE](header=msg_header, detections=items)


class BagWriter:
    """Write a rosbag2 folder atomically: ``with BagWriter(path) as bag: bag.write(...)``."""

    def __init__(self, path: os.PathLike | str, storage: str = 'mcap',
                 overwrite: bool = False) -> None:
        self.path = Path(path)
        self.storage = _check_storage(storage)
        self.overwrite = overwrite
        self._writer: Any = None
        self._tmp: Optional[Path] = None
        self._connections: Dict[str, Any] = {}
        self.counts: Dict[str, int] = {}

    def __enter__(self) -> 'BagWriter':
        from rosbags.rosbag2 import StoragePlugin, Writer

        if self.path.exists() and not self.overwrite:
            raise FileExistsError('%s exists; remove it or choose another --out' % self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix='.' + self.path.name + '.',
                                          dir=self.path.parent))
        plugin = StoragePlugin.MCAP if self.storage == 'mcap' else StoragePlugin.SQLITE3
        self._writer = Writer(self._tmp / self.path.name, version=9, storage_plugin=plugin)
        self._writer.open()
        return self

    def write_raw(self, topic: str, msgtype: str, data: bytes, timestamp_ns: int) -> None:
        """Append serialized CDR ``data`` of ``msgtype`` on ``topic`` at ``timestamp_ns``."""
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msgtype, typestore=typestore())
            self._connections[topic] = connection
        self._writer.write(connection, int(timestamp_ns), data)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def write(self, topic: str, msgtype: str, msg: Any, timestamp_ns: int) -> None:
        """Serialize a rosbags message and append it."""
        self.write_raw(topic, msgtype, typestore().serialize_cdr(msg, msgtype), timestamp_ns)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._writer.close()
            if exc_type is None:
                if self.path.exists():
                    shutil.rmtree(self.path)
                os.replace(self._tmp / self.path.name, self.path)
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)


def read_messages(path: os.PathLike | str, topics: Optional[List[str]] = None,
                  raw: bool = False) -> Iterator[Tuple[str, str, int, Any]]:
    """Yield (topic, msgtype, timestamp_ns, message) in time order; ``raw``: CDR bytes instead."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError('bag %s does not exist' % path)
    store = typestore()
    with Reader(path) as reader:
        connections = [c for c in reader.connections if topics is None or c.topic in topics]
        for connection, timestamp, data in reader.messages(connections=connections):
            message = data if raw else store.deserialize_cdr(data, connection.msgtype)
            yield connection.topic, connection.msgtype, timestamp, message


def bag_topics(path: os.PathLike | str) -> Dict[str, Tuple[str, int]]:
    """Return ``{topic: (msgtype, message count)}`` of a bag."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}


def find_image_topic(path: os.PathLike | str, topic: Optional[str] = None) -> str:
    """Return ``topic`` if the bag has it as sensor_msgs/Image, else the bag's only Image topic."""
    images = sorted(name for name, (msgtype, _) in bag_topics(path).items()
                    if msgtype == IMAGE_TYPE)
    if topic:
        if topic not in images:
            raise ValueError('bag %s has no sensor_msgs/Image topic %r; its image topics: %s'
                             % (path, topic, images or 'none'))
        return topic
    if IMAGE_TOPIC in images:
        return IMAGE_TOPIC
    if len(images) != 1:
        raise ValueError('bag %s has %d sensor_msgs/Image topics (%s); pick one with --topic'
                         % (path, len(images), images))
    return images[0]


def make_bag(dataset_dir: os.PathLike | str, out: os.PathLike | str, rate_hz: float = 5.0,
             storage: str = 'mcap', frame_id: str = 'camera', limit: Optional[int] = None,
             overwrite: bool = False,
             progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, Any]:
    """Write a dataset as a camera bag; return a summary (frames, masks, topics, seconds).

    Frames are stamped ``FIRST_STAMP_NS + i / rate_hz``. A true mask is written for every frame
    whose truth is known: its mask file, or an all-zero mask for an image without a satellite.
    """
    from sat_seg_training.dataset import load_dataset

    if not rate_hz > 0:
        raise ValueError('rate_hz=%r must be > 0' % (rate_hz,))
    dataset = load_dataset(dataset_dir)
    records = list(dataset)[:limit] if limit else list(dataset)
    if not records:
        raise ValueError('dataset %s has no images' % dataset_dir)
    masks = 0
    with BagWriter(out, storage, overwrite) as bag:
        for index, record in enumerate(records):
            image = record.read_image()
            stamp = FIRST_STAMP_NS + int(round(index * 1e9 / rate_hz))
            msg_header = header(stamp, frame_id)
            bag.write(IMAGE_TOPIC, IMAGE_TYPE, image_message(image, msg_header), stamp)
            truth = record.read_mask()
            if truth is None and not record.positive:
                truth = np.zeros(image.shape[:2], bool)
            if truth is not None:
                bag.write(TRUE_MASK_TOPIC, COMPRESSED_TYPE, png_message(truth, msg_header),
                          stamp)
                masks += 1
            if progress:
                progress(index + 1, len(records))
    return {'bag': str(out), 'storage': storage, 'frames': len(records), 'true_masks': masks,
            'rate_hz': rate_hz, 'topics': {IMAGE_TOPIC: IMAGE_TYPE,
                                           TRUE_MASK_TOPIC: COMPRESSED_TYPE}}


def run_bag(bag: os.PathLike | str, out: os.PathLike | str, segmenter: Any,
            topic: Optional[str] = None, storage: str = 'mcap', overlay: bool = False,
            overwrite: bool = False,
            progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, Any]:
    """Segment every frame of ``bag`` offline and write the node's topics to ``out``.

    Outputs carry the input header and the input's bag timestamp. Frames that cannot be
    converted are counted in ``rejected`` and skipped, as the node does.
    """
    from sat_seg_ros.postprocess import overlay as draw_overlay

    topic = find_image_topic(bag, topic)
    total = bag_topics(bag)[topic][1]
    frames = rejected = detections = 0
    seconds: List[float] = []
    with BagWriter(out, storage, overwrite) as writer:
        for _, _, timestamp, msg in read_messages(bag, [topic]):
            try:
                frame = conversions.image_to_frame(msg)
            except conversions.ImageConversionError:
                rejected += 1
                continue
            start = time.perf_counter()
            result = segmenter.segment(frame)
            seconds.append(time.perf_counter() - start)
            writer.write(MASK_TOPIC, IMAGE_TYPE,
                         image_message(conversions.mask_to_mono8(result.mask), msg.header,
                                       'mono8'), timestamp)
            writer.write(DETECTED_TOPIC, BOOL_TYPE,
                         typestore().types[BOOL_TYPE](data=bool(result.detected)), timestamp)
            writer.write(DETECTIONS_TOPIC, DETECTIONS_TYPE,
                         detections_message(msg.header, result.detections), timestamp)
            if overlay:
                writer.write(OVERLAY_TOPIC, IMAGE_TYPE,
                             image_message(draw_overlay(frame, result.mask), msg.header,
                                           'rgb8'), timestamp)
            frames += 1
            detections += len(result.detections)
            if progress:
                progress(frames + rejected, total)
    return {'bag': str(bag), 'out': str(out), 'topic': topic, 'frames': frames,
            'rejected': rejected, 'detections': detections,
            'mean_seconds_per_frame': float(np.mean(seconds)) if seconds else float('nan')}


def play_bag(bag: os.PathLike | str, topic: Optional[str] = None, rate: float = 1.0,
             loop: bool = False, remap: Optional[str] = None, reliability: str = 'reliable',
             depth: int = 5, wait_for_subscribers: int = 0, wait_timeout_s: float = 60.0,
             paced_by: Optional[str] = None, pace_timeout_s: float = 60.0,
             publish_log: Optional[os.PathLike | str] = None,
             log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Publish ``bag``'s image topic over DDS with its recorded timing; return a summary.

    ``rate`` scales the speed (2.0: twice as fast). ``remap`` publishes under another topic name.
    ``wait_for_subscribers``: wait (up to ``wait_timeout_s``) until that many subscriptions
    match, and, for a reliable publisher, until they are reliable too (the node's 'auto' QoS
    switches after it sees us). ``paced_by``: after each frame wait until a sensor_msgs/Image
    with the same stamp arrives on that topic (e.g. ``/sat_seg/mask``), so a slow consumer
    sees every frame. ``publish_log``: JSON file of [stamp_ns, unix time] per published frame.
    Messages are published as recorded (serialized bytes), headers untouched.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from sensor_msgs.msg import Image

    from sat_seg_ros import qos

    if not rate > 0:
        raise ValueError('rate=%r must be > 0' % (rate,))
    topic = find_image_topic(bag, topic)
    messages = [(timestamp, data)
                for _, _, timestamp, data in read_messages(bag, [topic], raw=True)]
    if not messages:
        raise ValueError('bag %s has no messages on %s' % (bag, topic))
    stamps = [stamp_ns(typestore().deserialize_cdr(data, IMAGE_TYPE).header)
              for _, data in messages] if (paced_by or publish_log) else []
    qos.use_large_frame_profile()  # big best-effort frames survive (acts in the publisher)
    rclpy.init()
    node = rclpy.create_node('sat_seg_bag_play')
    published: List[Tuple[int, float]] = []
    count = 0
    try:
        publisher = node.create_publisher(Image, remap or topic, qos.image_qos(reliability,
                                                                               depth))
        arrived: set = set()
        if paced_by:
            node.create_subscription(Image, paced_by,
                                     lambda msg: arrived.add(stamp_ns(msg.header)),
                                     qos.image_qos('reliable', 10))
        if wait_for_subscribers:
            _wait_for_subscribers(node, publisher, wait_for_subscribers, reliability,
                                  wait_timeout_s, log)
        log('playing %d frames of %s on %s at %.2fx%s' % (
            len(messages), bag, publisher.topic_name, rate, ', looping' if loop else ''))
        while True:
            start_wall = time.monotonic()
            first = messages[0][0]
            for index, (timestamp, data) in enumerate(messages):
                due = start_wall + (timestamp - first) / 1e9 / rate
                while time.monotonic() < due:
                    rclpy.spin_once(node, timeout_sec=min(0.05, max(0.0, due - time.monotonic())))
                sent = time.time()
                publisher.publish(data)
                count += 1
                if stamps:
                    published.append((stamps[index], sent))
                if paced_by:
                    deadline = time.monotonic() + pace_timeout_s
                    while stamps[index] not in arrived and time.monotonic() < deadline:
                        rclpy.spin_once(node, timeout_sec=0.05)
                    if stamps[index] not in arrived:
                        log('no message on %s for frame %d within %.0f s; going on'
                            % (paced_by, index, pace_timeout_s))
                    start_wall = time.monotonic() - (messages[index][0] - first) / 1e9 / rate
            if not loop:
                break
        # Give reliable delivery of the last frames a moment before the publisher goes away.
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        log('interrupted')
    except Exception:  # noqa: B902 - a publish racing the SIGINT shutdown is an interruption
        if rclpy.ok():
            raise
        log('interrupted')
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        if publish_log:
            from sat_seg_ros.config import atomic_write_text

            atomic_write_text(publish_log, json.dumps(published))
    return {'bag': str(bag), 'topic': remap or topic, 'published': count}


def _wait_for_subscribers(node: Any, publisher: Any, count: int, reliability: str,
                          timeout_s: float, log: Callable[[str], None]) -> None:
    import rclpy

    from sat_seg_ros import qos

    deadline = time.monotonic() + timeout_s
    log('waiting for %d subscriber(s) on %s' % (count, publisher.topic_name))
    while time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
        infos = node.get_subscriptions_info_by_topic(publisher.topic_name)
        modes = [qos.reliability_name(info.qos_profile.reliability) for info in infos]
        if (publisher.get_subscription_count() >= count and len(modes) >= count
                and (reliability != 'reliable' or all(m == 'reliable' for m in modes))):
            # Matched on our side; give the subscribers' side of the match a moment too, or
            # the first frame can go to a reader that is not listening yet.
            settle = time.monotonic() + 1.0
            while time.monotonic() < settle:
                rclpy.spin_once(node, timeout_sec=0.1)
            return
    raise TimeoutError('no %d %s subscriber(s) on %s within %.0f s'
                       % (count, reliability, publisher.topic_name, timeout_s))
