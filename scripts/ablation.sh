#!/usr/bin/env bash
# The paper's loss comparison at demo scale: ASL (4/0/0.05) vs BCE (0/0/0) vs focal (2/2/0) on the demo's
# fashion-mosaic data with the demo's budget; prints the best validation mAP of each. Outputs: runs/ablation/.
# Usage: scripts/ablation.sh [BUILD_DIR]   (same environment variables as scripts/demo.sh, plus SEEDS="0 1 …")
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
ASL=${ASL:-./$BUILD_DIR/asl}
OUT=runs/ablation
TRAIN_IMAGES=${DEMO_TRAIN:-2000}
VAL_IMAGES=${DEMO_VAL:-500}
EPOCHS=${DEMO_EPOCHS:-6}
SIZE=${DEMO_SIZE:-64}
THREADS=${DEMO_THREADS:-0}
PRECISION=${DEMO_PRECISION:-auto}
SEEDS=${SEEDS:-0}
CELL=$((SIZE / 2))

if [ ! -x "$ASL" ]; then
  echo "ablation: $ASL not found; run 'make build' first" >&2
  exit 1
fi
mkdir -p "$OUT"
# The same dataset as the demo (same options and seed give byte-identical files).
if [ ! -f "$OUT/data/annotations/instances_val2014.json" ]; then
  "$ASL" data fashion-mosaic "$OUT/data" --train "$TRAIN_IMAGES" --val "$VAL_IMAGES" --grid 2 --cell "$CELL" --seed 0
fi

# name gamma_neg gamma_pos clip
LOSSES=("ASL 4 0 0.05" "BCE 0 0 0" "focal 2 2 0")
declare -A RESULT
for entry in "${LOSSES[@]}"; do
  read -r name gneg gpos clip <<< "$entry"
  for seed in $SEEDS; do
    run="$OUT/$name-seed$seed"
    echo "== $name (gamma-=$gneg gamma+=$gpos clip=$clip), seed $seed -> $run"
    rm -rf "$run"
    "$ASL" train "$OUT/data" --model-name tresnet_m --image-size "$SIZE" --batch-size 32 --lr 1e-3 \
      --epochs "$EPOCHS" --stop-epoch 0 --ema-decay 0.99 --precision "$PRECISION" --workers 1 --threads "$THREADS" --seed "$seed" \
      --gamma-neg "$gneg" --gamma-pos "$gpos" --clip "$clip" --no-epoch-checkpoints --out "$run" > "$run.log" 2>&1 ||
      { tail -5 "$run.log" >&2; exit 1; }
    best=$(tail -n 1 "$run/metrics.jsonl" | sed -n 's/.*"mAP_highest":\([0-9.eE+-]*\).*/\1/p')
    RESULT[$name]="${RESULT[$name]:-} $(printf '%.2f' "$best")"
    rm -f "$run/last.pth"  # 4x the model size; the run is complete
  done
done

echo
echo "loss    gamma-  gamma+  clip   best val mAP (per seed)"
for entry in "${LOSSES[@]}"; do
  read -r name gneg gpos clip <<< "$entry"
  printf '%-7s %-7s %-7s %-6s%s\n' "$name" "$gneg" "$gpos" "$clip" "${RESULT[$name]}"
done
echo "($TRAIN_IMAGES train / $VAL_IMAGES val mosaics, TResNet-M at ${SIZE}px, $EPOCHS epochs; outputs in $OUT/)"
