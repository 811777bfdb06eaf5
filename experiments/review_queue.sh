#!/usr/bin/env bash
# Issue #42's queue (the reviewer's tables, RESULTS section 13), resumable: finished runs (those with
# summary.json) are skipped, each run's records are kept under experiments/results/review_<pool>/ as
# it finishes (--keep: commit them), and each step reads what the previous one kept (a new process
# per table: the tuned knobs come from the kept validation records, tables.review_choices).
#
# Cost on a 2-core CPU (section 8's minutes per run: 1.6-2.4 plain, 4.2 MMKD, 6.0 BOMD-like):
#   deviations 5 variants x 3 seeds                               ~1 h
#   per pool: teachers + competence (~25 min where not trained), tuning 11 methods x 6 points at 1
#   seed (the homogeneous pool 10: no per-class oracle) ~3 h, the table 12 rows x 5 seeds ~3 h
# about 19 CPU-hours in all: run it in the background, a pool at a time (POOLS="mixed" ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
table() { "$PY" experiments/reproduce.py --table "$1" --keep "experiments/results/$2" "${@:3}"; }
restore() {  # kept records back into the run directories (a fresh clone has only the kept ones)
  mkdir -p "runs/reproduce/$1"
  [ -d "experiments/results/$1" ] && cp -rn "experiments/results/$1/." "runs/reproduce/$1/" || true
}
if [ -z "${POOLS+x}" ] || [[ " ${POOLS} " == *" deviations "* ]]; then
  restore review_deviations
  table review_deviations review_deviations --seeds 3
  # what bfloat16 storage does to the cached targets, with the MMKD student of seed 0 (its checkpoint)
  row=runs/reproduce/review_deviations/resnet20__wrn_16_2__vgg8____resnet8
  [ -f experiments/results/review_deviations/cache_precision.md ] || "$PY" experiments/cache_precision.py \
    --config configs/fashion_mnist.py:mmkd,pool=homogeneous --student_workdir "$row/mmkd/seed0" --examples 2048 \
    > experiments/results/review_deviations/cache_precision.md
fi
for pool in ${POOLS:-homogeneous mixed specialists}; do
  [ "$pool" = deviations ] && continue
  restore "review_$pool"
  [ -f "experiments/results/review_$pool/teachers.json" ] || "$PY" experiments/teacher_competence.py \
    --config "configs/fashion_mnist.py:pool=$pool" --out "experiments/results/review_$pool/teachers.json"
  table "review_${pool}_tuning" "review_$pool" --seeds 1
  table "review_$pool" "review_$pool" --seeds 5
done
