"""The grain pipelines: per-process shards that rebuild the global batch, an evaluation split covered
exactly once."""
from __future__ import annotations


import numpy as np
import pytest

from mmkd_jax.data import pipeline, sources

from helpers import dataset_spec_of


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_process_shards_are_disjoint_and_rebuild_the_global_batch(data_dir):
  spec = dataset_spec_of(data_dir=data_dir)
  source = sources.data_source("digits", "train", data_dir)
  whole = list(pipeline.train_batches(source, spec, 64, seed=3, epoch=1))
  parts = [list(pipeline.train_batches(source, spec, 64, 3, 1, process_index=p, process_count=4))
           for p in range(4)]
  for b, batch in enumerate(whole):
    pieces = [parts[p][b]["index"] for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(pieces), batch["index"])
  seen = np.concatenate([b["index"] for b in whole])
  assert len(np.unique(seen)) == len(seen) == 22 * 64
  # Another epoch is another permutation; resuming at batch k yields the same batches.
  other = next(iter(pipeline.train_batches(source, spec, 64, 3, 2)))
  assert not np.array_equal(other["index"], whole[0]["index"])
  resumed = list(pipeline.train_batches(source, spec, 64, 3, 1, start_batch=5))
  np.testing.assert_array_equal(resumed[0]["index"], whole[5]["index"])


def test_eval_covers_split_exactly_once(data_dir):
  spec = dataset_spec_of(data_dir=data_dir)
  source = sources.data_source("digits", "test", data_dir)
  for processes in (1, 2):
    seen = []
    for p in range(processes):
      for batch in pipeline.eval_batches(source, spec, 64, p, processes):
        seen.extend(batch["index"][batch["mask"] > 0].tolist())
    assert sorted(seen) == list(range(359))
