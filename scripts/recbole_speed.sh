#!/usr/bin/env bash
# Side-by-side speed of RecBole 1.2.1 and Encore on ml-100k: same machine, same moment,
# $THREADS threads each (default 1), 20 epochs of MultiVAE and MacridVAE (recbole presets) on RecBole's own seed-2020
# split; prints the median seconds per training epoch and per full validation evaluation.
# Needs the venv of scripts/recbole_crosscheck.py ($RBPY, default /tmp/rbenv/bin/python) and a
# release build (cargo build --release -p encore-cli). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
RBPY=${RBPY:-/tmp/rbenv/bin/python}
THREADS=${THREADS:-1}
DATA=$(cd "${ENCORE_SHARED_DATA:-../shared/data}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
./target/release/encore data import --format recbole --input "$DATA/ml-100k" --out "$work/ml" > /dev/null
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-10s %-8s %14s %14s\n' model tool "train s/epoch" "eval s"
for pair in MultiVAE:multivae MacridVAE:macridvae; do
  rb=${pair%%:*}; en=${pair##*:}
  # From the scratch folder: RecBole writes log/ and saved/ into the working directory.
  (cd "$work" && RB_EPOCHS=20 RB_THREADS=$THREADS OMP_NUM_THREADS=$THREADS \
    ENCORE_SHARED_DATA=$DATA "$RBPY" "$repo/scripts/recbole_crosscheck.py" run "$rb" 2020 > "$work/$rb.log" 2>&1)
  t=$(grep -o 'training \[time: [0-9.]*' "$work/$rb.log" | awk '{print $NF}' | median)
  e=$(grep -o 'evaluating \[time: [0-9.]*' "$work/$rb.log" | awk '{print $NF}' | median)
  printf '%-10s %-8s %14s %14s\n' "$rb" RecBole "$t" "$e"
  ./target/release/encore --threads "$THREADS" train --model "$en" --data "$work/ml" --split ratio-recbole \
    --seed 2020 --set preset=recbole --set train.epochs=20 --out "$work/run-$en" > /dev/null 2>&1
  t=$(grep -o '"epoch_seconds":[0-9.e-]*' "$work/run-$en/log.jsonl" | cut -d: -f2 | median)
  e=$(grep -o '"eval_seconds":[0-9.e-]*' "$work/run-$en/log.jsonl" | cut -d: -f2 | median)
  printf '%-10s %-8s %14.4f %14.4f\n' "$rb" Encore "$t" "$e"
done
