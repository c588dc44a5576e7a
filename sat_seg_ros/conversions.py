"""``sensor_msgs/Image`` <-> numpy, for every common encoding (no ROS import).

The functions work on any message-like object with the ``sensor_msgs/Image`` fields (``height``,
``width``, ``encoding``, ``is_bigendian``, ``step``, ``data``): rclpy messages, rosbags messages
or a ``types.SimpleNamespace``. Decoding never trusts the message: a wrong ``step``, truncated or
oversized ``data``, a zero-size frame or an unknown encoding raise ImageConversionError naming the
bad value and what would be accepted.
"""

from __future__ import annotations

import array
import sys
from typing import Any, Dict, NamedTuple, Tuple

import numpy as np


class ImageConversionError(ValueError):
    """A ``sensor_msgs/Image`` cannot be converted (bad encoding, step, size or data)."""


class Encoding(NamedTuple):
    """Pixel layout of one ``sensor_msgs/Image`` encoding."""

    dtype: str        # numpy dtype name of one channel
    channels: int
    order: str        # channel order: 'gray', 'rgb', 'bgr', 'rgba', 'bgra'


#: Supported encodings (names as in sensor_msgs/image_encodings.hpp).
ENCODINGS: Dict[str, Encoding] = {
    'mono8': Encoding('uint8', 1, 'gray'),
    'mono16': Encoding('uint16', 1, 'gray'),
    '8UC1': Encoding('uint8', 1, 'gray'),
    '16UC1': Encoding('uint16', 1, 'gray'),
    '32FC1': Encoding('float32', 1, 'gray'),
    'rgb8': Encoding('uint8', 3, 'rgb'),
    'bgr8': Encoding('uint8', 3, 'bgr'),
    '8UC3': Encoding('uint8', 3, 'bgr'),
    'rgba8': Encoding('uint8', 4, 'rgba'),
    'bgra8': Encoding('uint8', 4, 'bgra'),
    '8UC4': Encoding('uint8', 4, 'bgra'),
    'rgb16': Encoding('uint16', 3, 'rgb'),
    'bgr16': Encoding('uint16', 3, 'bgr'),
    'rgba16': Encoding('uint16', 4, 'rgba'),
    'bgra16': Encoding('uint16', 4, 'bgra'),
}

_NATIVE_BIG_ENDIAN = sys.byteorder == 'big'


def _encoding(name: str) -> Encoding:
    try:
        return ENCODINGS[name]
    except KeyError:
        raise ImageConversionError(
            'unsupported encoding %r; supported: %s (convert the camera output to one of them, '
            'e.g. with image_proc for bayer_* images)' % (name, ', '.join(sorted(ENCODINGS)))
        ) from None


def _as_buffer(data: Any) -> memoryview:
    """Return a byte view of a message's ``data`` without copying when possible."""
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        view = memoryview(data)
        return view.cast('B') if view.format != 'B' or view.ndim != 1 else view
    if isinstance(data, (list, tuple)):
        return memoryview(bytes(data))
    raise ImageConversionError('image data of type %s is not a byte buffer'
                               % type(data).__name__)


def image_to_numpy(msg: Any) -> np.ndarray:
    """Decode an Image message into HxW or HxWxC numpy, channels in the encoding's own order.

    The result shares memory with ``msg.data`` when no byte swap is needed (treat it as
    read-only); rows padded by ``step`` are skipped without copying.
    """
    encoding = _encoding(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError('zero-size image (height=%d, width=%d)' % (height, width))
    dtype = np.dtype(encoding.dtype)
    row_bytes = width * encoding.channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            'step=%d is smaller than width * channels * bytes = %d * %d * %d = %d for %s'
            % (step, width, encoding.channels, dtype.itemsize, row_bytes, msg.encoding))
    if step % dtype.itemsize:
        raise ImageConversionError('step=%d is not a multiple of the %d-byte pixel channel of %s'
                                   % (step, dtype.itemsize, msg.encoding))
    buffer = _as_buffer(msg.data)
    expected = step * height
    if len(buffer) != expected:
        raise ImageConversionError(
            'data has %d bytes but step * height = %d * %d = %d (%s)'
            % (len(buffer), step, height, expected,
               'truncated' if len(buffer) < expected else 'too long'))
    stored = dtype.newbyteorder('>' if msg.is_bigendian else '<') if dtype.itemsize > 1 else dtype
    flat = np.frombuffer(buffer, dtype=stored)
    rows = flat.reshape(height, step // dtype.itemsize)[:, :width * encoding.channels]
    shape: Tuple[int, ...] = (height, width) if encoding.channels == 1 else (
        height, width, encoding.channels)
    image = rows.reshape(shape)
    if stored != dtype:  # byte order differs from this machine's: swap (copies)
        image = image.astype(dtype)
    return image


def image_to_frame(msg: Any) -> np.ndarray:
    """Decode an Image message into the Segmenter's frame: HxW gray, HxWx3 RGB or HxWx4 RGBA.

    BGR(A) channels are reordered (a view, no copy). ``32FC1`` frames stay float32: the
    Segmenter reads floats as intensities in [0, 1]; NaN (e.g. invalid pixels) becomes 0 and
    +-inf the range's ends, so one bad pixel cannot turn the whole probability map into NaN.
    """
    image = image_to_numpy(msg)
    if image.dtype.kind == 'f' and not np.isfinite(image).all():
        image = np.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0)
    order = ENCODINGS[msg.encoding].order
    if order == 'bgr':
        return image[:, :, ::-1]
    if order == 'bgra':
        return image[:, :, [2, 1, 0, 3]]
    return image


def encoding_for(image: np.ndarray, color_order: str = 'rgb') -> str:
    """Return the encoding that stores ``image`` as is (``color_order``: 'rgb' or 'bgr')."""
    if color_order not in ('rgb', 'bgr'):
        raise ValueError("color_order=%r must be 'rgb' or 'bgr'" % (color_order,))
    image = np.asarray(image)
    channels = 1 if image.ndim == 2 else image.shape[2]
    by_dtype = {
        ('uint8', 1): 'mono8', ('uint16', 1): 'mono16', ('float32', 1): '32FC1',
        ('uint8', 3): color_order + '8', ('uint16', 3): color_order + '16',
        ('uint8', 4): color_order + 'a8', ('uint16', 4): color_order + 'a16',
    }
    try:
        return by_dtype[(image.dtype.name, channels)]
    except KeyError:
        raise ImageConversionError(
            'no encoding for an array of dtype %s with %d channel(s); use uint8/uint16 with 1, 3 '
            'or 4 channels, or float32 with 1' % (image.dtype, channels)) from None


def image_fields(image: np.ndarray, encoding: str = '') -> Dict[str, Any]:
    """Return the Image fields (height, width, encoding, is_bigendian, step, data) of ``image``.

    ``data`` is ``bytes`` in native byte order. ``encoding`` empty: chosen by ``encoding_for``.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageConversionError('cannot build an image from an array of shape %s'
                                   % (image.shape,))
    name = encoding or encoding_for(image)
    layout = _encoding(name)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels != layout.channels or image.dtype != np.dtype(layout.dtype):
        raise ImageConversionError(
            'array of dtype %s with %d channel(s) does not match encoding %s (%s x %d)'
            % (image.dtype, channels, name, layout.dtype, layout.channels))
    height, width = image.shape[:2]
    return {
        'height': int(height), 'width': int(width), 'encoding': name,
        'is_bigendian': int(_NATIVE_BIG_ENDIAN),
        'step': int(width * channels * image.dtype.itemsize),
        'data': np.ascontiguousarray(image).tobytes(),
    }


def fill_image(msg: Any, image: np.ndarray, encoding: str = '', header: Any = None) -> Any:
    """Set the fields of an Image message ``msg`` from ``image`` and return ``msg``.

    ``msg.data`` becomes an ``array.array('B')`` (what rclpy copies fastest); for rosbags
    messages use :func:`image_fields` and a numpy ``data`` instead.
    """
    fields = image_fields(image, encoding)
    msg.height = fields['height']
    msg.width = fields['width']
    msg.encoding = fields['encoding']
    msg.is_bigendian = fields['is_bigendian']
    msg.step = fields['step']
    msg.data = array.array('B', fields['data'])
    if header is not None:
        msg.header = header
    return msg


def mask_to_mono8(mask: np.ndarray) -> np.ndarray:
    """Return a boolean HxW mask as uint8 0/255 (the published ``~/mask`` values)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ImageConversionError('mask of shape %s must be HxW' % (mask.shape,))
    return (mask != 0).astype(np.uint8) * np.uint8(255)
