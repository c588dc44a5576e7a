"""sat_seg_node on a real ROS graph: the node in its own process, frames from this process.

One node process (tiny random-weight model, model_size 256) serves the whole module on a private
ROS_DOMAIN_ID. Random weights: these tests check plumbing (stamps, sizes, 0/255, encodings,
rejects, drops, parameters, QoS, shutdown), not mask quality.
"""

import json
import os
from pathlib import Path
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402, I100
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402

from sat_seg_ros import conversions, node_config, qos  # noqa: E402

DOMAIN_ID = random.randint(40, 99)
CAMERA = '/test_camera/image'
REPO = Path(__file__).resolve().parent.parent


def node_command(*extra):
    return [sys.executable, '-m', 'sat_seg_ros.node', '--ros-args', '-r', 'image:=' + CAMERA,
            *extra]


def node_env():
    return dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), PYTHONUNBUFFERED='1',
                RCUTILS_LOGGING_BUFFERED_STREAM='0')


class Client:
    """A test-side node on the private domain with helpers to wait on callbacks."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID,
                   signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
        self.node = rclpy.create_node('sat_seg_test_client', context=self.context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.masks = {}
        self.detected = []
        self.overlays = {}
        self.probabilities = {}
        self.diagnostics = {}
        reliable = qos.image_qos('reliable', 10)
        self.node.create_subscription(Image, '/sat_seg/mask', self._on_mask, reliable)
        self.node.create_subscription(Bool, '/sat_seg/detected',
                                      lambda msg: self.detected.append(msg.data), reliable)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.parameters = self.node.create_client(SetParameters, '/sat_seg/set_parameters')

    def _on_mask(self, msg):
        self.masks[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.startswith('sat_seg'):
                self.diagnostics = {item.key: item.value for item in status.values}

    def spin_until(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return predicate()

    def subscription_reliability(self, topic=CAMERA):
        return [qos.reliability_name(info.qos_profile.reliability)
                for info in self.node.get_subscriptions_info_by_topic(topic)]

    def set_parameter(self, name, value):
        kinds = {float: (ParameterType.PARAMETER_DOUBLE, 'double_value'),
                 int: (ParameterType.PARAMETER_INTEGER, 'integer_value'),
                 str: (ParameterType.PARAMETER_STRING, 'string_value')}
        kind, field = kinds[type(value)]
        request = SetParameters.Request(parameters=[Parameter(
            name=name, value=ParameterValue(type=kind, **{field: value}))])
        assert self.parameters.wait_for_service(timeout_sec=10.0)
        future = self.parameters.call_async(request)
        assert self.spin_until(future.done, 10.0)
        return future.result().results[0]

    def close(self):
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture(scope='module')
def node_process(tiny_model_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp('node') / 'node.log'
    log = open(log_path, 'w')
    process = subprocess.Popen(
        node_command('-p', 'model_path:=%s' % tiny_model_dir, '-p', 'model_size:=256',
                     '-p', 'reject_log_period_s:=60.0', '-p', 'diagnostics_period_s:=0.5',
                     '-p', 'qos.graph_check_period_s:=0.3'),
        env=node_env(), stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
    process.log_path = log_path
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()
    log.close()


@pytest.fixture(scope='module')
def client(node_process):
    client = Client()
    yield client
    client.close()


def frame_message(image, encoding, sec, frame_id='test_cam'):
    msg = conversions.fill_image(Image(), image, encoding)
    msg.header.stamp.sec = sec
    msg.header.stamp.nanosec = 123
    msg.header.frame_id = frame_id
    return msg


def wait_for_node(client, publisher, node_process, reliability):
    """Wait until the node subscribes to CAMERA with ``reliability`` (its 'auto' QoS adapts)."""
    ok = client.spin_until(
        lambda: node_process.poll() is not None or (
            publisher.get_subscription_count() > 0
            and client.subscription_reliability() == [reliability]), 60.0)
    assert node_process.poll() is None, node_process.log_path.read_text()
    assert ok, 'node subscription %s, wanted %s' % (client.subscription_reliability(),
                                                    reliability)


def send_and_wait(client, publisher, msg, timeout=20.0):
    key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
    publisher.publish(msg)
    client.spin_until(lambda: key in client.masks, timeout)
    return client.masks.get(key)


def publish_rejected(client, publisher, msg, before):
    """Publish a malformed frame until the diagnostics count it (best-effort may lose it)."""
    for _ in range(3):
        publisher.publish(msg)
        if client.spin_until(lambda: int(client.diagnostics.get('rejected', '0')) > before, 3.0):
            return 1
    return 0


def test_sensor_data_mono8_frames_get_their_mask_and_bad_frames_are_rejected(
        client, node_process):
    publisher = client.node.create_publisher(Image, CAMERA, qos_profile_sensor_data)
    wait_for_node(client, publisher, node_process, 'best_effort')
    rng = np.random.default_rng(0)
    malformed = [
        frame_message(rng.integers(0, 255, (8, 8), dtype=np.uint8), 'mono8', 900),
        frame_message(rng.integers(0, 255, (8, 8), dtype=np.uint8), 'mono8', 901),
        frame_message(rng.integers(0, 255, (8, 8), dtype=np.uint8), 'mono8', 902),
        frame_message(rng.integers(0, 255, (8, 8), dtype=np.uint8), 'mono8', 903),
    ]
    malformed[0].encoding = 'bayer_rggb8'
    malformed[1].step = 5
    malformed[2].data = malformed[2].data[:40]
    malformed[3].height = 0
    rejected = 0
    for index in range(6):
        if index in (1, 2, 3, 4):
            rejected += publish_rejected(client, publisher, malformed[index - 1], rejected)
        image = rng.integers(0, 255, (512, 641), dtype=np.uint8)
        msg = frame_message(image, 'mono8', 100 + index)
        for _ in range(3):  # best-effort may lose a frame in transit: that is not the node's
            mask = send_and_wait(client, publisher, msg, timeout=10.0)
            if mask is not None:
                break
        assert mask is not None, 'no mask for frame %d' % index
        assert mask.header.frame_id == 'test_cam'
        assert (mask.header.stamp.sec, mask.header.stamp.nanosec) == (100 + index, 123)
        assert (mask.height, mask.width, mask.encoding) == (512, 641, 'mono8')
        values = set(np.unique(conversions.image_to_numpy(mask)).tolist())
        assert values <= {0, 255}
    assert rejected == 4
    assert node_process.poll() is None
    log = node_process.log_path.read_text()
    assert log.count('rejected frame') == 1, log  # rate-limited: one line per period
    assert 'bayer_rggb8' in log
    client.node.destroy_publisher(publisher)


def test_every_encoding_is_served(client, node_process):
    publisher = client.node.create_publisher(Image, CAMERA, qos.image_qos('reliable', 5))
    wait_for_node(client, publisher, node_process, 'reliable')
    rng = np.random.default_rng(1)
    shapes = {'mono8': (np.uint8, 1), 'mono16': (np.uint16, 1), 'rgb8': (np.uint8, 3),
              'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4), 'bgra8': (np.uint8, 4),
              '32FC1': (np.float32, 1)}
    for index, (encoding, (dtype, channels)) in enumerate(shapes.items()):
        shape = (48, 64) if channels == 1 else (48, 64, channels)
        image = (rng.random(shape).astype(np.float32) if dtype == np.float32
                 else rng.integers(0, np.iinfo(dtype).max, shape).astype(dtype))
        mask = send_and_wait(client, publisher, frame_message(image, encoding, 200 + index))
        assert mask is not None, encoding
        assert (mask.height, mask.width, mask.encoding) == (48, 64, 'mono8')
    client.node.destroy_publisher(publisher)


def test_parameters_change_the_mask_at_run_time_and_bad_values_are_refused(
        client, node_process):
    publisher = client.node.create_publisher(Image, CAMERA, qos.image_qos('reliable', 5))
    wait_for_node(client, publisher, node_process, 'reliable')
    image = np.random.default_rng(2).integers(0, 255, (64, 80), dtype=np.uint8)

    def mask_values(sec):
        mask = send_and_wait(client, publisher, frame_message(image, 'mono8', sec))
        assert mask is not None
        return set(np.unique(conversions.image_to_numpy(mask)).tolist())

    assert client.set_parameter('min_area_px', 0).successful
    assert client.set_parameter('threshold', 1e-9).successful
    assert mask_values(300) == {255}
    assert client.set_parameter('threshold', 1 - 1e-9).successful
    assert mask_values(301) == {0}

    refused = client.set_parameter('threshold', 1.5)
    assert not refused.successful and 'threshold' in refused.reason
    refused = client.set_parameter('min_area_px', -5)
    assert not refused.successful
    assert client.set_parameter('threshold', 1e-9).successful
    assert client.set_parameter('seed_threshold', 1 - 1e-9).successful  # nothing is confident
    assert mask_values(302) == {0}
    assert client.set_parameter('seed_threshold', 1e-9).successful  # at or below: no gate
    assert mask_values(303) == {255}
    assert client.set_parameter('seed_threshold', 1 - 1e-9).successful
    assert client.spin_until(lambda: client.diagnostics.get('seed_threshold') == '1', 5.0)
    assert not client.set_parameter('seed_threshold', 1.5).successful
    assert client.set_parameter('seed_threshold', 0.0).successful  # back to the model's (none)
    assert client.spin_until(lambda: client.diagnostics.get('seed_threshold') == 'none', 5.0)
    assert client.set_parameter('max_detections', 1).successful
    assert client.spin_until(lambda: client.diagnostics.get('max_detections') == '1', 5.0)
    assert not client.set_parameter('max_detections', -2).successful
    assert client.set_parameter('max_detections', -1).successful  # back to the model's (0)
    # The fusion's gate and cap reach the Segmenter (diagnostics read its config).
    assert client.set_parameter('fuse_max_tiles', 6).successful
    assert client.set_parameter('fuse_gate', 0.5).successful
    assert client.spin_until(lambda: (client.diagnostics.get('fuse_max_tiles'),
                                      client.diagnostics.get('fuse_gate')) == ('6', '0.50'), 5.0)
    assert not client.set_parameter('fuse_max_tiles', -3).successful
    assert not client.set_parameter('fuse_gate', 1.0).successful
    assert client.set_parameter('fuse_max_tiles', -1).successful  # back to the model's (0)
    assert client.set_parameter('fuse_gate', -1.0).successful
    assert client.spin_until(lambda: (client.diagnostics.get('fuse_max_tiles'),
                                      client.diagnostics.get('fuse_gate')) == ('0', '0.00'), 5.0)
    refused = client.set_parameter('model_path', '/elsewhere')
    assert not refused.successful and 'read-only' in refused.reason.lower()
    assert client.set_parameter('threshold', 0.0).successful  # back to the model's
    assert client.spin_until(lambda: client.diagnostics.get('threshold') == '0.65', 5.0)
    client.node.destroy_publisher(publisher)


def test_probability_and_overlay_while_subscribed(client, node_process):
    publisher = client.node.create_publisher(Image, CAMERA, qos.image_qos('reliable', 5))
    wait_for_node(client, publisher, node_process, 'reliable')
    reliable = qos.image_qos('reliable', 5)
    overlay = client.node.create_subscription(
        Image, '/sat_seg/overlay', lambda m: client.overlays.update({m.header.stamp.sec: m}),
        reliable)
    probability = client.node.create_subscription(
        Image, '/sat_seg/probability',
        lambda m: client.probabilities.update({m.header.stamp.sec: m}), reliable)
    client.spin_until(lambda: client.node.count_publishers('/sat_seg/overlay') > 0, 5.0)
    time.sleep(0.5)  # let the node see the new subscriptions
    image = np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    assert send_and_wait(client, publisher, frame_message(image, 'rgb8', 400)) is not None
    assert client.spin_until(lambda: 400 in client.overlays and 400 in client.probabilities,
                             5.0)
    assert client.overlays[400].encoding == 'rgb8'
    assert client.probabilities[400].encoding == '32FC1'
    values = conversions.image_to_numpy(client.probabilities[400])
    assert values.shape == (40, 50) and 0.0 <= values.min() <= values.max() <= 1.0
    client.node.destroy_subscription(overlay)
    client.node.destroy_subscription(probability)
    client.node.destroy_publisher(publisher)


def test_2048_frames_arrive_across_processes_and_stale_frames_are_dropped(
        client, node_process):
    publisher = client.node.create_publisher(Image, CAMERA, qos.image_qos('reliable', 10))
    wait_for_node(client, publisher, node_process, 'reliable')
    image = np.random.default_rng(4).integers(0, 255, (2048, 2048), dtype=np.uint8)
    for index in range(3):
        mask = send_and_wait(client, publisher, frame_message(image, 'mono8', 500 + index),
                             timeout=30.0)
        assert mask is not None, '2048x2048 frame %d did not come back' % index
        assert (mask.height, mask.width) == (2048, 2048)
    # A burst faster than the node: it serves the newest frame; frames it received but did not
    # serve are counted as dropped (frames the depth-1 DDS queue replaced never reach it).
    assert client.spin_until(lambda: client.diagnostics.get('processed') == str(
        int(client.diagnostics.get('received', '-1')) - int(client.diagnostics['rejected'])
        - int(client.diagnostics['dropped'])), 5.0)
    before = {key: int(client.diagnostics[key]) for key in ('received', 'processed', 'dropped')}
    for index in range(6):
        publisher.publish(frame_message(image, 'mono8', 600 + index))
    assert client.spin_until(lambda: (605, 123) in client.masks, 60.0)
    served = [sec for sec, _ in client.masks if 600 <= sec < 606]
    assert len(served) < 6

    def counted():
        delta = {key: int(client.diagnostics[key]) - before[key] for key in before}
        return delta['received'] >= len(served) and (
            delta['dropped'] == delta['received'] - delta['processed'])
    assert client.spin_until(counted, 5.0), (before, client.diagnostics)
    client.node.destroy_publisher(publisher)


def test_best_effort_2048_frames_arrive_from_a_publisher_with_the_large_frame_profile(
        client, node_process, tmp_path):
    """`bag play --qos-reliability best_effort` (another process) as a best-effort camera.

    Without config/fastdds_large_frames.xml in the publishing process these frames are lost
    (measured: 0 of 10); our publishers load it by default.
    """
    from sat_seg_ros import bags

    camera = tmp_path / 'camera'
    image = np.random.default_rng(6).integers(0, 255, (2048, 2048), dtype=np.uint8)
    with bags.BagWriter(camera) as writer:
        for index in range(2):
            stamp = 700 * 10**9 + index * 10**8
            writer.write(bags.IMAGE_TOPIC, bags.IMAGE_TYPE,
                         bags.image_message(image, bags.header(stamp, 'cam')), stamp)
    env = node_env()
    env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    player = subprocess.Popen(
        [sys.executable, '-m', 'sat_seg_ros.cli', 'bag', 'play', '--bag', str(camera),
         '--remap', CAMERA, '--qos-reliability', 'best_effort', '--wait-for-subscribers', '1',
         '--paced-by', '/sat_seg/mask', '--pace-timeout', '15'],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client.spin_until(lambda: player.poll() is not None, 90.0)
    output = player.communicate(timeout=10)[0]
    assert player.returncode == 0, output
    assert 'no message on' not in output, output
    assert client.spin_until(lambda: {(700, 0), (700, 10**8)} <= set(client.masks), 5.0)
    assert client.masks[(700, 0)].width == 2048


def test_diagnostics_report_the_node(client, node_process):
    assert client.spin_until(lambda: 'latency_p95_ms' in client.diagnostics, 5.0)
    values = client.diagnostics
    for key in ('received', 'processed', 'dropped', 'rejected', 'input_rate_hz',
                'output_rate_hz', 'latency_p50_ms', 'backend', 'model', 'flips', 'fuse_sizes',
                'fuse_gate', 'fuse_max_tiles', 'tiles_p50', 'tiles_max'):
        assert key in values, key
    assert values['backend'] == 'torch' and values['fuse_sizes'] == 'none'
    assert float(values['tiles_max']) >= 1  # frames went through the model
    assert int(values['processed']) >= 10


def test_sigterm_shuts_down_cleanly(client, node_process):
    """SIGTERM (what systemd and docker send); the demo test covers SIGINT."""
    node_process.send_signal(signal.SIGTERM)
    assert node_process.wait(timeout=20) == 0, node_process.log_path.read_text()


def test_the_ready_line_states_the_fusion_and_thresholds_in_use(tiny_model_dir):
    """What the node will run, fused model sizes and seed threshold included, in one line."""
    process = subprocess.Popen(
        node_command('-p', 'model_path:=%s' % tiny_model_dir, '-p', 'model_size:=256',
                     '-p', "fuse_sizes:='512'", '-p', 'seed_threshold:=0.9',
                     '-p', 'fuse_gate:=0.5', '-p', 'fuse_max_tiles:=3'),
        env=node_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if 'ready:' in line or 'Traceback' in line:
                break
        ready = [line for line in lines if 'ready:' in line]
        assert ready, ''.join(lines)
        assert 'model_size 256 + 512 (fuse_gate 0.50, fuse_max_tiles 3),' in ready[0]
        assert 'seed_threshold 0.900' in ready[0]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_bad_parameters_stop_start_up_with_their_name():
    bad = subprocess.run(node_command('-p', 'qos.reliability:=sometimes'), env=node_env(),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert 'qos.reliability' in bad.stdout + bad.stderr and 'sometimes' in bad.stdout + bad.stderr
    bad = subprocess.run(node_command('-p', 'threshold:=7'), env=node_env(),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and 'threshold' in bad.stdout + bad.stderr


def test_config_file_and_docs_mirror_the_declared_parameters():
    assert node_config.load_params_file() == node_config.defaults()
    docs = (REPO / 'docs' / 'ros.md').read_text()
    for spec in node_config.PARAMETERS:
        assert spec.description
        assert '`%s`' % spec.name in docs, spec.name
        node_config.check_value(spec.name, spec.default)
    with pytest.raises(ValueError, match='threshold=1.5'):
        node_config.check_value('threshold', 1.5)
    with pytest.raises(ValueError, match="device='gpu0'"):
        node_config.check_value('device', 'gpu0')
    node_config.check_value('device', 'cuda:1')
    with pytest.raises(ValueError, match="backend='caffe'"):
        node_config.check_value('backend', 'caffe')
    with pytest.raises(ValueError, match='must be of type integer'):
        node_config.check_value('min_area_px', 2.5)
    assert node_config.segmenter_arguments(node_config.defaults()) == {
        'model_dir': None, 'backend': 'torch', 'device': 'cpu', 'model_size': None,
        'tile_size': None, 'tile_overlap': None, 'batch_size': 16, 'prompt_mode': None,
        'threshold': None, 'seed_threshold': None, 'min_area_px': None,
        'max_detections': None, 'flips': None, 'fuse_sizes': None, 'fuse_gate': None,
        'fuse_max_tiles': None, 'input_color': None, 'mode': None}
    with pytest.raises(ValueError, match="mode='Fast!'"):
        node_config.check_value('mode', 'Fast!')
    assert node_config.segmenter_arguments(
        dict(node_config.defaults(), mode='accurate'))['mode'] == 'accurate'
    with pytest.raises(ValueError, match="input_color='bgr'"):
        node_config.check_value('input_color', 'bgr')
    assert node_config.segmenter_arguments(
        dict(node_config.defaults(), input_color='luma'))['input_color'] == 'luma'
    with pytest.raises(ValueError, match='flips=3'):
        node_config.check_value('flips', 3)
    assert node_config.segmenter_arguments(dict(node_config.defaults(), flips=4))['flips'] == 4
    with pytest.raises(ValueError, match="fuse_sizes='1024x'.*comma-separated"):
        node_config.check_value('fuse_sizes', '1024x')
    for bad in (1.0, -0.5):
        with pytest.raises(ValueError, match='fuse_gate=.*below 1'):
            node_config.check_value('fuse_gate', bad)
    for gate, wanted in ((0.0, 0.0), (0.8, 0.8), (-1.0, None)):
        assert node_config.segmenter_arguments(
            dict(node_config.defaults(), fuse_gate=gate))['fuse_gate'] == wanted
    with pytest.raises(ValueError, match='fuse_max_tiles=-2'):
        node_config.check_value('fuse_max_tiles', -2)
    for cap, wanted in ((0, 0), (8, 8), (-1, None)):
        assert node_config.segmenter_arguments(
            dict(node_config.defaults(), fuse_max_tiles=cap))['fuse_max_tiles'] == wanted
    for text, sizes in (('none', ()), ('1024', (1024,)), (' 1024, 2048', (1024, 2048))):
        node_config.check_value('fuse_sizes', text)
        assert node_config.segmenter_arguments(
            dict(node_config.defaults(), fuse_sizes=text))['fuse_sizes'] == sizes


def test_demo_records_a_mask_per_frame(tiny_model_dir, tmp_path):
    """`sat-seg demo` end to end on a 3-frame bag: node and replay in their own processes."""
    from sat_seg_ros import bags
    from sat_seg_ros.demo import run_demo
    from sat_seg_training.dataset import DatasetWriter

    rng = np.random.default_rng(5)
    mask = np.zeros((48, 64), bool)
    mask[5:15, 20:30] = True
    with DatasetWriter(tmp_path / 'dataset') as writer:
        writer.add('a.png', rng.integers(0, 255, (48, 64), dtype=np.uint8), mask=mask)
        writer.add('b.png', rng.integers(0, 255, (48, 64), dtype=np.uint8))
        writer.add('c.png', rng.integers(0, 255, (48, 64), dtype=np.uint8))
    bags.make_bag(tmp_path / 'dataset', tmp_path / 'bag', rate_hz=10.0)
    # The node runs a named mode of the model (a gated fusion) when the demo asks for it.
    model = tmp_path / 'model'
    shutil.copytree(tiny_model_dir, model)
    (model / 'sat_seg.json').write_text(json.dumps(
        {'modes': {'fused': {'fuse_sizes': [1024], 'fuse_gate': 0.5}}}))
    out = tmp_path / 'demo_out'
    summary = run_demo(out=out, bag=tmp_path / 'bag', model=model, mode='fused',
                       domain_id=DOMAIN_ID, log=lambda text: None)
    assert summary['mode'] == 'fused'
    assert 'model_size 512 + 1024 (fuse_gate 0.50)' in (out / 'node.log').read_text()
    assert 4 <= summary['node_tiles']['max'] <= 20
    assert summary['frames_published'] == summary['masks_received'] == 3
    assert summary['labelled_frames'] == 3 and 0.0 <= summary['accuracy'] <= 1.0
    assert summary['latency_ms']['p50'] > 0 and summary['node_exit_code'] == 0
    assert summary['node_counters']['processed'] == 3
    assert len(list((out / 'overlays').glob('*.png'))) == 3
    written = json.loads((out / 'summary.json').read_text())
    assert written['masks_received'] == 3
    topics = bags.bag_topics(out / 'output_bag')
    assert topics['/sat_seg/mask'] == (bags.IMAGE_TYPE, 3)
    assert topics['/camera/image'] == (bags.IMAGE_TYPE, 3)


def test_diagnostics_arithmetic_with_a_fake_clock():
    from sat_seg_ros import diagnostics

    now = [100.0]
    clock = lambda: now[0]  # noqa: E731
    assert diagnostics.percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.5
    assert diagnostics.percentile([], 0.95) != diagnostics.percentile([], 0.95)  # NaN
    rate = diagnostics.RateMeter(window_s=2.0, clock=clock)
    for _ in range(10):
        now[0] += 0.1
        rate.tick()
    assert abs(rate.rate() - 10.0) < 1e-9  # 10 events in the first second
    now[0] += 5.0
    assert rate.rate() == 0.0
    log = diagnostics.RateLimitedLog(period_s=5.0, clock=clock)
    assert log.check('rejected') == (True, 0)
    assert log.check('rejected') == (False, 0) and log.check('rejected') == (False, 0)
    assert log.check('failed') == (True, 0)
    now[0] += 5.0
    assert log.check('rejected') == (True, 2)
    stats = diagnostics.NodeStats(clock=clock)
    assert diagnostics.status_level(stats.snapshot()) == (0, 'waiting for images')
    stats.count('received')
    stats.frame_done(0.040, 0.030, tiles=13)
    first = stats.snapshot()
    assert first['latency_p50_ms'] == 40.0 and diagnostics.status_level(first) == (0, 'ok')
    assert first['tiles_p50'] == first['tiles_max'] == 13
    stats.count('received')
    stats.count('rejected')
    level, message = diagnostics.status_level(stats.snapshot(), first)
    assert level == 1 and '1 frame(s) rejected' in message
    now[0] += 6.0
    assert 'no input for 6.0 s' in diagnostics.status_level(stats.snapshot(), stats.snapshot())[1]
    assert diagnostics.format_value(float('nan')) == 'n/a'
    assert diagnostics.format_value(3) == '3' and diagnostics.format_value(0.123) == '0.12'
