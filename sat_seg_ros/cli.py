"""The ``sat-seg`` command line: a dispatcher that imports only the chosen subcommand.

Importing lazily keeps ``sat-seg infer --backend onnxruntime`` free of torch, and start-up fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Dict, List, Optional, Tuple

#: name -> (module under sat_seg_ros.commands, one-line help shown by ``sat-seg --help``).
COMMANDS: Dict[str, Tuple[str, str]] = {
    'infer': ('infer', 'segment image files or folders into masks and detections.json'),
    'evaluate': ('evaluate', "the report's Table 1 for a model on a dataset"),
    'bench': ('bench', 'latency, GFLOP and peak memory per frame vs the naive pipeline'),
    'synth': ('synth', 'generate a synthetic aerial dataset with satellites'),
    'import': ('importers', 'convert COCO / YOLO / CSV bbox labels into the dataset layout'),
    'label': ('label', 'derive masks from bbox labels (SAM automatic, SAM box, GrabCut)'),
    'patches': ('patches', 'cut multi-scale 256 px training patches from a dataset'),
    'split': ('split', 'split a dataset into train / val / test by image'),
    'train': ('train', 'fine-tune a SamModel on a patch set'),
    'calibrate': ('calibrate', 'choose the threshold on validation and store it in sat_seg.json'),
    'export': ('export', 'export a model to ONNX for onnxruntime / TensorRT'),
    'build-engine': ('build_engine', 'build a TensorRT engine from an exported ONNX graph'),
    'bag': ('bag', 'rosbag2 tools: make a camera bag, run the segmenter offline, play a bag'),
    'demo': ('demo', 'the main job on the bundled sample: node + replay over DDS, summary'),
}


def _top_level_parser() -> argparse.ArgumentParser:
    lines = ['commands:'] + ['  %-13s %s' % (name, text) for name, (_, text) in COMMANDS.items()]
    parser = argparse.ArgumentParser(
        prog='sat-seg', description='Satellite segmentation with a fine-tuned SAM.',
        epilog='\n'.join(lines) + "\n\nRun 'sat-seg COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('command', choices=sorted(COMMANDS), metavar='COMMAND')
    parser.add_argument('--version', action='store_true', help='print the version and exit')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``sat-seg COMMAND [options]``; return the exit code.

    Expected failures (missing files, bad values, missing optional packages) print one line and
    exit 2; set SAT_SEG_DEBUG=1 for the traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # OpenMP threads that spin while waiting make torch 4-8x slower when the CPU is shared
    # (measured here: 508 ms vs 115 ms per batch under load). Must be set before torch loads.
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    if argv and argv[0] == '--version':
        from sat_seg_ros import __version__
        print('sat-seg %s' % __version__)
        return 0
    if not argv or argv[0] not in COMMANDS:
        parser = _top_level_parser()
        if not argv or argv[0] in ('-h', '--help'):
            parser.print_help()
            return 0 if argv else 2
        parser.parse_args(argv[:1])  # exits with argparse's message for an unknown command
        return 2
    name = argv[0]
    module = importlib.import_module('sat_seg_ros.commands.' + COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog='sat-seg ' + name, description=module.HELP)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except (FileNotFoundError, ValueError, ImportError) as error:
        if os.environ.get('SAT_SEG_DEBUG'):
            raise
        print('sat-seg %s: error: %s' % (name, error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('sat-seg %s: interrupted' % name, file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
