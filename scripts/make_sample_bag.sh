#!/usr/bin/env bash
# Rebuild the bundled sample bag, sat_seg_ros/data/sample_bag (what `make demo` replays):
# 20 synthetic 512x641 colour frames (rgb8) from `sat-seg synth --color` (seed 90417, kept
# apart from the training seeds; procedural terrain only, so no photograph is shipped; ~20 %
# without a satellite) at 2 Hz, with their true masks as PNG CompressedImage on
# /camera/true_mask/compressed. mcap, ~20 MB (under 20 MiB).
#
#   scripts/make_sample_bag.sh            # uses .venv/bin/sat-seg
#   SAT_SEG=sat-seg scripts/make_sample_bag.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SAT_SEG=${SAT_SEG:-.venv/bin/sat-seg}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$SAT_SEG" synth --out "$work/dataset" --n 20 --seed 90417 --contact 0 --workers 1 --color
"$SAT_SEG" bag make --dataset "$work/dataset" --out sat_seg_ros/data/sample_bag --rate 2 \
    --overwrite
du -sh sat_seg_ros/data/sample_bag
