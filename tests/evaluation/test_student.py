"""Getting the student out: export, load-and-predict, and evaluation without teachers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import mmkd_jax
from mmkd_jax.training import run as run_lib
from mmkd_jax import config as config_lib
from mmkd_jax.evaluation import student as student_lib
from mmkd_jax.training import setup as train
from mmkd_jax.data import sources
from mmkd_jax.teachers import convert

from helpers import ROOT, digits_smoke, random_teachers


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("student")
  config = config_lib.validate(digits_smoke(data_dir=str(root / "tfds"), teacher_source="online", method="aver",
                                            async_checkpoints=False, teacher_dir=str(root / "t")))
  summary = run_lib.train_and_evaluate(config, str(root / "run"), random_teachers(("resnet8", "resnet8"),
                                                                                names=("s_resnet8a", "s_resnet8b")),
                                     quiet=True)
  return config, str(root / "run"), summary


def _test_images(config):
  dataset = sources.open_dataset(config)
  records = sources.read_records(dataset.test, np.arange(len(dataset.test)), dataset.spec)
  return records["image"], records["label"]


def test_export_reload_predict_and_evaluate_agree(trained, tmp_path):
  """The exported student, reloaded through load_student, scores what mode=evaluate reports and
  what training logged for the best checkpoint."""
  config, workdir, summary = trained
  written = student_lib.export_student(workdir, str(tmp_path / "export"))
  assert {"orbax", "npz", "meta"} <= set(written)
  with open(written["meta"]) as f:
    meta = json.load(f)
  assert meta["arch"] == "resnet8" and meta["image_shape"] == [32, 32, 3] and meta["run"]["top1"] == summary["best_top1"]
  images, labels = _test_images(config)
  accuracies = {}
  for name, path in (("export", str(tmp_path / "export")), ("workdir", workdir)):
    student = mmkd_jax.load_student(path)
    accuracies[name] = 100.0 * float(np.mean(np.argmax(student.predict(images), -1) == labels))
    np.testing.assert_allclose(student.predict(images[:5]).sum(-1), 1.0, rtol=1e-5)
  evaluated = student_lib.evaluate_workdir(config_lib.validate(digits_smoke(data_dir=config.data_dir, method="aver",
                                                                            teachers=[], mode="evaluate")), workdir)
  assert accuracies["export"] == accuracies["workdir"] == pytest.approx(evaluated["top1"]) == pytest.approx(summary["best_top1"])
  # another evaluation with other evaluators replaces evaluation.json; the history keeps both
  student_lib.evaluate_workdir(config_lib.validate(digits_smoke(data_dir=config.data_dir, method="aver", teachers=[],
                                                                mode="evaluate", evaluators=("accuracy", "calibration"))),
                               workdir)
  with open(os.path.join(workdir, "evaluations.jsonl")) as f:
    history = [json.loads(line) for line in f]
  assert [h["evaluators"] for h in history][-2:] == [["accuracy"], ["accuracy", "calibration"]]
  with open(os.path.join(workdir, "evaluation.json")) as f:
    assert json.load(f)["evaluators"] == ["accuracy", "calibration"]
  # float images in [0, 1] give the same predictions as uint8
  student = mmkd_jax.load_student(str(tmp_path / "export"))
  np.testing.assert_allclose(student.predict(images[:8] / 255.0), student.predict(images[:8]), atol=1e-5)
  with pytest.raises(ValueError, match="takes images of shape"):
    student.predict(images[:2, :28, :28])


def test_npz_and_pth_round_trip_to_float32(trained, tmp_path):
  config, workdir, _ = trained
  written = student_lib.export_student(workdir, str(tmp_path / "export"))
  student = mmkd_jax.load_student(workdir)
  images, _ = _test_images(config)
  expected = student.logits(images[:16])
  model, variables = convert.load_pretrained("resnet8", 10, written["npz"], (32, 32, 3))
  x = (images[:16].astype(np.float32) / 255 - np.float32(student.mean[0])) / np.float32(student.std[0])
  np.testing.assert_allclose(np.asarray(model.apply(variables, x)[1]), expected, rtol=1e-5, atol=1e-5)
  if "pth" in written:  # torch installed: the .pth reloads through the converter (and torch.load)
    _, pth_vars = convert.load_pretrained("resnet8", 10, written["pth"], (32, 32, 3))
    np.testing.assert_allclose(np.asarray(model.apply(pth_vars, x)[1]), expected, rtol=1e-5, atol=1e-5)


def test_evaluate_reports_teachers_agreement_and_kl(trained, tmp_path):
  """Agreement and KL(p_t || p_s) equal what the test computes from the two models' logits."""
  config, workdir, _ = trained
  from mmkd_jax import teachers as teachers_lib  # pylint: disable=import-outside-toplevel
  from mmkd_jax.teachers import stages as teacher_stages  # pylint: disable=import-outside-toplevel
  eval_config = config_lib.validate(digits_smoke(data_dir=config.data_dir, method="aver", teacher_dir=str(tmp_path),
                                                 mode="evaluate"))
  teachers = random_teachers(("resnet8", "resnet8"), names=("s_resnet8a", "s_resnet8b"))
  for t, entry in zip(teachers, eval_config.teachers):
    teachers_lib.save_teacher(os.path.join(str(tmp_path), f"digits_{t.name}"), t.arch, 10, t.variables,
                              {"identity": teacher_stages.identity(eval_config, entry)})
  result = student_lib.evaluate_workdir(eval_config, workdir)
  images, labels = _test_images(config)
  student = mmkd_jax.load_student(workdir)
  log_p_s = np.log(student.predict(images).astype(np.float64))
  x = (images.astype(np.float32) / 255 - np.float32(student.mean[0])) / np.float32(student.std[0])
  for t in teachers:
    z = np.asarray(t.model.apply(t.variables, x, train=False)[1], np.float64)
    log_p_t = z - z.max(-1, keepdims=True)
    log_p_t -= np.log(np.exp(log_p_t).sum(-1, keepdims=True))
    agreement = 100.0 * np.mean(z.argmax(-1) == log_p_s.argmax(-1))
    kl = np.mean(np.sum(np.exp(log_p_t) * (log_p_t - log_p_s), -1))
    assert result[f"agreement/{t.name}"] == pytest.approx(agreement, abs=1e-9)
    assert result[f"kl/{t.name}"] == pytest.approx(kl, rel=1e-4)
  assert result["split"] == "test" and len(labels) == 359


@pytest.mark.claim(40)
def test_every_export_form_loads_and_predicts_the_same(trained, tmp_path):
  """load_student reads the export directory, its student.npz and its orbax variables/ alike."""
  config, workdir, _ = trained
  student_lib.export_student(workdir, str(tmp_path / "export"))
  images, _ = _test_images(config)
  expected = mmkd_jax.load_student(workdir).logits(images[:16])
  for form in ("export", "export/student.npz", "export/variables"):
    np.testing.assert_allclose(mmkd_jax.load_student(str(tmp_path / form)).logits(images[:16]), expected,
                               rtol=1e-5, atol=1e-5, err_msg=form)
  (tmp_path / "lonely.npz").write_bytes((tmp_path / "export" / "student.npz").read_bytes())
  with pytest.raises(FileNotFoundError, match="no student.json beside it"):
    mmkd_jax.load_student(str(tmp_path / "lonely.npz"))


@pytest.mark.claim(38)
def test_float_images_outside_zero_one_are_refused(trained):
  config, workdir, _ = trained
  images, _ = _test_images(config)
  student = mmkd_jax.load_student(workdir)
  with pytest.raises(ValueError, match=r"float images must be in \[0, 1\].*divide by 255"):
    student.predict(images[:4].astype(np.float32))


@pytest.mark.claim(37)
def test_a_corrupt_best_checkpoint_falls_back_to_the_latest(trained, tmp_path, capsys):
  import shutil  # pylint: disable=import-outside-toplevel
  _, workdir, _ = trained
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  for path in (copy / "best").rglob("*"):
    if path.is_file() and path.parent.name != "best" and "state" in str(path):
      path.write_bytes(b"garbage")
  student = mmkd_jax.load_student(str(copy))
  assert "using the latest checkpoint" in capsys.readouterr().err
  assert student.info["selected_on"].endswith("(latest)")
  for path in copy.rglob("*"):
    if path.is_file() and "state" in str(path):
      path.write_bytes(b"garbage")
  from mmkd_jax.runs import checkpoint  # pylint: disable=import-outside-toplevel
  with pytest.raises(checkpoint.CheckpointError, match="no readable checkpoint"):
    mmkd_jax.load_student(str(copy))


def test_evaluate_writes_each_configured_evaluator_to_evaluation_json(trained):
  """mode=evaluate with per-class accuracy and calibration: evaluation.json holds what the
  exported predictions give (per class, and the ECE of their top probabilities)."""
  config, workdir, _ = trained
  result = student_lib.evaluate_workdir(config_lib.validate(digits_smoke(
      data_dir=config.data_dir, method="aver", teachers=[], mode="evaluate",
      evaluators=("accuracy", "per_class", "calibration"))), workdir)
  with open(os.path.join(workdir, student_lib.EVALUATION_FILE)) as f:
    written = json.load(f)
  assert written["top1"] == result["top1"] and written["evaluators"] == ["accuracy", "per_class", "calibration"]
  images, labels = _test_images(config)
  probs = mmkd_jax.load_student(workdir).predict(images).astype(np.float64)
  hits = probs.argmax(-1) == labels
  np.testing.assert_allclose(written["per_class_top1"], [100.0 * hits[labels == c].mean() for c in range(10)])
  confidence, ece = probs.max(-1), 0.0
  for i in range(15):
    inside = (confidence > i / 15) & (confidence <= (i + 1) / 15)
    if inside.any():
      ece += inside.mean() * abs(hits[inside].mean() - confidence[inside].mean())
  assert written["ece"] == pytest.approx(ece, abs=1e-5)


def test_a_student_starts_from_a_checkpoint_with_its_own_or_a_new_head(trained, tmp_path):
  """student_checkpoint: a run's directory (head kept) or an exported .npz (checkpoint_head=reinit:
  the classifier is the run's own random one) gives step 0's student; summary.json records it."""
  import jax  # pylint: disable=import-outside-toplevel
  config, workdir, _ = trained
  written = student_lib.export_student(workdir, str(tmp_path / "export"))
  source = mmkd_jax.load_student(workdir).variables
  teachers = random_teachers(("resnet8", "resnet8"), names=("s_resnet8a", "s_resnet8b"))
  for path, head in ((workdir, "keep"), (written["npz"], "reinit")):
    c = config_lib.validate(digits_smoke(data_dir=config.data_dir, teacher_source="online", method="aver",
                                         teacher_dir=config.teacher_dir, student_checkpoint=path, checkpoint_head=head))
    setup = train.build(c, teachers)
    state, host, ckpt = run_lib.restore_or_init(setup, str(tmp_path / head), quiet=True)
    ckpt.close()
    random_start = train.initial_state(setup)
    assert host["student_init"]["head"] == head
    for key, value in jax.tree_util.tree_flatten_with_path(state.params["student"])[0]:
      name = jax.tree_util.keystr(key)
      expected = (random_start.params["student"] if head == "reinit" and "'fc'" in name else source["params"])
      np.testing.assert_array_equal(value, _at(expected, key), err_msg=f"{head} {name}")
  with pytest.raises(config_lib.ConfigError, match="config.student_checkpoint: .* does not exist"):
    config_lib.validate(digits_smoke(student_checkpoint=str(tmp_path / "missing.npz")))


def _at(tree, key):
  for part in key:
    tree = tree[part.key]
  return tree


@pytest.mark.claim(31)
def test_a_student_evaluated_on_a_dataset_of_another_shape_is_refused_naming_both(trained):
  config, workdir, _ = trained
  parts = os.path.join(ROOT, "tests", "plugin", "my_parts.py")
  other = config_lib.validate(digits_smoke(data_dir=config.data_dir, method="aver", teachers=[], mode="evaluate",
                                           imports=(parts,), dataset="bright_quadrant"))
  with pytest.raises(ValueError, match=r"takes \(32, 32, 3\) images of 10 classes; config.dataset 'bright_quadrant' "
                                       r"has \(12, 12, 3\)"):
    student_lib.evaluate_workdir(other, workdir)


def test_raw_images_of_another_size_are_refused_saying_how_or_resized(trained, tmp_path):
  """scikit-learn's raw 8x8 digits (floats 0..16 scaled to [0, 1]): the export records how its
  training images were made; predict refuses other sizes saying so, and resize=True resizes
  (grey over RGB). Resizing the 32x32 images to themselves changes nothing."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  config, workdir, _ = trained
  written = student_lib.export_student(workdir, str(tmp_path / "export"))
  with open(written["meta"]) as f:
    meta = json.load(f)
  assert meta["input"]["shape"] == [32, 32, 3] and "upsampled 4x" in meta["input"]["made"]
  student = mmkd_jax.load_student(str(tmp_path / "export"))
  raw = load_digits().images[:6] / 16.0  # (6, 8, 8) grey floats in [0, 1]
  with pytest.raises(ValueError, match=r"takes images of shape \(32, 32, 3\), got \(8, 8, 1\).*upsampled 4x .*"
                                       r"digits_as_images.*resize=True"):
    student.predict(raw)
  probabilities = student.predict(raw, resize=True)
  assert probabilities.shape == (6, 10)
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
  images, _ = _test_images(config)
  np.testing.assert_array_equal(student_lib.resized(images[:4], (32, 32, 3)), images[:4])
