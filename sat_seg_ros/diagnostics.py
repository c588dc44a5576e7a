"""Rates, latency percentiles, counters and rate-limited logging for the node (pure Python).

Nothing here imports ROS: the node turns :meth:`NodeStats.snapshot` into a
``diagnostic_msgs/DiagnosticArray``; tests and the demo use the same numbers.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the ``fraction`` (0..1) percentile of ``values`` by linear interpolation.

    NaN for an empty sequence (no samples is not the same as zero latency).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError('fraction=%r must be within [0, 1]' % (fraction,))
    ordered = sorted(values)
    if not ordered:
        return float('nan')
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class RateMeter:
    """Events per second over a sliding time window."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        if window_s <= 0:
            raise ValueError('window_s=%r must be > 0' % (window_s,))
        self.window_s = window_s
        self._clock = clock
        self._start = clock()
        self._times: Deque[float] = collections.deque()

    def tick(self, now: Optional[float] = None) -> None:
        """Record one event at ``now`` (default: the clock)."""
        self._times.append(self._clock() if now is None else now)

    def rate(self, now: Optional[float] = None) -> float:
        """Return events per second over the last ``window_s`` seconds (or since creation)."""
        now = self._clock() if now is None else now
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        span = min(self.window_s, now - self._start)
        return len(self._times) / span if span > 0 else 0.0


class LatencyWindow:
    """The last ``size`` latencies (seconds) with p50 / p95 / max."""

    def __init__(self, size: int = 200):
        if size < 1:
            raise ValueError('size=%r must be >= 1' % (size,))
        self._values: Deque[float] = collections.deque(maxlen=size)

    def add(self, seconds: float) -> None:
        """Record one latency in seconds."""
        self._values.append(float(seconds))

    def __len__(self) -> int:
        return len(self._values)

    def summary(self) -> Dict[str, float]:
        """Return ``{'p50': s, 'p95': s, 'max': s}`` (NaN when empty)."""
        values = list(self._values)
        return {'p50': percentile(values, 0.5), 'p95': percentile(values, 0.95),
                'max': max(values) if values else float('nan')}


class RateLimitedLog:
    """Lets one message per key through every ``period_s`` seconds and counts the rest."""

    def __init__(self, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.period_s = period_s
        self._clock = clock
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = collections.defaultdict(int)

    def check(self, key: str) -> Tuple[bool, int]:
        """Return (log now?, messages suppressed since the last one let through for ``key``)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            self._suppressed[key] += 1
            return False, 0
        self._last[key] = now
        return True, self._suppressed.pop(key, 0)


class NodeStats:
    """Thread-safe counters, rates and latencies of the segmentation node."""

    COUNTERS = ('received', 'processed', 'dropped', 'rejected', 'failed')

    def __init__(self, window_s: float = 5.0, latency_samples: int = 200,
                 clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self.counts: Dict[str, int] = dict.fromkeys(self.COUNTERS, 0)
        self.input_rate = RateMeter(window_s, clock)
        self.output_rate = RateMeter(window_s, clock)
        self.latency = LatencyWindow(latency_samples)
        self.inference = LatencyWindow(latency_samples)
        self.tiles = LatencyWindow(latency_samples)  # tiles per frame: a fuse_gate varies them
        self.last_error = ''
        self.last_input_time: Optional[float] = None

    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name`` (one of COUNTERS)."""
        if name not in self.counts:
            raise KeyError('unknown counter %r; known: %s' % (name, self.COUNTERS))
        with self._lock:
            self.counts[name] += amount
            if name == 'received':
                now = self._clock()
                self.input_rate.tick(now)
                self.last_input_time = now

    def frame_done(self, latency_s: float, inference_s: float, tiles: int = 0) -> None:
        """Record a published frame: latency and model time (seconds), tiles the model ran."""
        with self._lock:
            self.counts['processed'] += 1
            self.output_rate.tick()
            self.latency.add(latency_s)
            self.inference.add(inference_s)
            self.tiles.add(tiles)

    def error(self, text: str) -> None:
        """Remember the latest reject / failure reason (shown in diagnostics)."""
        with self._lock:
            self.last_error = text

    def snapshot(self) -> Dict[str, float]:
        """Return a consistent copy of every number (rates in Hz, latencies in ms)."""
        with self._lock:
            now = self._clock()
            latency = self.latency.summary()
            inference = self.inference.summary()
            tiles = self.tiles.summary()
            values: Dict[str, float] = dict(self.counts)
            values.update({
                'input_rate_hz': self.input_rate.rate(now),
                'output_rate_hz': self.output_rate.rate(now),
                'latency_p50_ms': latency['p50'] * 1e3,
                'latency_p95_ms': latency['p95'] * 1e3,
                'latency_max_ms': latency['max'] * 1e3,
                'inference_p50_ms': inference['p50'] * 1e3,
                'tiles_p50': tiles['p50'],
                'tiles_max': tiles['max'],
                'seconds_since_input': (now - self.last_input_time
                                        if self.last_input_time is not None else float('nan')),
            })
            return values


def format_value(value: object) -> str:
    """Format a diagnostics value: counters as integers, floats with 2 decimals, NaN as 'n/a'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return 'n/a' if value != value else '%.2f' % value
    return str(value)


def status_level(values: Dict[str, float], previous: Optional[Dict[str, float]] = None,
                 stale_after_s: float = 5.0) -> Tuple[int, str]:
    """Return (level, message) for the node's DiagnosticStatus: 0 OK or 1 WARN.

    WARN when no frame arrived for ``stale_after_s`` seconds after frames did arrive, or when
    frames were rejected or failed since the ``previous`` snapshot; the message says which.
    """
    if values.get('received', 0) == 0:
        return 0, 'waiting for images'
    problems: List[str] = []
    since = values.get('seconds_since_input', float('nan'))
    if since == since and since > stale_after_s:
        problems.append('no input for %.1f s' % since)
    for name in ('rejected', 'failed'):
        new = values.get(name, 0) - (previous or {}).get(name, 0)
        if new > 0:
            problems.append('%d frame(s) %s' % (new, name))
    if problems:
        return 1, ', '.join(problems)
    return 0, 'ok'
