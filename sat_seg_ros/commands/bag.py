"""``sat-seg bag make|run|play``: rosbag2 tools (``rosbags``; mcap by default, sqlite3 too)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sat_seg_ros.commands.options import add_segmenter_arguments, segmenter_from_args

HELP = 'rosbag2 tools: make a camera bag, run the segmenter offline, play a bag over DDS'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``make``, ``run`` and ``play`` actions and their options."""
    actions = parser.add_subparsers(dest='action', metavar='ACTION', required=True)

    make = actions.add_parser('make', help='dataset (contract layout) -> camera bag',
                              description='Write a dataset as a rosbag2: sensor_msgs/Image on '
                              '/camera/image, and the true masks as PNG CompressedImage on '
                              '/camera/true_mask/compressed where known.')
    make.add_argument('--dataset', required=True, type=Path, help='dataset folder')
    make.add_argument('--out', required=True, type=Path, help='output bag folder (new)')
    make.add_argument('--rate', type=float, default=5.0, help='frames per second (default 5)')
    make.add_argument('--limit', type=int, default=None, help='first N images only')
    make.add_argument('--frame-id', default='camera', help="header frame_id (default 'camera')")
    _storage(make)

    run = actions.add_parser('run', help='segment every frame of a bag offline (no DDS)',
                             description='Run every frame through the Segmenter and write the '
                             'topics of the node (/sat_seg/mask, /sat_seg/detected, '
                             '/sat_seg/detections) with the input stamps.')
    run.add_argument('--bag', required=True, type=Path, help='input bag folder')
    run.add_argument('--out', required=True, type=Path, help='output bag folder (new)')
    run.add_argument('--topic', default=None,
                     help='image topic (default: /camera/image or the only Image topic)')
    add_segmenter_arguments(run)
    run.add_argument('--overlay', action='store_true', help='also write /sat_seg/overlay')
    _storage(run)

    play = actions.add_parser('play', help='publish the images of a bag over DDS, timed',
                              description='Publish the sensor_msgs/Image topic of a bag with '
                              'its recorded timing (like "ros2 bag play", which you can use '
                              'instead where ROS 2 is installed).')
    play.add_argument('--bag', required=True, type=Path, help='bag folder')
    play.add_argument('--topic', default=None, help='image topic in the bag')
    play.add_argument('--remap', default=None, help='publish under this topic name instead')
    play.add_argument('--rate', type=float, default=1.0, help='speed factor (default 1.0)')
    play.add_argument('--loop', action='store_true', help='play until interrupted')
    play.add_argument('--qos-reliability', choices=('reliable', 'best_effort'),
                      default='reliable', help='publisher reliability (default reliable: large '
                      'frames survive across processes)')
    play.add_argument('--wait-for-subscribers', type=int, default=0, metavar='N',
                      help='wait for N matched subscribers before playing')
    play.add_argument('--wait-timeout', type=float, default=60.0,
                      help='seconds to wait for --wait-for-subscribers (default 60)')
    play.add_argument('--paced-by', default=None, metavar='TOPIC',
                      help='after each frame wait for an Image with its stamp on TOPIC '
                           '(e.g. /sat_seg/mask), so a slow node sees every frame')
    play.add_argument('--pace-timeout', type=float, default=60.0,
                      help='seconds to wait per frame with --paced-by (default 60)')
    play.add_argument('--publish-log', type=Path, default=None,
                      help='write [stamp_ns, unix time] per published frame to this JSON file')


def _storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap',
                        help='rosbag2 storage (default mcap)')
    parser.add_argument('--overwrite', action='store_true', help='replace --out if it exists')


def _progress(desc: str):
    from tqdm import tqdm

    bar = tqdm(unit='frame', desc=desc)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    return bar, update


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; print its JSON summary; exit 0."""
    from sat_seg_ros import bags

    if args.action == 'make':
        bar, update = _progress('bag make')
        with bar:
            summary = bags.make_bag(args.dataset, args.out, rate_hz=args.rate,
                                    storage=args.storage, frame_id=args.frame_id,
                                    limit=args.limit, overwrite=args.overwrite, progress=update)
    elif args.action == 'run':
        segmenter = segmenter_from_args(args)
        bar, update = _progress('bag run')
        with bar:
            summary = bags.run_bag(args.bag, args.out, segmenter, topic=args.topic,
                                   storage=args.storage, overlay=args.overlay,
                                   overwrite=args.overwrite, progress=update)
    else:
        summary = bags.play_bag(args.bag, topic=args.topic, rate=args.rate, loop=args.loop,
                                remap=args.remap, reliability=args.qos_reliability,
                                wait_for_subscribers=args.wait_for_subscribers,
                                wait_timeout_s=args.wait_timeout, paced_by=args.paced_by,
                                pace_timeout_s=args.pace_timeout, publish_log=args.publish_log)
    print(json.dumps(summary, indent=1))
    return 0
