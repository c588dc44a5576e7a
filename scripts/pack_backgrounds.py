#!/usr/bin/env python3
"""Write compact JPEG copies of a backgrounds folder's usable photographs.

For a training machine that the originals are too large to carry to (the FlightGear textures
are some 250 MB of PNG; their copies at quality 80 with the 2048 px ones halved, 24 MB). The
same selection as `sat-seg synth --backgrounds` (names, size, flatness, and the exclude list),
so a run on the copies draws from the same photographs (docs/data.md).

    python scripts/pack_backgrounds.py TEXTURES OUT --exclude RESERVED_LIST [--quality 80]
"""

import argparse
import logging
import pathlib
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('folder', type=pathlib.Path, help='folder of aerial photographs')
    parser.add_argument('out', type=pathlib.Path, help='new folder for the JPEG copies')
    parser.add_argument('--exclude', type=pathlib.Path, default=None, metavar='FILE',
                        help='names to leave out, one per line (as --exclude-backgrounds)')
    parser.add_argument('--quality', type=int, default=80, help='JPEG quality (default 80)')
    parser.add_argument('--halve-from', type=int, default=2048, metavar='PX',
                        help='halve photographs whose longer side is at least PX (default 2048)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    from sat_seg_training.backgrounds import pack_backgrounds, read_exclude_list
    try:
        written = pack_backgrounds(args.folder, args.out, read_exclude_list(args.exclude),
                                   args.quality, args.halve_from)
    except ValueError as error:
        print(f'pack_backgrounds: {error}', file=sys.stderr)
        return 2
    size = sum(path.stat().st_size for path in written)
    print(f'wrote {len(written)} JPEG copies to {args.out} ({size / 1e6:.1f} MB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
