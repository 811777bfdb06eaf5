#!/usr/bin/env bash
# Issue #23 queue (RESULTS §10), resumable: finished runs (those with summary.json) are skipped, the
# committed records are copied in first, and each run's records are kept in experiments/results as
# it finishes (--keep; commit them). The mixed pool's choices (MMKD's weights.feat, the best teacher,
# the competence) are read from its committed validation records (tables.pool_choices).
set -x
cd "$(dirname "$0")/.."
for group in specialists mixed replays; do
  mkdir -p runs/reproduce/fashion_mnist_$group
  [ -d experiments/results/fashion_mnist_$group ] && cp -rn experiments/results/fashion_mnist_$group/* runs/reproduce/fashion_mnist_$group/
done
table() { .venv/bin/python experiments/reproduce.py --table "$1" --keep "experiments/results/$2" "${@:3}"; }
table fashion_mnist_specialists fashion_mnist_specialists --seeds 3
table fashion_mnist_specialists_mmkd fashion_mnist_specialists --seeds 3
[ -f experiments/results/fashion_mnist_mixed/teachers.json ] || .venv/bin/python experiments/teacher_competence.py \
  --config configs/fashion_mnist.py:pool=mixed --out experiments/results/fashion_mnist_mixed/teachers.json
table fashion_mnist_mixed_val fashion_mnist_mixed --seeds 1
table fashion_mnist_mixed fashion_mnist_mixed --seeds 3   # a new process: reads the choices just kept
# 40-epoch replay ablation, one method's comparison at a time: online rows with seeds as replicas
# (vmapped online teachers: 0.58x, RESULTS §6), precomputed rows one seed at a time (--methods aver
# selects both AVER rows; the online one is finished by then, so only the precomputed runs)
table fashion_mnist_replays fashion_mnist_replays --seeds 3 --replicas --methods aver__teacher-source-online
table fashion_mnist_replays fashion_mnist_replays --seeds 3 --methods aver
table fashion_mnist_replays fashion_mnist_replays --seeds 3 --replicas --methods mmkd__teacher-source-online
table fashion_mnist_replays fashion_mnist_replays --seeds 3
