#!/usr/bin/env bash
# A TPU pod slice (or any set of hosts without a shared disk) with everything on a bucket:
# docs/scaling.md walks through it. tests/runs/test_storage.py runs every step against a local GCS
# server (digits, two processes), so each command here is the one that was checked.
#
#   BUCKET=gs://my-bucket bash docs/pod_recipe.sh prepare    # once, on a machine with internet
#   BUCKET=gs://my-bucket bash docs/pod_recipe.sh train      # on every host (--worker=all)
#   BUCKET=gs://my-bucket bash docs/pod_recipe.sh evaluate   # on one host
#   BUCKET=gs://my-bucket bash docs/pod_recipe.sh export     # on one host
#   BUCKET=gs://my-bucket bash docs/pod_recipe.sh load       # anywhere: the exported student
#   BUCKET=gs://my-bucket bash docs/pod_recipe.sh table      # anywhere: the runs under the bucket
#
# DATASET, CONFIG and RUN name the setting (defaults: the paper's CIFAR-100 vgg8 <- vgg13 run);
# extra arguments after the step go to mmkd_jax.main (e.g. --config.batch_size=1024).
set -euo pipefail
: "${BUCKET:?set BUCKET=gs://<bucket> (every host must be able to read and write it)}"
DATASET=${DATASET:-cifar100}
CONFIG=${CONFIG:-configs/cifar100.py:vgg8,vgg13,mmkd}
RUN=${RUN:-vgg8}
PYTHON=${PYTHON:-python}
step=${1:?a step: prepare, train, evaluate, export, load or table}
shift
paths=(--workdir "$BUCKET/runs/$RUN" --config.data_dir="$BUCKET/tfds" --config.teacher_dir="$BUCKET/teachers")

case "$step" in
  prepare)   # TFDS array_record files, built on local disk and uploaded (dataset_info.json last)
    "$PYTHON" -m mmkd_jax.data.prepare "$DATASET" --data_dir "$BUCKET/tfds" ;;
  train)     # teachers (trained if missing), the teacher cache (a shard per host), the student
    "$PYTHON" -m mmkd_jax.main --config "$CONFIG" "${paths[@]}" "$@" ;;
  evaluate)  # the best checkpoint on the test split -> $BUCKET/runs/$RUN/evaluation.json
    "$PYTHON" -m mmkd_jax.main --config "$CONFIG" "${paths[@]}" --config.mode=evaluate "$@" ;;
  export)    # orbax variables/, student.npz (and .pth with torch), student.json last
    "$PYTHON" -m mmkd_jax.main --config "$CONFIG" "${paths[@]}" --config.mode=export \
        --config.export_dir="$BUCKET/export/$RUN" "$@" ;;
  load)
    "$PYTHON" -c "import sys, mmkd_jax; s = mmkd_jax.load_student(sys.argv[1]); \
print(f'{s.arch}, {s.num_classes} classes, {s.image_shape} images, top-1 {s.info[\"top1\"]}')" "$BUCKET/export/$RUN" ;;
  table)
    "$PYTHON" -m mmkd_jax.runs "$BUCKET/runs" ;;
  *)
    echo "unknown step $step: prepare, train, evaluate, export, load or table" >&2; exit 2 ;;
esac
