#!/usr/bin/env bash
# Run one training config on a machine with python3, torch (CUDA), transformers, accelerate,
# opencv, pyyaml, tqdm and matplotlib but without this package installed (a bare GPU machine
# given a copy of this repository), then gather what the run made into RESULTS, small enough to
# carry back: train.log, summary.json, curves.png, the exported model folder's three files
# (RESULTS/model/) and slim.pt (the weights, dense head and history of last.pt, no optimizer
# state: what a later stage starts from with init_from).
#
#   scripts/train_on_gpu.sh CONFIG RESULTS [KEY=VALUE ...]        # overrides as `train --set`
#   scripts/train_on_gpu.sh configs/cnn_stage20_gpu.yaml /tmp/results backgrounds=/data/textures
set -uo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,10p' "$0" >&2
    exit 2
fi
config=$1 results=$2
shift 2
PYTHON=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$results/model" || exit 1
# The training package installs as sat_seg_training (setup.py); without the install, a link.
site=$(mktemp -d)
ln -s "$root/training" "$site/sat_seg_training"
export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$root" || exit 1
"$PYTHON" - <<'PY' 2>&1 | tee "$results/train.log"
import os, platform, torch, transformers
print('machine:', platform.machine(), os.cpu_count(), 'cores,',
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device',
      '| torch', torch.__version__, '| transformers', transformers.__version__)
PY
out_dir=$("$PYTHON" -c "import sys; from sat_seg_training.train_config import load_config; \
print(load_config(sys.argv[1], sys.argv[2:]).out_dir)" "$config" "$@") || exit 1
slim() {  # last.pt without its optimizer state, written atomically to RESULTS/slim.pt
    [ -f "$out_dir/last.pt" ] || return 1
    "$PYTHON" - "$out_dir/last.pt" "$results/slim.pt" <<'PY'
import os, sys, torch
state = torch.load(sys.argv[1], map_location='cpu', weights_only=False)
keep = ('model', 'ema', 'sam_config', 'dense_head', 'train_config', 'step', 'best', 'history',
        'elapsed_s', 'planned_steps', 'data_digest')
torch.save({key: state[key] for key in keep if key in state}, sys.argv[2] + '.tmp')
os.replace(sys.argv[2] + '.tmp', sys.argv[2])
PY
}
# Should the run be killed (a time limit), RESULTS still holds a recent slim.pt.
(while sleep 60; do slim 2>/dev/null; done) &
snapshots=$!
"$PYTHON" -m sat_seg_ros.cli train --quiet --config "$config" --set "$@" 2>&1 \
    | tee -a "$results/train.log"
status=${PIPESTATUS[0]}
kill "$snapshots" 2>/dev/null
slim || { echo "no $out_dir/last.pt: nothing to gather" >&2; exit 1; }
rm -rf "$out_dir/export"
"$PYTHON" -m sat_seg_ros.cli train --export "$results/slim.pt" "$out_dir/export" \
    >> "$results/train.log" 2>&1
cp "$out_dir/export/"{config.json,model.safetensors,sat_seg.json} "$results/model/"
cp "$out_dir/summary.json" "$out_dir/curves.png" "$results/" 2>/dev/null
exit "$status"
