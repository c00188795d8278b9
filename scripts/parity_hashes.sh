#!/usr/bin/env bash
# Fingerprints of everything a restructuring must not change (issue #13): for every model and
# both presets, the ml-100k seed-2020 run on RecBole's split (`ratio-recbole`): the test and
# valid metrics, the best model's files and the final checkpoint's weights; then the demo's
# results.json. Prints one line per file, `sha256  path`, sorted; diff two outputs to compare
# two commits:
#
#   scripts/parity_hashes.sh target/debug/encore > /tmp/before.txt
#   ... change ...
#   scripts/parity_hashes.sh target/debug/encore > /tmp/after.txt && diff /tmp/before.txt /tmp/after.txt
#
# Times and timings (train_seconds, eval_seconds, log.jsonl) are left out: they differ between
# any two runs. Rust never reassociates or contracts float operations, so a debug build gives
# the release build's bits and this check can run on either. THREADS (default 2) fixes the
# thread count; SKIP_DEMO=1 leaves the demo out; MODELS overrides the model list; KEEP=DIR
# keeps a copy of the runs.
set -euo pipefail
BIN=$(realpath "${1:?usage: parity_hashes.sh PATH/TO/encore}")
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
DATA=$(cd "${ENCORE_SHARED_DATA:-../shared/data}" && pwd)
MODELS=${MODELS:-"pop ease bpr lightgcn multivae macridvae"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$BIN" data import --format recbole --input "$DATA/ml-100k" --out "$work/ml" > /dev/null
for model in $MODELS; do
  presets="original recbole"
  [ "$model" = pop ] && presets="none"
  for preset in $presets; do
    set_args=()
    [ "$preset" != none ] && set_args=(--set "preset=$preset")
    run="$work/runs/$model-$preset"
    "$BIN" --threads "$THREADS" train --model "$model" "${set_args[@]}" --data "$work/ml" \
      --split ratio-recbole --seed 2020 --out "$run" > "$work/$model-$preset.log" 2>&1 \
      || { echo "FAILED $model $preset" >&2; cat "$work/$model-$preset.log" >&2; exit 1; }
    # metrics.json without its timings
    python3 - "$run/metrics.json" > "$run/metrics.values" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for k in ("train_seconds", "eval_seconds"):
    m.pop(k, None)
print(json.dumps(m, sort_keys=True))
PY
  done
done
if [ -z "${SKIP_DEMO:-}" ]; then
  "$BIN" --threads "$THREADS" demo --out "$work/demo" > "$work/demo.log" 2>&1
  # One file per demo model, so that a model added to the demo leaves the others comparable.
  mkdir -p "$work/demo/results"
  python3 - "$work/demo/results.json" "$work/demo/results" <<'PY'
import json, sys
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if not k.endswith("seconds")}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
for label, metrics in json.load(open(sys.argv[1])).items():
    with open(f"{sys.argv[2]}/{label}.values", "w") as f:
        print(json.dumps(strip(metrics), sort_keys=True), file=f)
PY
fi
cd "$work"
[ -n "${KEEP:-}" ] && cp -r "$work" "$KEEP"
find runs demo -type f \( -name '*.values' -o -path '*/model/*' \
  -o -path '*/checkpoint/*.safetensors' -o -name 'config.toml' \) 2>/dev/null \
  | grep -v '/demo/world/\|/demo/data/' | sort | xargs sha256sum
