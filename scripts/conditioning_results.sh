#!/usr/bin/env bash
# Reproduce the README's conditioning tables (issue: multi-modal conditioning end to end):
# MultiVAE and MacridVAE with each conditioning kind against none, seed 2020, ratio split,
# on the synthetic `small` world and on HetRec Last.fm-2k (whose text modality is the artists'
# tags; it has no audio). Needs the release binary and ../shared (data + MiniLM model).
#
#   cargo build --release --bin encore && scripts/conditioning_results.sh [OUT_DIR]
set -euo pipefail
ENCORE=${ENCORE:-target/release/encore}
SHARED=${SHARED:-../shared}
OUT=${1:-runs/conditioning}
MODEL_DIR=$SHARED/models/all-MiniLM-L6-v2
mkdir -p "$OUT"

# --- the synthetic small world -----------------------------------------------------------
W=$OUT/small-world
[ -d "$W" ] || $ENCORE data synth --preset small --seed 7 --out "$W"
[ -d "$OUT/small" ] || $ENCORE data import --format onion --input "$W" \
  --min-user-interactions 5 --min-item-interactions 5 --out "$OUT/small"
[ -f "$OUT/small_lyrics_minilm.tsv" ] || $ENCORE features embed-text --model "$MODEL_DIR" \
  --texts "$W/lyrics.tsv" --out "$OUT/small_lyrics_minilm.tsv"
for model in multivae macridvae; do
  for kind in none audio lyrics concat tensor; do
    run=$OUT/runs-small/$model-$kind
    [ -f "$run/metrics.json" ] && continue
    feats=()
    [ "$kind" != none ] && feats=(--audio "$W/id_ivec512.tsv" --lyrics "$OUT/small_lyrics_minilm.tsv")
    $ENCORE train --model "$model" --data "$OUT/small" --split ratio --seed 2020 \
      --set "conditioning=\"$kind\"" "${feats[@]}" --out "$run" > /dev/null
  done
  # The same tensor fusion with the world's 768-d lyrics-embedding stand-in.
  run=$OUT/runs-small/$model-tensor-standin
  [ -f "$run/metrics.json" ] || $ENCORE train --model "$model" --data "$OUT/small" --split ratio \
    --seed 2020 --set 'conditioning="tensor"' --audio "$W/id_ivec512.tsv" \
    --lyrics "$W/id_lyrics_bert.tsv" --out "$run" > /dev/null
done
$ENCORE report "$OUT"/runs-small/* --markdown --csv "$OUT/small.csv"

# --- HetRec Last.fm-2k: tags as the text modality ----------------------------------------
L=$SHARED/data/hetrec-lastfm-2k
[ -d "$OUT/lastfm" ] || $ENCORE data import --format hetrec-lastfm --input "$L" \
  --min-user-interactions 5 --min-item-interactions 5 --out "$OUT/lastfm"
[ -f "$OUT/lastfm_tags.tsv" ] || $ENCORE features tags-text --input "$L" --data "$OUT/lastfm" \
  --out "$OUT/lastfm_tags.tsv"
[ -f "$OUT/lastfm_tags_minilm.tsv" ] || $ENCORE features embed-text --model "$MODEL_DIR" \
  --texts "$OUT/lastfm_tags.tsv" --out "$OUT/lastfm_tags_minilm.tsv"
for model in multivae macridvae; do
  for kind in none lyrics; do
    run=$OUT/runs-lastfm/$model-$kind
    [ -f "$run/metrics.json" ] && continue
    feats=()
    [ "$kind" != none ] && feats=(--lyrics "$OUT/lastfm_tags_minilm.tsv")
    $ENCORE train --model "$model" --data "$OUT/lastfm" --split ratio --seed 2020 \
      --set "conditioning=\"$kind\"" "${feats[@]}" --out "$run" > /dev/null
  done
done
$ENCORE report "$OUT"/runs-lastfm/* --markdown --csv "$OUT/lastfm.csv"
