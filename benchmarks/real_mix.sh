#!/usr/bin/env bash
# The second stage of the bundled liver-unet and its controls (issue 17, benchmarks/RESULTS.md 2026-12-07): the
# synthetic-only model fine-tuned on its own training set (synthetic CT of 14 IRCADb label maps + 8 phantoms),
# with or without the real volumes ircad01 and lits000 (each linked 8 times).
#   bash benchmarks/real_mix.sh WORK INIT [TRAIN OPTIONS...]
# WORK: the folder of benchmarks/synth_only.sh with PHANTOMS=8 (it reads WORK/train+phantoms8 and WORK/val);
# INIT: the synthetic-only checkpoint (`git show 971fc2b:models/liver_unet_synth.pt`).
# Runs (each about 10 min alone on 2 CPU cores, 8 epochs of 50 steps; 30 min on a loaded machine):
#   without_ircad01, without_lits000  one real volume in training, scored on the other (leave one volume out)
#   control   no real CT, scored on both volumes (the bundled liver-unet: this run on the thorax set,
#             seeds 0 and 1, their last.pt averaged; see below)
#   both      both real volumes in training (the bundled model before; its scores are on volumes it saw)
# Environment: RUNS="control" (any of the four) runs those alone; by default the two leave-one-out runs and
# both, CONTROL=1 adds control, LOVO_ONLY=1 drops both. SET=NAME reads WORK/NAME as the base set instead
# (THORAX=0.85 PHANTOMS=8 synth_only.sh makes train_thorax+phantoms8); TAG=T prefixes every run and mix
# folder. VAL=NAME validates on WORK/NAME instead of WORK/val (`liverrt data synth --from-labels WORK/maps_val
# --out WORK/val_thorax --samples 2 --seed 100 --size 256 --thorax-p 0.85` makes a set with the thorax).
# Each run is scored from best.pt (the epoch validation kept) and from last.pt (the last epoch). The bundled
# model (RESULTS.md, 2026-12-07 night):
#   SET=train_thorax+phantoms8 RUNS=control TAG=T0_ bash benchmarks/real_mix.sh WORK INIT --seed 0   # and T1_, 1
#   python benchmarks/average_checkpoints.py WORK/soup.pt WORK/T0_control/last.pt WORK/T1_control/last.pt
#   python benchmarks/bundle_model.py WORK/soup.pt --name liver-unet --file liver_unet.onnx \
#     --card-text models/liver_unet.card-text.json --verify VERIFY_CASES
# (a model trained on the real volumes takes --estimate with the leave-one-out runs' eval_CASE_best.json).
set -euo pipefail
DATA="$(cd "$(dirname "$0")/../.." && pwd)/shared/data"
WORK="$1"
INIT="$2"
shift 2
BASE="$WORK/${SET:-train+phantoms8}"
VAL="$WORK/${VAL:-val}"
TAG="${TAG:-}"
[ -d "$BASE" ] && [ -d "$VAL" ] || { echo "run PHANTOMS=8 bash benchmarks/synth_only.sh $WORK none first" >&2; exit 2; }
mix() {  # mix NAME VOLUME...: the base set and each real volume linked 8 times
  local out="$WORK/mix_$TAG$1"; shift
  mkdir -p "$out"
  for d in "$BASE"/*/; do ln -sfn "$(readlink -f "$d")" "$out/$(basename "$d")"; done
  for v in "$@"; do
    for r in 1 2 3 4 5 6 7 8; do
      mkdir -p "$out/${v}_r$r"
      ln -sfn "$DATA/$v/ct.nii.gz" "$out/${v}_r$r/image.nii.gz"
      ln -sfn "$DATA/$v/liver.nii.gz" "$out/${v}_r$r/mask.nii.gz"
    done
  done
}
train() {  # train RUN MIX [OPTIONS...]
  local run="$TAG$1" data="$WORK/mix_$TAG$2"; shift 2
  liverrt train unet --data "$data" --val-data "$VAL" --out "$WORK/$run" --size 256 --batch-size 8 \
    --steps-per-epoch 50 --epochs 8 --lr 3e-4 --warmup-steps 0 --seed 0 --device cpu --no-augment --init "$INIT" "$@"
}
score() {  # score RUN [CASE]: eval_RUN[_CASE]_{best,last}.json in the run folder
  local run="$WORK/$TAG$1" case="${2:-}"
  for ck in best last; do
    python "$(dirname "$0")/eval_real.py" "$run/$ck.pt" ${case:+--cases "$case"} --keep-largest --fill-holes \
      --json "$run/eval${case:+_$case}_$ck.json"
  done
}
if [ -z "${RUNS:-}" ]; then
  RUNS="without_ircad01 without_lits000"
  [ -n "${CONTROL:-}" ] && RUNS="$RUNS control"
  [ -n "${LOVO_ONLY:-}" ] || RUNS="$RUNS both"
fi
for run in $RUNS; do
  case "$run" in
    without_ircad01) mix lits000 lits000; train "$run" lits000 "$@"; score "$run" ircad01;;
    without_lits000) mix ircad01 ircad01; train "$run" ircad01 "$@"; score "$run" lits000;;
    control) mix none; train "$run" none "$@"; score "$run";;
    both) mix both ircad01 lits000; train "$run" both "$@"; score "$run";;
    *) echo "RUNS: unknown run '$run'; expected without_ircad01, without_lits000, control or both" >&2; exit 2;;
  esac
done
