#!/usr/bin/env bash
# Turn a training checkpoint into a calibrated model folder like the bundled one
# (sat_seg_ros/models/default): export, then choose the post-processing on validation for each
# way the folder runs: model size 512 (the top level of sat_seg.json), 1024
# (by_model_size["1024"]), 2048 (by_model_size["2048"]), 512 + 1024 fused
# (by_model_size["512+1024"]) and the named modes
# 'accurate' (64 px tile overlap + four mirrored views at 512; modes["accurate"]) and
# 'multiscale' (512 fused with 768 and 1024; modes["multiscale"]); the two fusions also
# choose their fuse_gate (the largest of 0-0.9 that keeps the ungated accuracy), and are
# then calibrated again with their fused tiles capped (fuse_max_tiles, a bound for real-time
# budgets: 512 + 1024 at most 4 + 8 tiles a frame, 'multiscale' 4 + 9); with a
# GRAY_VALIDATION_SET (the gray twins of the validation scenes) also the mode 'gray' (the 512
# settings chosen on gray frames, for mono cameras; modes["gray"]).
# The folder is written to OUT; copy it over sat_seg_ros/models/default to ship it.
#
#   scripts/bundle_model.sh CHECKPOINT OUT VALIDATION_SET [GRAY_VALIDATION_SET]
#   scripts/bundle_model.sh runs/s20/slim.pt runs/candidate runs/data_fgc/val runs/data_fg/val
#   SAT_SEG=sat-seg scripts/bundle_model.sh ...      # default: .venv/bin/sat-seg
set -euo pipefail
if [ $# -lt 3 ] || [ $# -gt 4 ]; then
    sed -n '2,18p' "$0" >&2
    exit 2
fi
checkpoint=$1 out=$2 val=$3 gray=${4:-}
SAT_SEG=${SAT_SEG:-.venv/bin/sat-seg}
[ -f "$checkpoint" ] || { echo "no checkpoint at $checkpoint" >&2; exit 1; }
for set in "$val" ${gray:+"$gray"}; do
    [ -f "$set/annotations.json" ] || { echo "$set is not a dataset folder (no annotations.json)" >&2; exit 1; }
done
[ -e "$out" ] && { echo "$out exists: remove it or choose another OUT" >&2; exit 1; }
common=(--dataset "$val" --max-detections 1 --min-areas 16,64,160)
"$SAT_SEG" train --export "$checkpoint" "$out"
"$SAT_SEG" calibrate --model "$out" "${common[@]}" --size 512
"$SAT_SEG" calibrate --model "$out" "${common[@]}" --size 1024
"$SAT_SEG" calibrate --model "$out" "${common[@]}" --size 2048
gates=(--fuse-gates 0,0.6,0.7,0.8,0.9)
"$SAT_SEG" calibrate --model "$out" "${common[@]}" --fuse-sizes 1024 "${gates[@]}"
"$SAT_SEG" calibrate --model "$out" "${common[@]}" --fuse-sizes 1024 --fuse-max-tiles 8
"$SAT_SEG" calibrate --model "$out" "${common[@]}" --mode accurate --tile-overlap 64 --flips 4
"$SAT_SEG" calibrate --model "$out" "${common[@]}" --mode multiscale --fuse-sizes 768,1024 \
    "${gates[@]}"
"$SAT_SEG" calibrate --model "$out" "${common[@]}" --mode multiscale --fuse-max-tiles 9
if [ -n "$gray" ]; then
    "$SAT_SEG" calibrate --model "$out" --dataset "$gray" --max-detections 1 --min-areas 16,64,160 \
        --mode gray
fi
echo "calibrated model folder: $out"
