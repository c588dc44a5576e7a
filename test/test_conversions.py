"""Image message <-> numpy round trips for every encoding, and rejection of malformed frames."""

import array
import types

import numpy as np
import pytest

from sat_seg_ros import conversions
from sat_seg_ros.conversions import ImageConversionError


def message(image, encoding):
    """Return a message-like object built the way the node builds its outputs."""
    return conversions.fill_image(types.SimpleNamespace(), image, encoding)


def sample(encoding, height=5, width=7, seed=0):
    layout = conversions.ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (height, width) if layout.channels == 1 else (height, width, layout.channels)
    if layout.dtype == 'float32':
        return rng.random(shape, dtype=np.float32)
    info = np.iinfo(layout.dtype)
    return rng.integers(0, info.max, shape, endpoint=True).astype(layout.dtype)


@pytest.mark.parametrize('encoding', sorted(conversions.ENCODINGS))
def test_round_trip_every_encoding(encoding):
    image = sample(encoding)
    msg = message(image, encoding)
    assert isinstance(msg.data, array.array)
    assert (msg.height, msg.width, msg.encoding) == (5, 7, encoding)
    assert msg.step == 7 * image.itemsize * (1 if image.ndim == 2 else image.shape[2])
    decoded = conversions.image_to_numpy(msg)
    assert decoded.dtype == image.dtype
    np.testing.assert_array_equal(decoded, image)


def test_frame_is_rgb_for_bgr_encodings_and_keeps_rgb_as_is():
    rgb = sample('rgb8')
    np.testing.assert_array_equal(conversions.image_to_frame(message(rgb, 'rgb8')), rgb)
    np.testing.assert_array_equal(
        conversions.image_to_frame(message(np.ascontiguousarray(rgb[:, :, ::-1]), 'bgr8')), rgb)
    rgba = sample('rgba8')
    bgra = np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]])
    np.testing.assert_array_equal(conversions.image_to_frame(message(bgra, 'bgra8')), rgba)
    mono16 = sample('mono16')
    np.testing.assert_array_equal(conversions.image_to_frame(message(mono16, 'mono16')),
                                  mono16)
    depth = sample('32FC1')
    assert conversions.image_to_frame(message(depth, '32FC1')).dtype == np.float32


@pytest.mark.parametrize('data_type', ['bytes', 'bytearray', 'numpy', 'list'])
def test_data_buffer_types_from_rclpy_rosbags_and_python(data_type):
    image = sample('mono8')
    msg = message(image, 'mono8')
    raw = bytes(msg.data)
    msg.data = {'bytes': raw, 'bytearray': bytearray(raw),
                'numpy': np.frombuffer(raw, np.uint8), 'list': list(raw)}[data_type]
    np.testing.assert_array_equal(conversions.image_to_numpy(msg), image)


def test_padded_rows_are_skipped():
    image = sample('rgb8', height=4, width=3)
    padded = np.zeros((4, 16), np.uint8)
    padded[:, :9] = image.reshape(4, 9)
    msg = types.SimpleNamespace(height=4, width=3, encoding='rgb8', is_bigendian=0, step=16,
                                data=padded.tobytes())
    np.testing.assert_array_equal(conversions.image_to_numpy(msg), image)


def test_big_endian_16_bit_is_swapped():
    image = sample('mono16')
    msg = types.SimpleNamespace(height=5, width=7, encoding='mono16', is_bigendian=1, step=14,
                                data=image.astype('>u2').tobytes())
    decoded = conversions.image_to_numpy(msg)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, image)


def test_decoding_does_not_copy_native_data():
    msg = message(sample('mono8'), 'mono8')
    decoded = conversions.image_to_numpy(msg)
    assert np.shares_memory(decoded, np.frombuffer(msg.data, np.uint8))


def bad(**fields):
    base = {'height': 4, 'width': 6, 'encoding': 'mono8', 'is_bigendian': 0, 'step': 6,
            'data': bytes(24)}
    base.update(fields)
    return types.SimpleNamespace(**base)


@pytest.mark.parametrize('fields, words', [
    ({'encoding': 'bayer_rggb8'}, ['bayer_rggb8', 'supported', 'mono8']),
    ({'encoding': 'yuv422'}, ['yuv422']),
    ({'height': 0, 'data': b''}, ['zero-size']),
    ({'width': 0, 'step': 0, 'data': b''}, ['zero-size']),
    ({'step': 5}, ['step=5', 'smaller']),
    ({'data': bytes(23)}, ['23 bytes', 'truncated']),
    ({'data': bytes(30)}, ['30 bytes', 'too long']),
    ({'encoding': 'mono16', 'step': 13, 'data': bytes(52)}, ['step=13', 'multiple']),
    ({'data': 'not bytes'}, ['not a byte buffer']),
])
def test_malformed_frames_are_rejected_with_the_reason(fields, words):
    with pytest.raises(ImageConversionError) as raised:
        conversions.image_to_frame(bad(**fields))
    for word in words:
        assert word in str(raised.value)


def test_encoding_for_and_mask_values():
    assert conversions.encoding_for(np.zeros((2, 2), np.uint8)) == 'mono8'
    assert conversions.encoding_for(np.zeros((2, 2, 3), np.uint8), 'bgr') == 'bgr8'
    assert conversions.encoding_for(np.zeros((2, 2), np.float32)) == '32FC1'
    with pytest.raises(ImageConversionError, match='int64'):
        conversions.encoding_for(np.zeros((2, 2), np.int64))
    mask = conversions.mask_to_mono8(np.array([[True, False], [False, True]]))
    assert mask.dtype == np.uint8 and sorted(np.unique(mask)) == [0, 255]
    with pytest.raises(ImageConversionError, match='does not match'):
        conversions.image_fields(np.zeros((2, 2), np.uint8), 'rgb8')


def test_rclpy_message_round_trip():
    pytest.importorskip('sensor_msgs.msg', reason='rclpy message packages not installed')
    from sensor_msgs.msg import Image

    image = sample('bgra8', height=32, width=48)
    msg = conversions.fill_image(Image(), image, 'bgra8')
    np.testing.assert_array_equal(conversions.image_to_numpy(msg), image)


def test_float_frames_with_nan_and_inf_become_finite_intensities():
    values = np.array([[0.25, np.nan], [np.inf, -np.inf]], np.float32)
    msg = message(values, '32FC1')
    frame = conversions.image_to_frame(msg)
    assert frame.dtype == np.float32
    assert frame.tolist() == [[0.25, 0.0], [1.0, 0.0]]
