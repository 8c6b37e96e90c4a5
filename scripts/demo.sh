#!/usr/bin/env bash
# make demo: builds the fashion-mosaic dataset, trains a TResNet-M with ASL on it, validates, annotates a few images.
# Everything goes to runs/demo/ (git-ignored). Sized to finish within 15 minutes on a 2-core CPU.
# Usage: scripts/demo.sh [BUILD_DIR]   (environment: DEMO_TRAIN, DEMO_VAL, DEMO_EPOCHS, DEMO_SIZE, DEMO_THREADS, DEMO_PRECISION)
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
ASL=${ASL:-./$BUILD_DIR/asl}
OUT=runs/demo
TRAIN_IMAGES=${DEMO_TRAIN:-2000}
VAL_IMAGES=${DEMO_VAL:-500}
EPOCHS=${DEMO_EPOCHS:-6}
SIZE=${DEMO_SIZE:-64}
THREADS=${DEMO_THREADS:-0}
PRECISION=${DEMO_PRECISION:-auto}
# Half the cell of a 2x2 grid at the training resolution: the mosaics need no resizing.
CELL=$((SIZE / 2))

if [ ! -x "$ASL" ]; then
  echo "demo: $ASL not found; run 'make build' first" >&2
  exit 1
fi
start=$SECONDS
mkdir -p "$OUT"

echo "== 1/4 dataset: $TRAIN_IMAGES train + $VAL_IMAGES val Fashion-MNIST mosaics (2x2 grid, 1-4 items) -> $OUT/data"
rm -rf "$OUT/data"
"$ASL" data fashion-mosaic "$OUT/data" --train "$TRAIN_IMAGES" --val "$VAL_IMAGES" --grid 2 --cell "$CELL" --seed 0

echo "== 2/4 training TResNet-M at ${SIZE}px for $EPOCHS epochs (ASL gamma-=4 gamma+=0 clip=0.05, Adam + one-cycle, EMA)"
# The reference's recipe, except what a minutes-long run from scratch needs: a higher peak learning
# rate, an EMA that can follow a few hundred steps. Precision auto: bfloat16 autocast where the CPU has
# native bfloat16 (AMX or AVX512_BF16), float32 elsewhere (DEMO_PRECISION overrides).
rm -rf "$OUT/train"
"$ASL" train "$OUT/data" --model-name tresnet_m --image-size "$SIZE" --batch-size 32 --lr 1e-3 \
  --epochs "$EPOCHS" --stop-epoch 0 --ema-decay 0.99 --precision "$PRECISION" --workers 1 --threads "$THREADS" --seed 0 \
  --no-epoch-checkpoints --out "$OUT/train"

echo "== 3/4 validation of $OUT/train/model-highest.pth on the $VAL_IMAGES val mosaics"
"$ASL" validate "$OUT/data" --split val2014 --model-path "$OUT/train/model-highest.pth" --image-size "$SIZE" \
  --threads "$THREADS" --json --report "$OUT/report" > "$OUT/validate.json"
map=$(sed -n 's/.*"mAP":\([0-9.eE+-]*\).*/\1/p' "$OUT/validate.json")

echo "== 4/4 inference on 4 val images, annotated copies in $OUT/annotated/"
rm -rf "$OUT/annotated"
mkdir -p "$OUT/annotated"
images=()
for i in 1 2 3 4; do images+=("$OUT/data/val2014/$(printf '%06d' "$i").png"); done
# The reference's MS-COCO threshold (0.7): ASL's down-weighted negatives shift scores upwards.
"$ASL" infer "${images[@]}" --model-path "$OUT/train/model-highest.pth" --input-size "$SIZE" --top-k 4 \
  --threads "$THREADS" --annotate "$OUT/annotated"
echo "   (true labels: $OUT/data/annotations/instances_val2014.json, images 1-4)"

elapsed=$((SECONDS - start))
printf '\ndemo: mAP %.2f on %s val images (TResNet-M, %dpx, %s epochs on %s images) in %dm%02ds\n' \
  "$map" "$VAL_IMAGES" "$SIZE" "$EPOCHS" "$TRAIN_IMAGES" $((elapsed / 60)) $((elapsed % 60))
echo "demo: outputs in $OUT/: data/ (dataset), train/ (model-highest.pth, last.pth, metrics.jsonl, training.svg),"
echo "      validate.json, report/index.html (the validation report, for a browser), annotated/ (images with their"
echo "      detected classes)"
