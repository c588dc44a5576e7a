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

RUNTIME = 'sat_seg_ros.commands.'
OFFLINE = 'sat_seg_training.commands.'  # the top-level training/ folder, imported only here
#: name -> (module, one-line help shown by ``sat-seg --help``). Runtime commands live in
#: sat_seg_ros; the offline ones in training/, which only the commands that need it import.
COMMANDS: Dict[str, Tuple[str, str]] = {
    'infer': (RUNTIME + 'infer', 'segment image files or folders into masks and detections.json'),
    'evaluate': (OFFLINE + 'evaluate', "the report's Table 1 for a model on a dataset"),
    'compare': (OFFLINE + 'compare', "two models' paired result on the same images "
                                     '(evaluate reports)'),
    'bench': (RUNTIME + 'bench', 'latency, GFLOP and peak memory per frame vs the naive pipeline'),
    'synth': (OFFLINE + 'synth', 'generate a synthetic aerial dataset with satellites'),
    'import': (OFFLINE + 'importers', 'convert COCO / YOLO / CSV bbox labels into the dataset '
                                      'layout'),
    'label': (OFFLINE + 'label', 'derive masks from bbox labels (SAM automatic, SAM box, '
                                 'GrabCut)'),
    'patches': (OFFLINE + 'patches', 'cut multi-scale 256 px training patches from a dataset'),
    'split': (OFFLINE + 'split', 'split a dataset into train / val / test by image'),
    'train': (OFFLINE + 'train', 'train a compact SAM or fine-tune a SamModel (YAML recipe)'),
    'calibrate': (OFFLINE + 'calibrate', 'choose the threshold on validation and store it in '
                                         'sat_seg.json'),
    'export': (OFFLINE + 'export', 'export a model to a self-contained ONNX folder for '
                                   'onnxruntime / TensorRT'),
    'build-engine': (RUNTIME + 'build_engine',
                     'build a TensorRT engine from an exported ONNX graph'),
    'bag': (RUNTIME + 'bag', 'rosbag2 tools: make a camera bag, run the segmenter offline, play '
                             'a bag'),
    'demo': (RUNTIME + 'demo', 'the main job on the bundled sample: node + replay over DDS, '
                               'summary'),
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
    # (508 ms vs 115 ms per batch under load, 2-core development machine, 2026-11-27). Must be
    # set before torch loads.
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
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ImportError as error:
        print('sat-seg %s: error: this command needs a package that is not installed (%s); '
              "install the offline tools with pip install '.[all]'" % (name, error),
              file=sys.stderr)
        return 2
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
