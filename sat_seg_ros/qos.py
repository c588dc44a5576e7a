"""Image subscription QoS that adapts its reliability to the publishers, as rosbag2 does.

Why: with Fast DDS across processes, best-effort delivery of frames of about 1 MB or more loses
most of them (PyPI Fast DDS, two processes on one host, 2026-11-27: 512x641 rgb8 2/10
delivered, 2048x2048 mono8 0/10), while reliable delivery loses none. A best-effort
subscription (the usual sensor-data QoS) therefore starves on big frames even when the camera
offers reliable. A reliable subscription, on the other hand, gets nothing from a best-effort
publisher (incompatible QoS).

``auto`` (the default) does what ``ros2 bag record`` does when it adapts to offers: reliable when
every publisher of the topic offers reliable, best-effort as soon as one offers only best-effort,
best-effort while no publisher is known (compatible with any publisher that appears; the node
re-checks the graph and re-subscribes when the answer changes). ``reliable`` and ``best_effort``
force the mode. The decision is pure (:func:`choose_reliability`); rclpy is imported only by the
helpers that build profiles or read the graph.
"""

from __future__ import annotations

import os
from pathlib import Path
import sys
from typing import Any, Iterable, MutableMapping, Optional

RELIABILITY_MODES = ('auto', 'reliable', 'best_effort')
FASTDDS_PROFILE_NAME = 'fastdds_large_frames.xml'
FASTDDS_PROFILE_VARIABLES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')
RELIABLE = 'reliable'
BEST_EFFORT = 'best_effort'


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is in RELIABILITY_MODES, else raise ValueError naming the choices."""
    if mode not in RELIABILITY_MODES:
        raise ValueError('qos.reliability=%r is not one of %s' % (mode, RELIABILITY_MODES))
    return mode


def choose_reliability(mode: str, offered: Iterable[str]) -> str:
    """Return 'reliable' or 'best_effort' for a subscription given the publishers' ``offered``.

    ``offered`` holds each publisher's reliability ('reliable', 'best_effort' or anything else,
    e.g. 'unknown', treated as best-effort, the safe side). Explicit modes win.
    """
    check_mode(mode)
    if mode != 'auto':
        return mode
    offered = list(offered)
    if offered and all(value == RELIABLE for value in offered):
        return RELIABLE
    return BEST_EFFORT


def reliability_name(policy: Any) -> str:
    """Return 'reliable', 'best_effort' or 'unknown' for an rclpy ReliabilityPolicy (or name)."""
    name = getattr(policy, 'name', str(policy)).lower()
    if name.endswith('best_effort'):
        return BEST_EFFORT
    if name.endswith('reliable'):
        return RELIABLE
    return 'unknown'


def offered_reliabilities(node: Any, topic: str, ignore_node: Optional[str] = None) -> list:
    """Return the reliability offered by each publisher of ``topic`` in ``node``'s graph.

    ``topic`` must be fully resolved (e.g. ``subscription.topic_name``). Publishers of the node
    named ``ignore_node`` (its own, if any) are left out.
    """
    infos = node.get_publishers_info_by_topic(topic)
    return [reliability_name(info.qos_profile.reliability) for info in infos
            if ignore_node is None or info.node_name != ignore_node]


def image_qos(reliability: str, depth: int) -> Any:
    """Return an rclpy QoSProfile: keep-last ``depth``, volatile, the given reliability."""
    from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)

    if reliability not in (RELIABLE, BEST_EFFORT):
        raise ValueError("reliability=%r must be 'reliable' or 'best_effort'" % (reliability,))
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError('qos.depth=%r must be an integer >= 1' % (depth,))
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
        reliability=(ReliabilityPolicy.RELIABLE if reliability == RELIABLE
                     else ReliabilityPolicy.BEST_EFFORT))


def fastdds_profile_path() -> Optional[Path]:
    """Return config/fastdds_large_frames.xml: installed share folder, then the source tree."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory('sat_seg_ros')) / 'config')
    except (ImportError, LookupError, OSError, ValueError):
        pass
    candidates.append(Path(sys.prefix) / 'share' / 'sat_seg_ros' / 'config')
    candidates.append(Path(__file__).resolve().parent.parent / 'config')
    for folder in candidates:
        if (folder / FASTDDS_PROFILE_NAME).is_file():
            return folder / FASTDDS_PROFILE_NAME
    return None


def use_large_frame_profile(environ: MutableMapping[str, str] = os.environ) -> Optional[str]:
    """Point Fast DDS at the large-frame profile unless a profile or another RMW is chosen.

    Best-effort frames of about 1 MB or more are lost between processes with Fast DDS's default
    shared-memory segment; the profile enlarges it (see the XML). It acts in the PUBLISHING
    process, so our publishers (the node's outputs, ``bag play``) use it; camera drivers need
    the same variable (docs/ros.md). Call before rclpy creates its first participant. Returns
    the profile now in effect, or None.
    """
    for name in FASTDDS_PROFILE_VARIABLES:
        if environ.get(name):
            return environ[name]
    if environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp') != 'rmw_fastrtps_cpp':
        return None
    path = fastdds_profile_path()
    if path is not None:
        environ[FASTDDS_PROFILE_VARIABLES[0]] = str(path)
    return str(path) if path else None
