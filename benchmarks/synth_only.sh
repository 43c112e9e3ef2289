#!/usr/bin/env bash
# Reproduces a "synthetic only" row of benchmarks/RESULTS.md (issue 17): a U-Net trained on CT
# synthesised from the 16 real IRCADb label maps (no real CT in training), tested on the two real
# volumes with expert masks. About 20 min of synthesis and 55 min of training on 2 CPU cores.
#   bash benchmarks/synth_only.sh [WORK [RUN [TRAIN OPTIONS...]]]
# WORK (default /tmp/liverrt-synth-only) keeps the synthetic CT, made once and shared by runs; RUN
# (default "run"; "none": make the data only) names the run folder under WORK; options after it go to `liverrt train unet` (a
# repeated option replaces the default). PHANTOMS=N mixes N phantom cases (`liverrt data synth
# --cases N --seed 0`, 256 x 256 x 32) into the training set. THORAX=P synthesises the training CT with
# `--thorax-p P` (lung bases and heart above the diaphragm) into WORK/train_thorax instead of WORK/train;
# HILUM=P adds `--hilum-p P` (a pancreas and duodenum below the liver's hilum) and "_hilum" to that name.
# The rows of RESULTS.md (issue 17) are
#   PHANTOMS=8 bash benchmarks/synth_only.sh W bundle --no-augment --max-minutes 134   # the bundled model (*)
#   bash benchmarks/synth_only.sh W run                                        # the first bundled model
#   PHANTOMS=8 bash benchmarks/synth_only.sh W mixph --no-augment --max-minutes 33     # ablation: + phantoms (*)
#   bash benchmarks/synth_only.sh W noaug --no-augment --max-minutes 52        # ablation: no augmentation
#   bash benchmarks/synth_only.sh W px15 --pixel-mm 1.5 --max-minutes 52       # ablation: 1.5 mm per pixel
# (*) these were run in legs on a shared machine: mixph stopped after epoch 12; the bundled model is
# mixph continued with `--resume --max-minutes 100` (24 epochs in all, epoch 17 kept). A time budget
# ends a run after a number of epochs that depends on the load, so a rerun gives the recipe, not
# these exact weights.
set -euo pipefail
DATA="$(cd "$(dirname "$0")/../.." && pwd)/shared/data"
WORK="${1:-/tmp/liverrt-synth-only}"
RUN="${2:-run}"
shift $(( $# < 2 ? $# : 2 ))
TRAIN="$WORK/train${THORAX:+_thorax}${HILUM:+_hilum}"
if [ ! -d "$WORK/val" ]; then
  mkdir -p "$WORK/maps_train" "$WORK/maps_val"
  for d in "$DATA"/ircad_labels/*/; do  # two maps held out for validation (other patients, 2.0 and 1.6 mm)
    n=$(basename "$d"); case "$n" in ircad09|ircad15) ln -sfn "$d" "$WORK/maps_val/$n";; *) ln -sfn "$d" "$WORK/maps_train/$n";; esac
  done
  liverrt data synth --from-labels "$WORK/maps_val" --out "$WORK/val" --samples 1 --seed 100 --size 256
fi
if [ ! -d "$TRAIN" ]; then
  liverrt data synth --from-labels "$WORK/maps_train" --out "$TRAIN" --samples 2 --seed 0 --size 256 \
    ${THORAX:+--thorax-p "$THORAX"} ${HILUM:+--hilum-p "$HILUM"}
fi
if [ "${PHANTOMS:-0}" -gt 0 ]; then  # synthetic CT + phantoms: a folder of links to both
  SYNTH="$TRAIN"
  TRAIN="$SYNTH+phantoms$PHANTOMS"
  if [ ! -d "$TRAIN" ]; then
    [ -d "$WORK/phantoms$PHANTOMS" ] || liverrt data synth --out "$WORK/phantoms$PHANTOMS" --cases "$PHANTOMS" --seed 0 --size 256
    mkdir -p "$TRAIN"
    for d in "$SYNTH"/*/ "$WORK/phantoms$PHANTOMS"/*/; do ln -sfn "$d" "$TRAIN/$(basename "$d")"; done
  fi
fi
[ "$RUN" = none ] && exit 0  # the data only
liverrt train unet --data "$TRAIN" --val-data "$WORK/val" --out "$WORK/$RUN" --size 256 --batch-size 8 \
  --steps-per-epoch 100 --epochs 40 --max-minutes 55 --seed 0 --device cpu "$@"
for post in "" "--keep-largest --fill-holes"; do
  python "$(dirname "$0")/eval_real.py" "$WORK/$RUN/best.pt" $post
done
