"""The experiment drivers: table rendering, heatmaps, and (when available) the PyTorch side by side."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import render  # pylint: disable=wrong-import-position
import reproduce  # pylint: disable=wrong-import-position
from tables import TABLES, Published, Row, Table, Variant  # pylint: disable=wrong-import-position

from mmkd_jax.training import run as run_lib
from mmkd_jax import config as config_lib  # pylint: disable=wrong-import-position
from helpers import ROOT  # pylint: disable=wrong-import-position


def _summary(final, best, teachers=("a", "b")):
  return {"final_top1": final, "best_top1": best, "wall_seconds": 90.0,
          "teacher_accuracy": {"teacher/ensemble": 97.5, **{f"teacher/{t}": 96.0 for t in teachers}},
          "teachers": [{"name": t} for t in teachers]}


def test_render_table_layout_and_footnotes():
  row = Row("2 x t -> s", "configs/digits.py")
  table = Table("toy", (row,), ("aver", "mmkd"),
                published={(row.label, "mmkd"): Published(None, "source X"),
                           (row.label, "aver"): Published(71.25, "source Y")})
  results = {row.label: {"aver": [_summary(96.0, 96.5), _summary(97.0, 97.5)], "mmkd": []}}
  text = render.render_table(table, results)
  assert "| AVER | 96.50 ± 0.71 (97.00 ± 0.71), n=2 | 1.5 | 71.25 [1] |" in text
  assert "| MMKD | not run | — | n/a [2] |" in text
  assert "[1] source Y" in text and "[2] source X" in text
  assert "97.50 / a 96.00, b 96.00" in text


def test_differences_are_called_only_where_welchs_test_rejects():
  row = Row("s", "configs/digits.py")
  table = Table("toy", (row,), ("mmkd", Variant("mmkd", ("meta.freq=1",)), Variant("mmkd", ("meta.freq=20",))),
                baseline="mmkd")
  results = {row.label: {"mmkd": [_summary(90.0, 90), _summary(90.2, 90), _summary(89.8, 90)],
                         "mmkd__meta-freq-1": [_summary(93.0, 93), _summary(93.2, 93), _summary(92.8, 93)],
                         "mmkd__meta-freq-20": [_summary(90.1, 90), _summary(90.5, 90), _summary(89.9, 90)]}}
  text = render.render_differences(table, results, "mmkd")
  # scipy.stats.ttest_ind(..., equal_var=False): p 5.2e-5 and 0.480, intervals [2.547, 3.453], [-0.458, 0.791]
  assert "| MMKD (meta.freq=1) | +3.00 | [+2.55, +3.45] | 0.000 | yes |" in text
  assert "| MMKD (meta.freq=20) | +0.17 | [-0.46, +0.79] | 0.480 | no |" in text
  assert "Welch's t-test" in text
  two = dataclasses.replace(table, baseline="mmkd,mmkd__meta-freq-20")
  text = render.render_table(two, results)
  assert "Differences to MMKD (meta.freq=20)" in text and "| MMKD (meta.freq=1) | +2.83 |" in text
  assert "| MMKD | -0.17 | [-0.79, +0.46] | 0.480 | no |" in text
  # beyond 2 SE at n = 3, yet not significant: the rule says no (section 10's oracle - AVER)
  loose = {row.label: {"mmkd": [_summary(v, v) for v in (83.27, 83.68, 83.92)],
                       "mmkd__meta-freq-1": [_summary(v, v) for v in (84.18, 84.92, 85.86)]}}
  assert "| MMKD (meta.freq=1) | +1.36 | [-0.45, +3.18] | 0.092 | no |" in render.render_differences(table, loose, "mmkd")


def test_routing_column_and_heatmap_from_routing_records(tmp_path):
  """The table's routing columns are the mean ± std over seeds of each run's competent share of its
  logit weights and, apart, of its feature weights; the routing heatmap is drawn from the per-class
  shares."""
  row = Row("s", "configs/digits.py")
  table = Table("toy", (row,), ("aver", "mmkd"))
  def run(share, per_class, **feature):
    return dict(_summary(90.0, 90.0), routing={"competent_share": share, "competent_share_per_class": per_class,
                                               **({"feature": feature} if feature else {})})
  results = {row.label: {"aver": [run(0.5, [0.5, 0.5]), run(0.5, [0.5, 0.5])],
                         "mmkd": [run(0.6, [0.7, 0.5], competent_share=0.25), run(0.8, [0.9, None], competent_share=0.75)]}}
  text = render.render_table(table, results)
  assert "| AVER | 90.00 ± 0.00 (90.00 ± 0.00), n=2 | 1.5 | — | 0.500 ± 0.000 | — |" in text
  assert "| 0.700 ± 0.141 | 0.500 ± 0.354 |" in text
  assert render.plot_routing(table, row, results, str(tmp_path / "routing.png"))
  assert (tmp_path / "routing.png").stat().st_size > 1000


def test_tables_name_existing_configs():
  root = pathlib.Path(__file__).resolve().parents[1]
  from mmkd_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  for table in TABLES.values():
    for row in table.rows:
      assert (root / row.config).exists(), row.config
      config_lib.validate(config_lib.load(str(root / row.config), row.arg, row.overrides))


def test_weight_heatmap_from_logged_per_class_weights(tmp_path):
  rng = np.random.default_rng(0)
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for epoch in range(1, 4):
      w = rng.dirichlet(np.ones(2), size=10)
      f.write(json.dumps({"step": epoch, "epoch": epoch, "test/top1": 90.0 + epoch,
                          "teacher_weights/per_class": w.tolist()}) + "\n")
  with open(tmp_path / "summary.json", "w") as f:
    json.dump(_summary(93.0, 93.0), f)
  path = tmp_path / "w.png"
  assert render.plot_weight_heatmap(str(tmp_path), "toy", str(path))
  assert path.stat().st_size > 1000
  # Fixed weights (AVER) draw nothing.
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"test_top1": 90.0, "train_class_logits_weights": [[0.5, 0.5]] * 10}) + "\n")
  assert not render.plot_weight_heatmap(str(tmp_path), "toy", str(tmp_path / "none.png"))


def test_overrides_win_over_method_presets():
  from mmkd_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.load(str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py"))
  c = reproduce.method_config(config, "mmkd", ["weights.feat=7.0", "meta.hypergradient=reverse"])
  assert c.weights.feat == 7.0 and c.meta.hypergradient == "reverse"
  assert reproduce.method_config(config, "mmkd").weights.feat == 10.0  # digits' choice (validation)
  assert reproduce.method_config(config, "fitnet").weights.feat == 100.0
  assert reproduce.method_config(config, "aver", seed=2).seed == 2


@pytest.mark.skipif(not os.environ.get("MMKD_REFERENCE"),
                    reason="set MMKD_REFERENCE to a checkout of the original MMKD code (and install torch)")
def test_one_plain_step_matches_the_pytorch_reference():
  pytest.importorskip("torch")
  import compare_pytorch  # pylint: disable=import-outside-toplevel
  assert compare_pytorch.main(["--reference", os.environ["MMKD_REFERENCE"], "--preset", "vgg8",
                               "--skip_timing"]) == 0


def test_roofline_takes_the_slower_of_compute_and_bandwidth():
  import accelerator_bench  # pylint: disable=import-outside-toplevel
  device = {"float32": 1e12, "bfloat16": 4e12, "bandwidth": 1e11}
  assert accelerator_bench.roofline_ms(2e9, 1e8, device, "float32") == pytest.approx(2.0)   # compute-bound
  assert accelerator_bench.roofline_ms(2e9, 1e8, device, "bfloat16") == pytest.approx(1.0)  # bandwidth-bound
  # 240 epochs x 782 steps, each 10 ms plus a fifth of a 50 ms meta step: 187,680 x 20 ms.
  assert accelerator_bench.run_hours(10.0, 50.0) == pytest.approx(187_680 * 0.020 / 3600)


@pytest.mark.slow  # ~150 s (six compiled MMKD steps and a 5-step dispatch)
def test_accelerator_bench_all_checks_and_placements_on_cpu(tmp_path, monkeypatch):
  """--all on a small setting: the step check (the CPU against itself: no error), the hypergradient
  check said skipped without vectors, one grid row with both placements, JSON and Markdown in
  --out (the slow test below runs the command as shipped, vectors included)."""
  import accelerator_bench  # pylint: disable=import-outside-toplevel
  import device_checks  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(accelerator_bench.CPU_SETTINGS, "resnet8", ("resnet8", ("resnet8", "resnet8")))
  vectors = tmp_path / "no_vectors"
  vectors.mkdir()
  out = tmp_path / "out"
  assert accelerator_bench.main(["--all", "--out", str(out), "--vectors", str(vectors), "--replicas", "2",
                                 "--dtypes", "bfloat16", "--sources", "precomputed", "--batch", "4",
                                 "--repeats", "1", "--warmup", "0", "--set", "meta.lookahead_matching_steps=1"]) == 0
  report = json.loads((out / "accelerator_bench.json").read_text())
  checks = report["step_against_cpu"]
  assert checks["ok"] and checks["tolerance"] == device_checks.STEP_RTOL
  for name in ("train_step", "meta_step"):  # the same backend both sides: the same numbers
    assert checks[name]["update_rel_error"] == 0 and checks[name]["metrics_rel_error"] == 0
  assert report["hypergradient"]["skipped"].startswith("no hypergrad_*.npz in")
  (entry,) = report["results"]
  assert (entry["replicas"], entry["dtype"], entry["source"]) == (2, "bfloat16", "precomputed")
  assert entry["images_per_s"] == pytest.approx(2 * 4 / (entry["amortised_ms"] / 1e3))
  assert entry["plain"]["gflops"] > 0 and entry["meta"]["gflops"] > entry["plain"]["gflops"]
  assert all(r["plain"] > 0 for r in entry["roofline_ms"].values())
  assert entry["placement_ms"]["streamed"] > 0 and entry["placement_ms"]["resident"] > 0
  text = (out / "accelerator_bench.md").read_text()
  assert "Input placement" in text and "Hypergradient on the device: skipped" in text


def test_device_check_fails_on_a_changed_step(monkeypatch):
  """The step check can fail: a device step whose update is off by 1e-3 is refused."""
  import device_checks  # pylint: disable=import-outside-toplevel
  ref = np.ones(1000)
  assert device_checks._relative(ref * (1 + 1e-3), ref) > device_checks.STEP_RTOL  # pylint: disable=protected-access
  assert device_checks._relative(ref * (1 + 1e-6), ref) < device_checks.STEP_RTOL  # pylint: disable=protected-access


@pytest.mark.claim("parity")
@pytest.mark.slow
def test_accelerator_bench_all_end_to_end_on_cpu(tmp_path, testvectors):
  """The one accelerator command as shipped, on this CPU with one repeat: both checks pass (the
  reference meta steps' hypergradients to 1e-10), every grid row measured (nothing skipped),
  both placements in each."""
  import accelerator_bench  # pylint: disable=import-outside-toplevel
  out = tmp_path / "out"
  assert accelerator_bench.main(["--all", "--out", str(out), "--repeats", "1", "--warmup", "0",
                                 "--budget_s", "100000"]) == 0
  report = json.loads((out / "accelerator_bench.json").read_text())
  assert report["step_against_cpu"]["ok"] and report["hypergradient"]["ok"] and not report["skipped"]
  assert len(report["hypergradient"]["files"]) == len(list((testvectors / "mmkd").glob("hypergrad_*.npz")))
  assert {(e["source"], e["dtype"], e["replicas"]) for e in report["results"]} == {
      (s, d, r) for s in ("precomputed", "online") for d in ("float32", "bfloat16") for r in (1, 4, 8)}
  assert all(e["placement_ms"]["resident"] > 0 for e in report["results"])


def test_host_ratio_pairs_the_host_rate_with_the_roofline(tmp_path):
  """Ratio = roofline ms / host ms per step; streamed takes the slower of main thread and pipeline;
  a dataset cropped on the host has no resident ratio; hours at max(roofline, host)."""
  import host_ratio  # pylint: disable=import-outside-toplevel
  overhead = {"results": [{"method": "mmkd", "replicas": 1, "mode": "streamed", "host_cpu_ms_per_step": 5.0},
                          {"method": "mmkd", "replicas": 1, "mode": "resident+scan", "host_cpu_ms_per_step": 2.0}]}
  step = {"plain": 1.0, "meta": 5.0}  # amortised 1 + 5 / 5 = 2 ms
  roofline = {"results": [{"setting": "cifar100", "roofline_ms": {"H100 SXM": step}},
                          {"setting": "finegrained", "roofline_ms": {"H100 SXM": step}}]}
  cifar, fine = host_ratio.rows(roofline, overhead, pipeline_batches_per_s=50.0)  # pipeline: 20 ms/batch
  assert cifar["roofline_ms"] == pytest.approx(2.0)
  assert cifar["streamed_ratio"] == pytest.approx(2.0 / 20.0) and cifar["resident_ratio"] == pytest.approx(1.0)
  assert cifar["hours_streamed"] == pytest.approx(187_680 * 0.020 / 3600)
  assert cifar["hours_best"] == pytest.approx(187_680 * 0.002 / 3600)
  assert fine["resident_ratio"] is None and fine["hours_best"] is None  # hours: the CIFAR-100 run only


def test_input_pipeline_measures_every_combination(tmp_path):
  import input_pipeline  # pylint: disable=import-outside-toplevel
  out = tmp_path / "pipeline.json"
  input_pipeline.main(["--examples", "96", "--batches", "2", "--repeats", "1", "--batch_size", "16",
                       "--out", str(out)])
  rows = json.loads(out.read_text())["rows"]
  assert {(r["threads"], r["teacher_cache"], r["to_device"]) for r in rows} == {
      (t, c, d) for t in (1, 2) for c in (False, True) for d in (False, True)}
  assert all(r["images_per_s"] == pytest.approx(16 * r["batches_per_s"]) and r["batches_per_s"] > 0 for r in rows)


ORACLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "oracle.py")


def test_the_oracle_plugin_weights_the_competent_teachers_of_each_label():
  """experiments/oracle.py through the public plug-in path: each sample's KD weights are uniform
  over the teachers competent for its label, and its kd term is that weighting of the per-teacher
  KL (x T^2)."""
  import jax  # pylint: disable=import-outside-toplevel
  from mmkd_jax import registry  # pylint: disable=import-outside-toplevel
  from mmkd_jax.methods.base import apply_student, kd_matrix  # pylint: disable=import-outside-toplevel
  from helpers import method_and_batch  # pylint: disable=import-outside-toplevel
  registry.import_plugins([ORACLE])
  method, batch = method_and_batch("oracle", imports=(ORACLE,), **{"oracle.competence": "0,1,2,3|4,5,6|*"})
  params, state, meta = method.init(jax.random.key(0), batch)
  loss, (_, aux) = method.train_objective(params, state, meta, batch)
  competence = np.array([[1, 0, 1]] * 4 + [[0, 1, 1]] * 3 + [[0, 0, 1]] * 3, np.float64)
  weights = competence[np.asarray(batch["label"])]
  weights /= weights.sum(1, keepdims=True)
  _, logits, _ = apply_student(method.student, params, state, batch["image"])
  per_teacher = np.asarray(kd_matrix(logits, batch["teacher_logits"], method.temperature), np.float64)
  np.testing.assert_allclose(float(aux["terms"]["kd"]), np.mean(np.sum(weights * per_teacher, 1)), rtol=1e-5)
  np.testing.assert_allclose(float(loss), float(aux["terms"]["ce"]) + float(aux["terms"]["kd"]), rtol=1e-6)
  with pytest.raises(ValueError, match="classes \\[9\\] have no competent teacher"):
    method_and_batch("oracle", imports=(ORACLE,), **{"oracle.competence": "0,1,2,3|4,5,6|7,8"})


def test_the_per_sample_oracle_follows_the_teacher_most_right_about_each_image():
  """oracle_sample: one-hot on the teacher with the highest softmax probability on the true label
  (hand-made logits: each teacher the most right on different images, one exact tie), and its kd
  term that weighting of the per-teacher KL (x T^2)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mmkd_jax import registry  # pylint: disable=import-outside-toplevel
  from mmkd_jax.methods.base import apply_student, kd_matrix  # pylint: disable=import-outside-toplevel
  from helpers import method_and_batch  # pylint: disable=import-outside-toplevel
  (oracle,) = registry.import_plugins([ORACLE])
  # 3 images, 3 teachers, 4 classes; labels 0, 2, 3
  logits = np.zeros((3, 3, 4), np.float32)
  logits[0, :, 0] = [2.0, 1.0, 3.0]        # image 0: teacher 2 most right
  logits[1, :, 2] = [5.0, 1.0, 1.0]        # image 1: teacher 0 (a confident wrong class elsewhere loses)
  logits[1, 1, 1] = 9.0
  logits[2, :, 3] = [1.0, 4.0, 4.0]        # image 2: teachers 1 and 2 tie
  got = np.asarray(oracle.most_right_teacher(jnp.asarray(logits), jnp.asarray([0, 2, 3])))
  np.testing.assert_allclose(got, [[0, 0, 1], [1, 0, 0], [0, 0.5, 0.5]])
  method, batch = method_and_batch("oracle_sample", imports=(ORACLE,))
  params, state, meta = method.init(jax.random.key(0), batch)
  _, (_, aux) = method.train_objective(params, state, meta, batch)
  weights = np.asarray(oracle.most_right_teacher(batch["teacher_logits"], batch["label"]), np.float64)
  assert weights.shape == (len(batch["label"]), batch["teacher_logits"].shape[1]) and set(weights.sum(1)) == {1.0}
  np.testing.assert_allclose(np.asarray(aux["teacher_weights"].logits), weights)
  _, student_logits, _ = apply_student(method.student, params, state, batch["image"])
  per_teacher = np.asarray(kd_matrix(student_logits, batch["teacher_logits"], method.temperature), np.float64)
  np.testing.assert_allclose(float(aux["terms"]["kd"]), np.mean(np.sum(weights * per_teacher, 1)), rtol=1e-5)


def test_competent_share_of_hand_computed_weights():
  """routing.summarise on three samples: the share of each sample's weight on its competent
  teachers (weights need not be normalised), per class and overall."""
  sys.path.insert(0, os.path.dirname(ORACLE))
  import routing  # pylint: disable=import-outside-toplevel
  competence = np.array([[1, 0, 0], [0, 1, 1]], np.float32)  # class 0: teacher 0; class 1: teachers 1, 2
  weights = np.array([[2.0, 1.0, 1.0], [0.2, 0.3, 0.5], [0.0, 0.0, 3.0]])
  record = routing.summarise(weights, np.array([0, 1, 1]), competence)
  assert record["competent_share_per_class"] == pytest.approx([0.5, (0.8 + 1.0) / 2])
  assert record["competent_share"] == pytest.approx((0.5 + 0.8 + 1.0) / 3)
  assert record["class_teacher_weights"][1] == pytest.approx([0.1, 0.15, 0.75])


@pytest.fixture(scope="module")
def digits_teachers(tmp_path_factory):
  from helpers import save_random_digits_teachers  # pylint: disable=import-outside-toplevel
  return save_random_digits_teachers(str(tmp_path_factory.mktemp("teachers"))), str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.claim(51)
@pytest.mark.parametrize("method,expected", [("oracle", 1.0), ("aver", 0.5), ("ebkd", None), ("fitnet", 0.5),
                                             pytest.param("mmkd", None, marks=pytest.mark.slow)])
def test_routing_of_a_trained_run_on_its_test_split(tmp_path, digits_teachers, method, expected):
  """experiments/routing.py on a finished digits run (two teachers, competence split at class 5):
  the oracle puts all its weight on the competent teacher, AVER half; EBKD's per-class shares are
  its per-class mean weights on the competent teacher (the two views of one measurement agree);
  MMKD's weights, which read the whole batch (Gram rows), are measured in training-size batches;
  feature weights (FitNet's uniform ones, MMKD's learned ones) get their own record."""
  from mmkd_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from mmkd_jax.teachers import stages as teacher_stages  # pylint: disable=import-outside-toplevel
  from helpers import digits_smoke  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.dirname(ORACLE))
  import routing  # pylint: disable=import-outside-toplevel
  teacher_dir, data_dir = digits_teachers
  competence = "0,1,2,3,4|5,6,7,8,9"
  c = digits_smoke(teacher_dir=teacher_dir, data_dir=data_dir, teacher_source="online", epochs=1,
                   lr_milestones=(1,), async_checkpoints=False, method=method, stop_at_step=3, eval_batch_size=40,
                   imports=(ORACLE,), **({"oracle.competence": competence} if method == "oracle" else {}))
  c = config_lib.validate(c)
  loaded = teacher_stages.load_teachers(c)
  workdir = str(tmp_path / method)
  run_lib.train_and_evaluate(c, workdir, loaded, teacher_stages.open_cache(c, loaded), quiet=True)
  with open(os.path.join(workdir, "summary.json"), "w") as f:  # a stopped run stands in for a finished one
    f.write("{}")
  record = routing.measure_and_store(workdir, competence)
  assert record["samples"] == 359 and os.path.exists(os.path.join(workdir, "routing.json"))
  matrix = np.array(record["competence"])
  assert matrix[:5, 0].all() and not matrix[5:, 0].any()
  if expected is not None:
    assert record["competent_share"] == pytest.approx(expected, abs=1e-6)
  by_class = [sum(w for w, ok in zip(record["class_teacher_weights"][k], matrix[k]) if ok) for k in range(10)]
  np.testing.assert_allclose(record["competent_share_per_class"], by_class, rtol=1e-6)
  assert 0.0 < record["competent_share"] < 1.0 or expected is not None
  assert record["kinds"] == (["feature", "logits"] if method in ("fitnet", "mmkd") else ["logits"])
  if method == "fitnet":
    assert record["feature"]["competent_share"] == pytest.approx(0.5, abs=1e-6)
  if method == "mmkd":
    assert record["feature"]["samples"] == 359 and 0.0 <= record["feature"]["competent_share"] <= 1.0
  if method == "aver":  # a competence chosen after the run was measured: measured again, never stale
    assert routing.measure_and_store(workdir, competence) == record
    again = routing.measure_and_store(workdir, "*|5,6,7,8,9")
    np.testing.assert_allclose(again["competent_share_per_class"], [0.5] * 5 + [1.0] * 5, atol=1e-6)
    with open(os.path.join(workdir, "routing.json")) as f:
      assert json.load(f) == again
    import aekd_gradients  # pylint: disable=import-outside-toplevel
    stats = aekd_gradients.measure(workdir)  # the same run's setup, read through routing.load_trained_run
    assert stats["teachers"] == [t.name for t in c.teachers] and stats["batches"] == 359 // c.batch_size
    assert np.all((stats["entropy"] > 0) & (stats["entropy"] < np.log(10))) and np.all(stats["kl"] > 0)
    for key in ("trained_weights", "uniform_weights"):
      np.testing.assert_allclose(stats[key].sum(), 1.0, rtol=1e-6)


def test_competence_from_validation_accuracy():
  """Specialists are competent for the classes they were trained on; teachers of every class for
  the classes where their validation top-1 is within the margin of the best teacher's."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.dirname(ORACLE))
  import teacher_competence  # pylint: disable=import-outside-toplevel
  def pool(*classes):
    return ml_collections.ConfigDict({"teachers": [ml_collections.ConfigDict({"classes": c}) for c in classes]})
  accuracy = np.array([[90.0, 80.0, 70.0], [89.0, 60.0, 75.0], [50.0, 79.5, 20.0]])
  assert teacher_competence.competence_from_validation(pool((), (), ()), accuracy, 2.0) == "0,1|0,2|1"
  assert teacher_competence.competence_from_validation(pool((), (), ()), accuracy, 100.0) == "*|*|*"
  assert teacher_competence.competence_from_validation(pool((0,), (1, 2), (2,)), accuracy, 2.0) == "0|1,2|2"


def test_reproduce_takes_every_config_form_main_takes(tmp_path, capsys):
  """configs/digits.py:smoke, a shipped config by name with its argument, a run's config.json."""
  config_json = tmp_path / "config.json"
  config_json.write_text(config_lib.validate(config_lib.load(os.path.join(ROOT, "configs", "digits.py"), "smoke"))
                         .to_json_best_effort())
  for form in ("configs/digits.py:smoke", "digits:aver,smoke", str(config_json)):
    assert reproduce.main(["--config", form, "--collect_only", "--methods", "aver", "--seeds", "1",
                           "--out", str(tmp_path / "out")]) == 0
    assert "| AVER | not run |" in capsys.readouterr().out


def test_curves_use_the_evaluated_epochs_of_every_seed(tmp_path):
  """eval_every=2: the x values are the epochs evaluated (2, 4), not positions (1, 2); an epoch
  one seed has not reached yet is left out; a one-epoch run still gives its point."""
  row, variant = Row("a -> b", "configs/digits.py"), Variant("aver")
  for seed, epochs in ((0, (1, 2, 3, 4)), (1, (1, 2, 3, 4, 5, 6))):
    path = tmp_path / row.slug / variant.slug / f"seed{seed}"
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
      for epoch in epochs:
        f.write(json.dumps({"step": epoch, "epoch": epoch, **({"test/top1": 10.0 * epoch + seed} if epoch % 2 == 0
                                                              else {"train/loss": 1.0})}) + "\n")
  epochs, values = render.curve_points(str(tmp_path), row, variant, 2)
  assert epochs == [2, 4] and values.tolist() == [[20.0, 40.0], [21.0, 41.0]]
  assert render.plot_curves(str(tmp_path), row, [variant], 2, str(tmp_path / "curves.png"))


def test_meta_diagnostics_reads_the_epoch_records_of_both_weight_networks(tmp_path, capsys):
  """Only epoch-end records count; each network's one-hot fraction, hypergradient norm and mean
  weights per teacher come from its own keys; a directory without metrics.jsonl exits 2."""
  import meta_diagnostics  # pylint: disable=import-outside-toplevel
  def record(epoch, onehot, norm, w):
    r = {"step": 10 * (epoch or 0), "train/diag/logits_weights_onehot": 0.0,
         "train/diag/feature_weights_onehot": onehot, "train/hypergrad_norm/logits_weight": 3.0,
         "train/hypergrad_norm/feature_weight": norm, "teacher_weights/per_class": [[0.5, 0.5]],
         "teacher_weights/logits/a": 0.25, "teacher_weights/logits/b": 0.75,
         "teacher_weights/feature/a": w, "teacher_weights/feature/b": 1 - w}
    return r if epoch is None else {**r, "epoch": epoch, "test/top1": 50.0 + epoch}
  lines = [record(None, 0.5, 9.0, 0.5), record(1, 0.999, 1e-3, 0.99), record(2, 1.0, 0.0, 1.0)]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  rows = meta_diagnostics.diagnose(str(tmp_path))
  assert [r["epoch"] for r in rows] == [1, 2]
  assert rows[1]["feature"] == {"onehot": 1.0, "hypergrad_norm": 0.0, "weights": {"a": 1.0, "b": 0.0}}
  assert rows[0]["logits"]["weights"] == {"a": 0.25, "b": 0.75} and rows[0]["top1"] == 51.0
  assert meta_diagnostics.main([str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "| 2 | 52.00 | 0.000 | 3.00e+00 | 0.25 / 0.75 | 1.000 | 0.00e+00 | 1.00 / 0.00 |" in out
  assert "| logits mean weights (a / b) |" in out  # which teacher each weight belongs to
  assert meta_diagnostics.main([str(tmp_path / "absent")]) == 2


def test_committed_specialist_mmkd_runs_have_a_saturated_feature_weight_network():
  """RESULTS section 10's reading of MMKD on the specialists: in every committed seed the feature
  weights are one-hot on (nearly) every sample at every epoch end, with no hypergradient after
  epoch 2, while the logit weights are never one-hot."""
  import meta_diagnostics  # pylint: disable=import-outside-toplevel
  seeds = sorted((pathlib.Path(ROOT) / "experiments/results/fashion_mnist_specialists").glob("3_x*resnet8/mmkd__weights-feat-1-0/seed*"))
  assert len(seeds) == 3
  for seed in seeds:
    rows = meta_diagnostics.diagnose(str(seed))
    assert len(rows) == 10
    assert min(r["feature"]["onehot"] for r in rows) >= 0.998
    assert all(r["feature"]["hypergrad_norm"] == 0.0 for r in rows[2:])
    assert max(r["logits"]["onehot"] for r in rows) == 0.0


@pytest.mark.claim(52)
def test_pool_choices_come_from_the_validation_records_only(tmp_path):
  """MMKD's weights.feat with the best validation top-1 (a tie goes to the smaller), the teacher
  with the best validation top-1, and the competence: "" for specialists, else the record's; None
  until every record exists (the pool's table then has no MMKD / oracle row)."""
  import tables  # pylint: disable=import-outside-toplevel
  group = tmp_path / "fashion_mnist_mixed"
  assert tables.pool_choices("mixed", str(tmp_path)) == {"feat": None, "best_teacher": None, "competence": None}
  row = tables._pool_row("mixed", validation=True)  # pylint: disable=protected-access
  for feat, top1 in ((1.0, 70.0), (10.0, 75.5), (100.0, 75.5)):
    path = group / row.slug / Variant("mmkd", (f"weights.feat={feat}",)).slug / "seed0"
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"final_top1": top1, "best_top1": 99.0 - feat}))
  # The test split's accuracies are never read: the best teacher on test is another.
  teachers = {"teachers": ["strong", "weak", "noisy"], "trained_on": [None, None, None], "competence": "*|0,1|2",
              "validation": {"overall": [80.0, 85.0, 30.0]}, "test": {"overall": [99.0, 10.0, 10.0]}}
  (group / "teachers.json").write_text(json.dumps(teachers))
  assert tables.pool_choices("mixed", str(tmp_path)) == {"feat": 10.0, "best_teacher": (1, "weak"),
                                                         "competence": "*|0,1|2"}
  teachers["trained_on"] = [[0, 1], None, [2]]
  (group / "teachers.json").write_text(json.dumps(teachers))
  assert tables.pool_choices("mixed", str(tmp_path))["competence"] == ""
  # The committed specialists records give the choices RESULTS §10 states.
  assert tables.pool_choices("specialists") == {"feat": 1.0, "best_teacher": (0, "sp_0123"), "competence": ""}


def test_review_tables_tune_every_method_on_validation_with_one_budget(tmp_path):
  """The reviewer's tables: every tuned method has a grid of the same size; its knobs are the grid
  point with the best validation top-1 (a tie to the earlier point), read from the validation
  row's records only (test records of other points never count); a method whose grid is not
  finished has no row; KD's teacher and the per-class oracle's competence come from teachers.json's
  validation figures."""
  import tables  # pylint: disable=import-outside-toplevel
  assert len({len(tables.tuning_grid(m)) for m in tables.TUNED}) == 1
  assert tables.review_choices("mixed", str(tmp_path)) == {m: None for m in tables.TUNED}
  group = tmp_path / "review_mixed"
  group.mkdir()
  teachers = {"teachers": ["strong", "weak", "noisy"], "trained_on": [None, None, None], "competence": "*||0,9",
              "validation": {"overall": [87.0, 74.0, 76.0]}, "test": {"overall": [10.0, 99.0, 10.0]}}
  (group / "teachers.json").write_text(json.dumps(teachers))

  def write(row, variant, top1):
    path = group / row.slug / variant.slug / "seed0"
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"final_top1": top1, "best_top1": 99.0}))

  validation, test = tables._review_row("mixed", True), tables._review_row("mixed")  # pylint: disable=protected-access
  mmkd = tables.tuning_variants("mmkd", teachers)
  for variant, top1 in zip(mmkd, (80.0, 84.5, 82.0, 84.5, 70.0, 60.0)):
    write(validation, variant, top1)
  aver = tables.tuning_variants("aver", teachers)
  for variant, top1 in zip(aver[:-1], (81.0, 83.0, 82.0, 80.0, 79.0)):  # the last point not run yet
    write(validation, variant, top1)
  write(test, aver[0], 99.0)  # a test record is never read
  for variant, top1 in zip(tables.tuning_variants("kd", teachers), (70.0, 71.0, 72.0, 73.0, 74.0, 75.0)):
    write(validation, variant, top1)
  chosen = tables.review_choices("mixed", str(tmp_path))
  assert chosen["mmkd"] == ("weights.feat=1", "temperature=4") and chosen["aver"] is None
  assert chosen["kd"] == ("temperature=8",)
  write(validation, aver[-1], 83.0)
  assert tables.review_choices("mixed", str(tmp_path))["aver"] == ("temperature=2",)
  rows = {v.slug: v for v in tables.review_methods("mixed", str(tmp_path))}
  assert sorted(rows) == ["aver", "kd", "mmkd", "none"]
  assert rows["kd"].overrides == ("kd.teacher_index=0", "temperature=8") and "(strong); T=8" in rows["kd"].label
  assert rows["mmkd"].overrides == ("weights.feat=1", "temperature=4") and rows["mmkd"].label.endswith("feat=1, T=4")
  oracle = tables.tuning_variants("oracle", teachers)[0]
  assert oracle.overrides == (tables.ORACLE_PLUGIN, "oracle.competence=*||0,9", "temperature=1")
  teachers["trained_on"] = [[0, 1], [2], [3]]  # specialists: competent for what each was trained on
  assert "oracle.competence=" in tables.tuning_variants("oracle", teachers)[0].overrides


@pytest.mark.parametrize("pool", ["homogeneous", "specialists"])
def test_every_review_run_is_a_config_the_package_accepts(pool):
  """Each tuning point of every method (its knobs as overrides, KD's teacher, the oracles' plug-in)
  and each deviation switch resolves and validates on the pool's row, with the knob in place."""
  import tables  # pylint: disable=import-outside-toplevel
  teachers = {"teachers": ["a", "b", "c"], "trained_on": [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]] if pool == "specialists"
              else [None, None, None], "competence": "*|*|*", "validation": {"overall": [80.0, 85.0, 30.0]}}
  row = tables._review_row(pool, validation=True)  # pylint: disable=protected-access
  base = config_lib.load(row.config, row.arg, row.overrides)
  variants = [v for m in tables.TUNED for v in tables.tuning_variants(m, teachers)]
  variants += list(tables.TABLES["review_deviations"].variants) if pool == "homogeneous" else []
  assert len(variants) == len(tables.TUNED) * 6 + (5 if pool == "homogeneous" else 0)
  for variant in variants:
    c = config_lib.validate(reproduce.method_config(base, variant.method, variant.overrides, seed=0))
    assert c.method == variant.method and c.eval_split == "train[90%:]"
    for override in variant.overrides:
      key, _, value = override.partition("=")
      if key in ("temperature", "weights.feat"):
        assert float(c[key] if "." not in key else c.weights.feat) == float(value), (variant.slug, key)
    if variant.method == "kd":
      assert c.kd.teacher_index == 1


def test_keep_copies_each_finished_runs_records_and_no_checkpoint(tmp_path):
  row, variant = Row("a -> b", "configs/digits.py"), Variant("aver")
  table = Table("toy", (row,), (variant,))
  for seed in (0, 1):
    run = tmp_path / "out" / row.slug / variant.slug / f"seed{seed}"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "config.json").write_text("{}")
    if seed == 0:  # seed 1 has not finished
      (run / "summary.json").write_text(json.dumps(_summary(90.0, 91.0)))
      (run / "routing.json").write_text(json.dumps({"competent_share": 0.5}))
  keep = tmp_path / "keep"
  results = reproduce.run_table(table, str(tmp_path / "out"), 2, [], collect_only=True, keep=str(keep))
  assert len(results[row.label][variant.slug]) == 1
  kept = keep / row.slug / variant.slug
  assert sorted(p.name for p in kept.iterdir()) == ["seed0"]
  assert sorted(p.name for p in (kept / "seed0").iterdir()) == ["config.json", "metrics.jsonl", "routing.json",
                                                                 "summary.json"]
  assert json.loads((kept / "seed0" / "summary.json").read_text())["final_top1"] == 90.0


@pytest.mark.claim(50)
def test_a_table_warns_when_its_runs_distilled_from_different_teachers():
  """A teacher retrained between runs (another machine, a changed recipe) gives other weights: the
  table says so instead of averaging over two teacher sets. Runs without teachers (no KD) count not."""
  row = Row("s", "configs/digits.py")
  table = Table("toy", (row,), ("none", "aver"))
  def run(fingerprint):
    teachers = [{"name": "a", "fingerprint": "f0"}, {"name": "b", "fingerprint": fingerprint}]
    return dict(_summary(90.0, 90.0), teachers=teachers)
  same = {row.label: {"none": [dict(_summary(80.0, 80.0), teachers=[])], "aver": [run("f1"), run("f1")]}}
  assert "WARNING" not in render.render_table(table, same)
  mixed = {row.label: {"none": [], "aver": [run("f1"), run("f1"), run("f2")]}}
  assert ("- WARNING: these runs distilled from 2 different teacher sets: 2 runs from a f0, b f1; "
          "1 runs from a f0, b f2") in render.render_table(table, mixed)


def test_aekd_gradients_weights_the_teacher_whose_batch_mean_matches_the_student():
  import aekd_gradients  # pylint: disable=import-outside-toplevel
  classes, batch = 4, 8
  uniform = np.full((batch, classes), 1.0 / classes)
  one_hot = np.eye(classes)[np.arange(batch) % classes]  # right on every image, batch mean uniform too
  skewed = np.eye(classes)[np.zeros(batch, int)]  # always class 0
  stats = aekd_gradients.batch_statistics(uniform, np.stack([skewed, one_hot, uniform]), cap=0.6)
  np.testing.assert_allclose(stats["entropy"], [0.0, 0.0, np.log(classes)], atol=1e-12)
  np.testing.assert_allclose(stats["kl"], [np.log(classes), np.log(classes), 0.0], atol=1e-12)
  np.testing.assert_allclose(stats["gap_norm"], [np.sqrt(0.75 ** 2 + 3 * 0.25 ** 2), 0.0, 0.0], atol=1e-12)
  # Per image the one-hot teacher and the uniform one differ completely; their batch means do not,
  # so AEKD cannot tell them apart: the skewed teacher gets nothing, the other two share the rest.
  assert stats["weights"][0] == pytest.approx(0.0, abs=1e-9)
  assert stats["weights"].sum() == pytest.approx(1.0)
  assert max(stats["weights"][1:]) <= 0.6 + 1e-9


@pytest.mark.claim(30)
def test_a_table_warns_when_its_runs_come_from_several_code_versions():
  row = Row("s", "configs/digits.py")
  table = Table("toy", (row,), ("aver",))
  runs = [dict(_summary(90.0, 90.0), code_version=v) for v in ("0.2.0+aaa", "0.2.0+aaa")]
  assert "code versions" not in render.render_table(table, {row.label: {"aver": runs}})
  runs.append(dict(_summary(91.0, 91.0), code_version="0.2.0+bbb-dirty"))
  assert ("- WARNING: these runs come from 2 code versions, some uncommitted or unrecorded (cannot be compared): "
          "0.2.0+aaa, 0.2.0+bbb-dirty" in render.render_table(table, {row.label: {"aver": runs}}))


def test_runs_from_several_commits_are_one_version_only_where_the_package_is_the_same(tmp_path):
  """A queue that outlived a commit: records from commits between which no package file changed
  are one code version (git diff of a real repository), others a warning naming the changed one."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import provenance  # pylint: disable=import-outside-toplevel

  def commit(path, text):
    (tmp_path / path).parent.mkdir(exist_ok=True)
    (tmp_path / path).write_text(text)
    subprocess.run(["git", "-C", str(tmp_path), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", path],
                   check=True)
    return subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
  subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
  first = commit("mmkd_jax/step.py", "x = 1\n")
  docs_only = commit("experiments/RESULTS.md", "a table\n")
  package = commit("mmkd_jax/step.py", "x = 2\n")
  same = provenance.versions_line([f"0.2.0+{first}", f"0.2.0+{docs_only}", f"0.2.0+{first}"], str(tmp_path))
  assert same.startswith("These runs come from 2 commits") and "same package" in same
  changed = provenance.versions_line([f"0.2.0+{first}", f"0.2.0+{docs_only}", f"0.2.0+{package}"], str(tmp_path))
  assert changed.startswith("WARNING: these runs come from 3 code versions with 2 different packages: ")
  assert sorted(changed.split("packages: ", 1)[1].split(" | ")) == sorted(
      [", ".join(sorted([f"0.2.0+{first}", f"0.2.0+{docs_only}"])), f"0.2.0+{package}"])
  assert "not all in this checkout" in provenance.versions_line([f"0.2.0+{first}", "0.2.0+0123abc"], str(tmp_path))
  assert provenance.versions_line([f"0.2.0+{first}"] * 3, str(tmp_path)) == ""


def test_significance_matches_scipys_welch_tests():
  """The tables' difference, interval, p-value, TOST and equivalence margin against scipy's own
  Welch t-tests (the digits end-to-end records: original and exact, last top-1 of 5 seeds)."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  import significance  # pylint: disable=import-outside-toplevel
  original = [96.10, 95.82, 94.99, 94.71, 95.82]
  exact = [95.26, 97.21, 96.38, 95.26, 96.10]
  d = significance.welch(exact, original)
  scipy_test = stats.ttest_ind(exact, original, equal_var=False)
  interval = scipy_test.confidence_interval(0.95)
  assert (d.low, d.high) == pytest.approx((interval.low, interval.high), abs=1e-9)
  assert d.p == pytest.approx(scipy_test.pvalue, abs=1e-12) and not d.beyond
  for margin in (0.5, 1.0, 2.0):
    lower = stats.ttest_ind([x + margin for x in exact], original, equal_var=False, alternative="greater").pvalue
    upper = stats.ttest_ind([x - margin for x in exact], original, equal_var=False, alternative="less").pvalue
    assert significance.tost(exact, original, margin) == pytest.approx(max(lower, upper), abs=1e-12)
  assert significance.tost(exact, original, significance.equivalence_margin(exact, original)) == pytest.approx(
      0.05, abs=1e-9)


def test_significance_calls_a_difference_only_where_welch_rejects():
  """The reviewer's case: at n = 3 a difference beyond 2 standard errors is not significant by
  Welch's t (section 10's mixed pool: oracle - AVER, p 0.09); a clear one is."""
  import significance  # pylint: disable=import-outside-toplevel
  aver = [83.27, 83.68, 83.92]
  oracle = [84.18, 84.92, 85.86]
  d = significance.welch(oracle, aver)
  assert abs(d.diff) > 2 * d.se and 0.05 < d.p < 0.15 and not d.beyond
  assert significance.welch([86.0, 86.1, 85.9], aver).beyond
  with pytest.raises(ValueError, match="at least 2"):
    significance.welch([1.0], aver)


@pytest.mark.parametrize("code,timing", [("precomputed", True), ("faithful", False)])
def test_end_to_end_runs_of_ours_are_commands_the_cli_accepts(code, timing, tmp_path):
  """Our runs in the PyTorch end-to-end harness, as the harness builds them (a timing run once
  passed a 'timing_cache_dir' flag): the CLI resolves them, and a timing run writes elsewhere."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import pytorch_end_to_end as e2e  # pylint: disable=import-outside-toplevel
  out = str(tmp_path / "digits")
  work, args = e2e.our_run(e2e.SETTINGS["digits"], code, 3, out, timing)
  assert work != e2e.our_run(e2e.SETTINGS["digits"], code, 3, out, not timing)[0]
  done = subprocess.run([sys.executable, "-m", "mmkd_jax.main", *args, "--config.mode=show_config"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  shown = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines() if len(line.split()) > 1}
  assert shown["seed"] == "3" and shown["teacher_source"] == ('"precomputed"' if code == "precomputed" else '"online"')
  assert shown["faithful"] == ("true" if code == "faithful" else "false")
  assert shown["augmentation_seed"] == "3"  # each run its own views, as each of the original's


def test_end_to_end_teachers_reach_the_original_as_ours_loads_them(tmp_path):
  """The .pth the original loads holds exactly the teacher directory's variables (the teacher's
  last epoch, which ours loads), not its run's best checkpoint: a teacher whose best epoch was not
  its last reached the two codes as different networks (logits 0.70 apart)."""
  torch = pytest.importorskip("torch")
  import pytorch_end_to_end as e2e  # pylint: disable=import-outside-toplevel
  from helpers import random_teachers  # pylint: disable=import-outside-toplevel
  from mmkd_jax.teachers import convert, save_teacher  # pylint: disable=import-outside-toplevel
  (teacher,) = random_teachers(("resnet8",))
  directory = str(tmp_path / "teachers" / "t_resnet8")
  save_teacher(directory, "resnet8", 10, teacher.variables,
               {"name": "t_resnet8", "image_shape": [32, 32, 3], "num_classes": 10})
  path = str(tmp_path / "export" / "t_resnet8" / "student.pth")
  e2e.write_teacher_pth(directory, path)
  written = torch.load(path, map_location="cpu")["model"]
  expected = convert.flax_to_torch(teacher.variables)
  assert sorted(written) == sorted(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(written[k].numpy(), np.asarray(v))


def test_end_to_end_table_takes_wall_times_from_the_timing_runs_warm_first():
  """Accuracy from the accuracy runs, wall time from the timing runs (warm compilation cache, the
  cold first run in parentheses); a code timed only (precomputed teachers) gets its time row."""
  import pytorch_end_to_end as e2e  # pylint: disable=import-outside-toplevel

  def record(code, top1, seconds=600.0, cache=None, seed=0):
    epochs = [{"test_top1": top1, "weights_logits": [0.5, 0.5, 0.0], "weights_feature": [1.0, 0.0, 0.0]}]
    return {"code": code, "seed": seed, "epochs": epochs, "wall_seconds": seconds,
            "profile_seconds": {"evaluation": 1.0}, **({"compilation_cache": cache} if cache else {})}
  records = {"original": [record("original", t, seed=s) for s, t in enumerate((95.0, 96.0))],
             "exact": [record("exact", t, seed=s) for s, t in enumerate((95.5, 96.5))]}
  timing = {"original": [record("original", 0, 240.0), record("original", 0, 250.0, seed=1)],
            "exact": [record("exact", 0, 300.0, "cold"), record("exact", 0, 200.0, "warm", 1)],
            "precomputed": [record("precomputed", 0, 360.0, "cold"), record("precomputed", 0, 120.0, "warm", 1)]}
  rows = {line.split("|")[1].strip(): line for line in e2e.render(records, "digits", 0.5, timing).splitlines()
          if line.startswith("| ") and not line.startswith("| code")}
  assert rows["original"].endswith("| 4.1 | 1.00x |")  # median 245 s
  assert rows["exact"].startswith("| exact | 2 | 96.00 ± 0.71 |")
  records["original"][1]["epochs"][-1]["weights_logits"] = [0.2, 0.3, 0.5]
  table = e2e.render(records, "digits", 0.5, timing)
  assert "- original: t_resnet14 1, t_resnet20 0, t_wrn_16_1 1; t_resnet14 2, t_resnet20 0, t_wrn_16_1 0" in table
  assert "- exact: t_resnet14 2, t_resnet20 0, t_wrn_16_1 0; t_resnet14 2, t_resnet20 0, t_wrn_16_1 0" in table
  # speed-ups paired by seed: 250 / 200 warm (seed 1), 240 / 300 cold (seed 0)
  assert rows["exact"].endswith("| 3.3 | 1.25x (5.0 cold: 0.80x) |")
  assert rows["precomputed"] == "| precomputed | timed only | | | | | | 2.0 | 2.08x (6.0 cold: 0.67x) |"
  # a queue resumed on a machine twice as fast: the original's seeds 1 and 2 ran there, ours only
  # seed 0 on the slow one (a ratio of medians would say 300 / 400)
  resumed = {"original": [record("original", 95.0, 600.0), record("original", 95.0, 300.0, seed=1),
                          record("original", 95.0, 300.0, seed=2)],
             "exact": [record("exact", 95.0, 400.0, "warm")]}
  assert "| 6.7 | 1.50x |" in e2e.render(resumed, "fashion_mnist", 0.5)
  assert "teacher sets" not in e2e.render(records, "digits", 0.5, timing)
  for code, digests in (("original", ["aa", "bb"]), ("exact", ["aa", "bc"])):
    for seed, r in enumerate(records[code]):
      r["teachers"], r["seed"] = digests, seed
  assert "WARNING: these runs distilled from 2 different teacher sets (.pth sha256): aa, bb; aa, bc" in e2e.render(
      records, "digits", 0.5, timing)
  # retrained teachers from seed 1 on, for every code: blocks of a balanced design, not a warning
  for code in ("original", "exact"):
    records[code][0]["teachers"], records[code][1]["teachers"] = ["aa", "bb"], ["aa", "bc"]
  table = e2e.render(records, "digits", 0.5, timing)
  assert "WARNING" not in table and ("These runs distilled from 2 teacher sets (.pth sha256), each used by every code "
                                     "at the same seeds (blocks): seeds 0: aa, bb; seeds 1: aa, bc") in table
  records["exact"][1]["seed"] = 2  # one code's block at other seeds
  assert "WARNING: these runs distilled from 2 different teacher sets" in e2e.render(records, "digits", 0.5, timing)
  assert "code versions" not in e2e.render(records, "digits", 0.5, timing)
  records["exact"][1]["code_version"] = "0.2.0+abc-dirty"
  records["exact"][0]["code_version"], records["original"][0]["code_version"] = "0.2.0+abc", "0.2.0+zzz"
  assert ("WARNING: these runs come from 2 code versions, some uncommitted or unrecorded (cannot be compared): "
          "0.2.0+abc, 0.2.0+abc-dirty") in e2e.render(records, "digits", 0.5, timing)


def test_a_resumed_queue_starts_a_seed_again_when_its_teachers_were_retrained_before_it_finished(tmp_path):
  """Teachers retrained on a new machine differ bit for bit: a seed that every code finished stays
  (a block of its own), a seed only some codes finished on the old teachers is moved aside so that
  every code runs it on the new ones; records on the current teachers stay."""
  import pytorch_end_to_end as e2e  # pylint: disable=import-outside-toplevel
  codes, old, new = ["original", "faithful", "exact"], ["a1", "b1", "c1"], ["a2", "b2", "c2"]

  def write(code, seed, teachers):
    (tmp_path / code).mkdir(exist_ok=True)
    (tmp_path / code / f"seed{seed}.json").write_text(json.dumps({"code": code, "seed": seed, "teachers": teachers}))
  for code in codes:
    write(code, 1, old)
  write("original", 2, old)
  write("faithful", 2, new)
  write("original", 3, new)
  assert e2e.supersede_unfinished_seed(str(tmp_path), codes, 1, new) == []
  moved = e2e.supersede_unfinished_seed(str(tmp_path), codes, 2, new)
  assert [os.path.relpath(m, tmp_path) for m in moved] == [
      os.path.join("superseded", "original", "seed2.teachers-"
                   + hashlib.sha256(b"a1,b1,c1").hexdigest()[:8] + ".json")]
  assert json.loads(open(moved[0]).read())["teachers"] == old
  assert sorted(p.name for p in tmp_path.glob("*/seed2.json")) == ["seed2.json"]  # faithful's, on the new teachers
  assert e2e.supersede_unfinished_seed(str(tmp_path), codes, 3, new) == []
  assert all((tmp_path / code / "seed1.json").exists() for code in codes)


def test_the_originals_profile_counts_its_teachers_forwards_in_evaluation_as_evaluation(monkeypatch):
  """Like for like with ours: a teacher's forward inside the original's evaluation is evaluation
  (ours times its teachers' evaluation there), outside it the teachers' own part; nested parts are
  not counted twice."""
  import pytorch_end_to_end as e2e  # pylint: disable=import-outside-toplevel
  now = [0.0]
  monkeypatch.setattr(e2e.time, "perf_counter", lambda: now[0])

  def forward():
    now[0] += 1.0
  timer = e2e._Timer()  # pylint: disable=protected-access
  teacher = timer.timed(forward, "teacher forwards", except_within="evaluation")
  with timer.part("steps and host"):
    teacher()
    now[0] += 0.5
    with timer.part("evaluation"):
      teacher()
      teacher()
  assert timer.seconds == {"teacher forwards": 1.0, "evaluation": 2.0, "steps and host": 0.5}


def test_our_profiled_run_goes_through_the_cli(tmp_path):
  """The profile wrapper of our runs (experiments/pytorch_end_to_end.py's _PROFILED) around the
  package's current functions: a smoke run finishes and times its parts."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import pytorch_end_to_end as e2e  # pylint: disable=import-outside-toplevel
  profile = tmp_path / "profile.json"
  done = subprocess.run([sys.executable, "-c", f"PROFILE = {str(profile)!r}\n" + e2e._PROFILED,  # pylint: disable=protected-access
                         "--", "--config", os.path.join(ROOT, "configs", "digits.py") + ":none,smoke",
                         "--workdir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  seconds = json.loads(profile.read_text())
  assert seconds["evaluation"] > 0 and seconds["compilation and first step"] > 0
