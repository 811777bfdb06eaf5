#!/usr/bin/env bash
# Issue #23 queue (RESULTS §10), resumable (finished runs, those with summary.json, are skipped; committed records copied in first).
set -x
cd "$(dirname "$0")/.."
for group in specialists mixed replays; do
  mkdir -p runs/reproduce/fashion_mnist_$group
  [ -d experiments/results/fashion_mnist_$group ] && cp -rn experiments/results/fashion_mnist_$group/* runs/reproduce/fashion_mnist_$group/
done
.venv/bin/python experiments/reproduce.py --table fashion_mnist_specialists --seeds 3
.venv/bin/python experiments/reproduce.py --table fashion_mnist_specialists_mmkd --seeds 3
mkdir -p experiments/results/fashion_mnist_mixed
[ -f experiments/results/fashion_mnist_mixed/teachers.json ] || .venv/bin/python experiments/teacher_competence.py \
  --config configs/fashion_mnist.py:pool=mixed --out experiments/results/fashion_mnist_mixed/teachers.json
.venv/bin/python experiments/reproduce.py --table fashion_mnist_mixed_val --seeds 1
# 40-epoch replay ablation: precomputed rows one seed at a time; online rows with seeds as replicas (vmapped online teachers: 0.58x, RESULTS §6)
.venv/bin/python experiments/reproduce.py --table fashion_mnist_replays --seeds 3 --replicas \
  --methods aver__teacher-source-online,mmkd__teacher-source-online
.venv/bin/python experiments/reproduce.py --table fashion_mnist_replays --seeds 3   # the precomputed rows (online ones are done)
