#!/usr/bin/env bash
# The paper's RQ3 on real data (issue #14): MultiVAE vs Diff-MultiVAE and MacridVAE vs
# Diff-MacridVAE, seeds 2020-2022, on ml-100k (RecBole's split, both presets) and HetRec
# Last.fm-2k (ratio split, `recbole` preset, without and with the tags as the text modality:
# the dataset has no audio, so `lyrics` conditioning); plus the "strong initialisation" check
# (valid NDCG@10 after 1 and 5 epochs). Latent diffusion uses the `diffrec` schedule
# (T = 40; the paper's T = 1000 makes every validation 25x dearer) with the default denoiser.
# Every run validates every 5 epochs and stops after 3 validations without improvement (both
# arms of every comparison alike). Needs the release binary and ../shared (data + MiniLM).
#
#   cargo build --release --bin encore && scripts/rq3.sh [OUT_DIR] [ml100k|lastfm|init|report]...
#
# MODELS (default "multivae macridvae"), PRESETS (ml-100k; default "recbole original") and
# SEEDS (default "2020 2021 2022") narrow the grid; finished runs are skipped, a killed run is
# resumed.
set -euo pipefail
MODELS=${MODELS:-multivae macridvae}
PRESETS=${PRESETS:-recbole original}
SEEDS=${SEEDS:-2020 2021 2022}
ENCORE=${ENCORE:-target/release/encore}
SHARED=${SHARED:-../shared}
OUT=${1:-runs/rq3}
shift || true
PARTS=${*:-ml100k lastfm init report}
mkdir -p "$OUT"
COMMON=(--set train.eval_every=5 --set train.patience=2)

train() { # run-dir, then train arguments; skips finished runs
  local run=$1
  shift
  [ -f "$run/metrics.json" ] && return 0
  if [ -d "$run" ]; then
    $ENCORE train "$@" --out "$run" --resume > /dev/null
  else
    $ENCORE train "$@" --out "$run" > /dev/null
  fi
  echo "  $(basename "$run") done"
}

ML=$OUT/ml-100k
[ -d "$ML" ] || $ENCORE data import --format recbole --input "$SHARED/data/ml-100k" --out "$ML"
L=$SHARED/data/hetrec-lastfm-2k
LF=$OUT/lastfm
[ -d "$LF" ] || $ENCORE data import --format hetrec-lastfm --input "$L" \
  --min-user-interactions 5 --min-item-interactions 5 --out "$LF"

for part in $PARTS; do
  case $part in
  ml100k)
    for preset in $PRESETS; do
      for seed in $SEEDS; do
        for model in $MODELS; do
          for diff in none diffrec; do
            train "$OUT/runs-ml100k/$model-$preset-$diff-$seed" --model $model --data "$ML" \
              --split ratio-recbole --seed $seed --set preset=$preset \
              --set "diffusion=\"$diff\"" "${COMMON[@]}"
          done
        done
      done
    done
    ;;
  lastfm)
    [ -f "$OUT/lastfm_tags.tsv" ] || $ENCORE features tags-text --input "$L" --data "$LF" \
      --out "$OUT/lastfm_tags.tsv"
    [ -f "$OUT/lastfm_tags_minilm.tsv" ] || $ENCORE features embed-text \
      --model "$SHARED/models/all-MiniLM-L6-v2" --texts "$OUT/lastfm_tags.tsv" \
      --out "$OUT/lastfm_tags_minilm.tsv"
    for seed in $SEEDS; do
      for model in $MODELS; do
        for cond in none lyrics; do
          feats=()
          [ $cond != none ] && feats=(--lyrics "$OUT/lastfm_tags_minilm.tsv")
          for diff in none diffrec; do
            train "$OUT/runs-lastfm/$model-$cond-$diff-$seed" --model $model --data "$LF" \
              --split ratio --seed $seed --set preset=recbole --set "conditioning=\"$cond\"" \
              "${feats[@]}" --set "diffusion=\"$diff\"" "${COMMON[@]}"
          done
        done
      done
    done
    ;;
  init)
    # Validation after every epoch for the first 5.
    for seed in $SEEDS; do
      for model in $MODELS; do
        for diff in none diffrec; do
          train "$OUT/runs-init/$model-$diff-$seed" --model $model --data "$ML" \
            --split ratio-recbole --seed $seed --set preset=recbole \
            --set "diffusion=\"$diff\"" --set train.epochs=5 --set train.patience=0
        done
      done
    done
    ;;
  report)
    for d in runs-ml100k runs-lastfm; do
      [ -d "$OUT/$d" ] || continue
      $ENCORE report "$OUT/$d"/* --group --markdown --csv "$OUT/$d.csv" --curves "$OUT/curves-$d"
    done
    [ -d "$OUT/runs-init" ] && $ENCORE report "$OUT/runs-init"/* --group --markdown --valid-at 1,5
    ;;
  *) echo "unknown part $part (ml100k, lastfm, init, report)" >&2; exit 2 ;;
  esac
done
