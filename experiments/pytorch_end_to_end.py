"""Whole runs of the original PyTorch MMKD code and of ours on one setting, side by side: accuracy
over seeds, the learned teacher weights over training, and wall time end to end.

    python experiments/pytorch_end_to_end.py --reference /path/to/MMKD --setting fashion_mnist \\
        --seeds 0,1,2,3,4 [--codes original,faithful,exact] [--collect_only]

``--reference`` is an unmodified checkout of github.com/Rorozhl/MMKD (read, never written). Its
``train_meta.py`` is imported and its ``main_worker`` runs as it is: the training step, the meta
step (two matching look-ahead steps and one cross-entropy step on a hard-buffer batch, then
``MetaSGD.meta_backward``), the learning-rate schedule, the per-epoch validation and the best
checkpoint are its own code. Adapted outside its files, in this process only:

* data: ``get_cifar100_dataloaders`` returns loaders over the shared images (our TFDS dataset read
  as uint8 arrays) with the original's CIFAR transforms (RandomCrop(32, padding=4),
  RandomHorizontalFlip, ToTensor, Normalize with the dataset's mean and std), batch 64, test batch
  32, shuffled by torch's generator (seeded per run);
* teachers: ``load_teacher_list`` loads our trained teachers, written to ``.pth`` from the very
  variables ours loads (``write_teacher_pth``: the teacher's last epoch), into the original's model
  classes (``model_dict``);
* the class count: ``main_worker`` maps dataset names to class counts in a local dict and picks its
  32x32 path by ``opt.dataset == 'cifar100'``; the dataset name passed here equals both 'STL10'
  (10 classes) and 'cifar100';
* the breakages of the code on current Python / PyTorch (as experiments/compare_pytorch.py):
  ``from symbol import ...`` (a module removed in Python 3.10), ``tensorboard_logger`` and (when
  absent) ``pandas``, which only its CUB-200 loader uses, get empty stand-ins; ``.cuda()`` is the
  identity; ``MetaSGD.zero_grad`` writes zeros as PyTorch 1.8 did;
* records: the outputs of ``LogitsWeight`` / ``FeatureWeight`` in each training step (not in the
  look-ahead steps) are averaged per epoch, ``validate``'s result per epoch is kept, and the time
  of data loading, teacher forwards, the meta steps, evaluation and checkpoints is measured.
  Evaluation is counted alike in both codes: the test split's loading and the teachers' forwards
  in it are evaluation, and ours starts its clock after the training steps still in flight.

Views: the teachers train on views of their own (``teacher_training.views=own``, the default since
2026-12-07; RESULTS section 12), and each of our runs draws its own
crops and flips (``augmentation_seed`` = its seed), as every run of the original draws fresh ones:
no student trains on the very pixels its teachers were trained on, and seeds are independent.

Ours runs the same setting through the CLI (``teacher_source=online``: a new crop and flip every
epoch, as the original), once with ``faithful=True`` (the original's approximate hypergradient,
its BatchNorm rollback, PyTorch's adapter initialisation) and once with the default exact
hypergradient. Each (code, seed) writes a record ``<out>/<code>/seed<s>.json``; finished ones are
skipped, so the queue resumes. ``--collect_only`` renders the table from the records.

Settings: ``fashion_mnist`` (``train[:5000]`` at 32x32x3, experiments/fashion_mnist32.py;
resnet20 / wrn_16_2 / vgg8 -> resnet8; 10 epochs, lr 0.05 x0.1 after 6 and 8; MMKD's feature
weight 1, the value section 8 chose on validation) and ``digits`` (the default job's teachers
resnet14 / resnet20 / wrn_16_1 -> resnet8, 15 epochs, x0.1 after 10 and 13, feature weight 10).
Both: batch 64, hard buffer 256, meta step every 5 batches, Nesterov SGD, weight decay 5e-4.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import provenance  # pylint: disable=wrong-import-position  (experiments/provenance.py)
import significance  # pylint: disable=wrong-import-position  (experiments/significance.py)

SETTINGS = {
    "fashion_mnist": {"dataset": "fashion_mnist32", "imports": (os.path.join(HERE, "fashion_mnist32.py"),),
                      "train_split": "train[:5000]", "student": "resnet8",
                      "teachers": (("t_resnet20", "resnet20", 301), ("t_wrn_16_2", "wrn_16_2", 302),
                                   ("t_vgg8", "vgg8", 303)),
                      "epochs": 10, "milestones": (6, 8), "teacher_epochs": 15, "teacher_milestones": (9, 12),
                      "feat": 1.0, "eval_batch_size": 500},
    "digits": {"dataset": "digits", "imports": (), "train_split": "", "student": "resnet8",
               "teachers": (("t_resnet14", "resnet14", 101), ("t_resnet20", "resnet20", 102),
                            ("t_wrn_16_1", "wrn_16_1", 103)),
               "epochs": 15, "milestones": (10, 13), "teacher_epochs": 15, "teacher_milestones": (10, 13),
               "feat": 10.0, "eval_batch_size": 359},
}
# ours: faithful and exact with online teachers (the original's augmentation: a new view every
# epoch), and precomputed (the shipped default: teacher outputs of 4 views precomputed in the same
# command, which its wall time includes).
CODES = ("original", "faithful", "exact", "precomputed")
BATCH, BUFFER, LR, META_FREQ = 64, 256, 0.05, 5


def our_args(setting: dict, workdir: str, teacher_dir: str, seed: int, *extra: str) -> list[str]:
  """The CLI arguments of our run of ``setting`` (student, or with --config.mode=train_teacher)."""
  args = ["--config", os.path.join(ROOT, "configs", "digits.py"), "--workdir", workdir,
          f"--config.teacher_dir={teacher_dir}", f"--config.dataset={setting['dataset']}",
          f"--config.train_split={setting['train_split']}", f"--config.student={setting['student']}",
          f"--config.epochs={setting['epochs']}", f"--config.lr_milestones={setting['milestones']}",
          f"--config.teacher_training.epochs={setting['teacher_epochs']}",
          f"--config.teacher_training.lr_milestones={setting['teacher_milestones']}",
          f"--config.eval_batch_size={setting['eval_batch_size']}", f"--config.seed={seed}",
          f"--config.augmentation_seed={seed}",  # each run its own crops and flips, as each of the original's
          "--config.method=mmkd", f"--config.weights.feat={setting['feat']}", f"--config.batch_size={BATCH}",
          f"--config.mmkd.buffer_size={BUFFER}", "--config.teacher_source=online"]
  if setting["imports"]:
    args.append(f"--config.imports={setting['imports']!r}")
  for i, (name, arch, teacher_seed) in enumerate(setting["teachers"]):
    args += [f"--config.teachers[{i}].name={name}", f"--config.teachers[{i}].arch={arch}",
             f"--config.teachers[{i}].seed={teacher_seed}"]
  return [*args, *extra]


def work_dir(out: str) -> str:
  """Teachers, checkpoints and logs of the runs: under runs/ (not committed), the records apart."""
  return os.path.join(ROOT, "runs", "pytorch_end_to_end", os.path.basename(os.path.normpath(out)))


def _env(out: str, timing: bool = False) -> dict:
  """The runs' environment. Outside timing runs the machine may be busy with other work: torch's
  OpenMP threads then wait passively (spinning threads beside another process took 5x the CPU
  time for the same run); timing runs keep every default, on a quiet machine."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", TFDS_DATA_DIR=os.path.join(work_dir(out), "tfds"),
             MMKD_JAX_COMPILATION_CACHE=compilation_cache(out, timing))
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  if not timing:
    env["OMP_WAIT_POLICY"] = "PASSIVE"
  return env


def compilation_cache(out: str, timing: bool) -> str:
  """Our runs' persistent compilation cache (on by default, mmkd_jax.training.compilation): one
  of its own per queue, so the first timed run of a code starts cold as a user's first run does,
  and the later seeds find it warm as a user's later runs do (the record says which)."""
  return os.path.join(work_dir(out), "xla_cache_timing" if timing else "xla_cache")


def cache_is_warm(out: str, timing: bool, code: str) -> bool:
  """Whether a run of ``code`` already filled the compilation cache (its record's
  ``compilation_cache``: warm or cold)."""
  return os.path.exists(os.path.join(compilation_cache(out, timing), f".filled_by_{code}"))


def prepare_teachers(setting: dict, out: str) -> list[str]:
  """Trains the teachers with our code (if missing) and writes each to .pth by our export."""
  work = work_dir(out)
  teacher_dir = os.path.join(work, "teachers")
  done = subprocess.run([sys.executable, "-m", "mmkd_jax.main",
                         *our_args(setting, os.path.join(work, "teacher_stage"), teacher_dir, 0,
                                   "--config.mode=train_teacher")],
                        cwd=ROOT, env=_env(out), capture_output=True, text=True)
  if done.returncode != 0:
    raise RuntimeError(done.stderr[-3000:])
  paths = []
  for name, _, _ in setting["teachers"]:
    # written again every time (seconds): a teacher retrained since must not leave its old export
    path = os.path.join(work, "export", name, "student.pth")
    write_teacher_pth(teacher_path(setting, teacher_dir, name), path)
    paths.append(path)
  return paths


def teacher_path(setting: dict, teacher_dir: str, name: str) -> str:
  """Where ``mode=train_teacher`` saves teacher ``name`` of ``setting`` under ``teacher_dir``."""
  split = "".join(ch if ch.isalnum() else "_" for ch in setting["train_split"]).strip("_")
  prefix = f"{setting['dataset']}-{split}" if split else setting["dataset"]
  return os.path.join(teacher_dir, f"{prefix}_{name}")


def open_setting(setting: dict, data_dir: str = ""):
  """The setting's dataset (``sources.Dataset``) as ours reads it (``data_dir``: its TFDS
  directory; "" = ``$TFDS_DATA_DIR``)."""
  from mmkd_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from mmkd_jax.data import sources  # pylint: disable=import-outside-toplevel
  config = config_lib.validate(config_lib.load(os.path.join(ROOT, "configs", "digits.py"), None, {
      "dataset": setting["dataset"], "train_split": setting["train_split"], "imports": setting["imports"],
      "data_dir": data_dir, "teachers": [], "method": "none"}))
  return sources.open_dataset(config)


def write_teacher_pth(teacher: str, path: str) -> None:
  """The teacher directory ours loads (the teacher's last epoch, as mode=train_teacher saves it)
  as the ``{"model": state_dict}`` the original's ``load_teacher_list`` reads. Not the teacher run's
  best checkpoint (``export_student``'s default): where its best epoch is not the last, the two
  codes would distil from different teachers (a resnet20 of 2026-12-07: logits up to 0.70 apart)."""
  import jax  # pylint: disable=import-outside-toplevel
  from mmkd_jax.runs import storage  # pylint: disable=import-outside-toplevel
  from mmkd_jax.teachers import convert  # pylint: disable=import-outside-toplevel
  from mmkd_jax.teachers.core import TEACHER_META, load_teacher  # pylint: disable=import-outside-toplevel
  meta = storage.read_json(os.path.join(teacher, TEACHER_META))
  loaded = load_teacher(meta["name"], meta["arch"], meta["num_classes"], teacher, tuple(meta["image_shape"]))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  convert.save_pth(convert.flax_to_torch(jax.device_get(loaded.variables)), path + ".tmp")
  os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------------------------
# The original code, in this process.


class _Timer:
  """Seconds per named part, with nesting: an inner part's time is not counted in the outer."""

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self._stack: list[list] = []

  @contextlib.contextmanager
  def part(self, name: str):
    start = time.perf_counter()
    self._stack.append([name, 0.0])
    try:
      yield
    finally:
      _, inner = self._stack.pop()
      spent = time.perf_counter() - start
      self.seconds[name] = self.seconds.get(name, 0.0) + spent - inner
      if self._stack:
        self._stack[-1][1] += spent

  def timed(self, fn, name: str, except_within: str = ""):
    """``fn`` timed as ``name``, except inside a part ``except_within``, which keeps the time (a
    teacher's forward in the evaluation is evaluation, as it is in ours)."""
    def call(*args, **kwargs):
      if except_within and any(outer == except_within for outer, _ in self._stack):
        return fn(*args, **kwargs)
      with self.part(name):
        return fn(*args, **kwargs)
    return call


class _TwoNames(str):
  """A dataset name equal to 'STL10' (its class count in main_worker's table: 10) and to
  'cifar100' (its 32x32 path and data loader): the original knows no 10-class 32x32 dataset."""

  def __new__(cls):
    return super().__new__(cls, "STL10")

  def __eq__(self, other):
    return other in ("STL10", "cifar100")

  def __ne__(self, other):
    return not self.__eq__(other)

  __hash__ = str.__hash__


def run_original(reference: str, setting: dict, teachers: list[str], seed: int, out_file: str, out: str) -> dict:
  """``train_meta.main_worker`` on the shared data and teachers; returns the run's record."""
  started = time.perf_counter()
  import compare_pytorch  # pylint: disable=import-outside-toplevel
  ref = compare_pytorch.import_reference(reference)
  torch = ref.torch
  from mmkd_jax.teachers import convert  # pylint: disable=import-outside-toplevel
  T = convert.import_torchvision().transforms
  from PIL import Image  # pylint: disable=import-outside-toplevel
  sys.modules.setdefault("symbol", types.ModuleType("symbol")).test_nocond = None
  try:  # imported by the original's CUB-200 loader at import time, used by nothing run here
    import pandas  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    sys.modules["pandas"] = types.ModuleType("pandas")
  logger = types.ModuleType("tensorboard_logger")
  logger.Logger = lambda *a, **k: types.SimpleNamespace(log_value=lambda *a, **k: None)
  sys.modules["tensorboard_logger"] = logger
  import train_meta  # pylint: disable=import-outside-toplevel,import-error
  from mmkd_jax.data import sources  # pylint: disable=import-outside-toplevel
  timer = _Timer()

  dataset = open_setting(setting)
  spec = dataset.spec
  arrays = {name: sources.read_records(source, np.arange(len(source)), spec)
            for name, source in (("train", dataset.train), ("test", dataset.test))}
  normalize = T.Normalize(spec.mean, spec.std)
  transforms = {"train": T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize]),
                "test": T.Compose([T.ToTensor(), normalize])}

  class Images(torch.utils.data.Dataset):
    def __init__(self, split):
      self.images, self.labels, self.transform = arrays[split]["image"], arrays[split]["label"], transforms[split]

    def __len__(self):
      return len(self.labels)

    def __getitem__(self, i):
      return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])

  class TimedLoader:
    """The loader, its batches' preparation timed as 'data'."""

    def __init__(self, loader):
      self.loader = loader

    def __len__(self):
      return len(self.loader)

    def __iter__(self):
      iterator = iter(self.loader)
      while True:
        with timer.part("data"):
          batch = next(iterator, None)
        if batch is None:
          return
        yield batch

  def loaders(batch_size=64, num_workers=0, is_instance=False):
    del num_workers, is_instance
    train = torch.utils.data.DataLoader(Images("train"), batch_size=batch_size, shuffle=True, num_workers=0)
    test = torch.utils.data.DataLoader(Images("test"), batch_size=batch_size // 2, shuffle=False, num_workers=0)
    return TimedLoader(train), test  # the test split's loading is evaluation, as in ours

  def load_teachers(n_cls, opt):
    models = []
    for (_, arch, _), path in zip(setting["teachers"], teachers):
      model = ref.model_dict[arch](num_classes=n_cls)
      model.load_state_dict(torch.load(path, map_location="cpu")["model"])
      model.forward = timer.timed(model.forward, "teacher forwards", except_within="evaluation")
      models.append(model)
    return models

  weights: dict[str, list] = {"logits": [], "feature": []}
  state = {"lookahead": 0, "epoch_weights": [], "epochs": []}

  def recording(cls, kind):
    class Recording(cls):
      def forward(self, *args, **kwargs):
        w = super().forward(*args, **kwargs)
        if not state["lookahead"]:
          weights[kind].append(w.detach().mean(0).numpy().astype(float))
        return w
    return Recording

  class Meta(ref.MetaSGD):
    def step(self, closure=None, *args, **kwargs):
      if closure is None:
        return super().step(closure, *args, **kwargs)
      state["lookahead"] += 1
      try:
        with timer.part("meta steps"):
          return super().step(closure, *args, **kwargs)
      finally:
        state["lookahead"] -= 1

    def meta_backward(self, *args, **kwargs):
      # it re-runs the look-ahead's objectives on the hard batch: their weights are not a training
      # step's (ours records the training steps' only)
      state["lookahead"] += 1
      try:
        with timer.part("meta steps"):
          return super().meta_backward(*args, **kwargs)
      finally:
        state["lookahead"] -= 1

  validate = train_meta.validate

  def validated(val_loader, model, criterion, opt, *rest, **kwargs):
    with timer.part("evaluation"):
      acc, acc5, loss = validate(val_loader, model, criterion, opt, *rest, **kwargs)
    state["epochs"].append({"test_top1": float(acc), "test_loss": float(loss),
                            "weights_logits": np.mean(weights["logits"], 0).tolist() if weights["logits"] else None,
                            "weights_feature": np.mean(weights["feature"], 0).tolist() if weights["feature"] else None})
    weights["logits"].clear()
    weights["feature"].clear()
    return acc, acc5, loss

  work = os.path.join(work_dir(out), f"original_seed{seed}")
  os.makedirs(work, exist_ok=True)
  train_meta.get_cifar100_dataloaders = loaders
  train_meta.load_teacher_list = load_teachers
  train_meta.LogitsWeight = recording(train_meta.LogitsWeight, "logits")
  train_meta.FeatureWeight = recording(train_meta.FeatureWeight, "feature")
  train_meta.MetaSGD = Meta
  train_meta.validate = validated
  train_meta.validate_multi = timer.timed(train_meta.validate_multi, "evaluation")
  train_meta.torch.save = timer.timed(torch.save, "checkpoints")
  opt = argparse.Namespace(
      print_freq=10 ** 9, batch_size=BATCH, num_workers=0, epochs=setting["epochs"], gpu_id="0",
      learning_rate=LR, lr_decay_epochs=list(setting["milestones"]), lr_decay_rate=0.1, weight_decay=5e-4,
      momentum=0.9, distill_decay=False, meta_warmup=0, meta_freq=META_FREQ, meta_lr=1e-3, meta_wd=1e-4,
      rollback=True, hard_buffer=True, load_model=False, buffer_size=BUFFER, dataset=_TwoNames(),
      model_s=setting["student"], path_t=None, path_s=None, distill="kd", trial=str(seed), gamma=1.0, alpha=1.0,
      beta=setting["feat"], factor=2, convs=False, kd_T=4.0, nesterov=True, preact=False, hint_layer=2,
      c_embed=None, teacher_num=len(teachers), ensemble_method="META", C=0.6, seed=seed, svm_norm=False, dali=None,
      multiprocessing_distributed=False, dist_url="", deterministic=False, skip_validation=False,
      teacher_name_list=[arch for _, arch, _ in setting["teachers"]], tb_folder=work, save_folder=work)
  torch.manual_seed(seed)
  np.random.seed(seed)
  random.seed(seed)
  with compare_pytorch.cuda_calls_are_identity(torch), timer.part("steps and host"):
    train_meta.main_worker("0", 1, opt)
  wall = time.perf_counter() - started
  record = {"code": "original", "seed": seed, "epochs": state["epochs"], "wall_seconds": round(wall, 2),
            "profile_seconds": {k: round(v, 2) for k, v in timer.seconds.items()},
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "reference_commit": _git_head(reference), "teachers": teacher_digests(setting, out)}
  _write(out_file, record)
  return record


def _git_head(path: str) -> str:
  try:
    return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def teacher_digests(setting: dict, out: str) -> list[str]:
  """sha256 (16 hex) of each exported teacher's .pth: both codes distil from these weights, and a
  queue resumed on retrained teachers shows in its records (render warns)."""
  digests = []
  for name, _, _ in setting["teachers"]:
    with open(os.path.join(work_dir(out), "export", name, "student.pth"), "rb") as f:
      digests.append(hashlib.sha256(f.read()).hexdigest()[:16])
  return digests


def supersede_unfinished_seed(records_dir: str, codes: list[str], seed: int, teachers: list[str]) -> list[str]:
  """Moves ``seed``'s records distilled from other teachers than ``teachers`` to
  ``<records_dir>/superseded/`` when the seed is not finished for every code: retrained teachers
  (a new machine's runs/ differs bit for bit) start the seed again for every code, so each teacher
  set stays a block of the same seeds for all codes. A finished seed stays, whatever its teachers.
  Returns the moved records' new paths."""
  found = {}
  for code in codes:
    path = os.path.join(records_dir, code, f"seed{seed}.json")
    if os.path.exists(path):
      with open(path) as f:
        found[code] = (path, json.load(f).get("teachers"))
  if len(found) == len(codes):
    return []
  moved = []
  for code, (path, digests) in sorted(found.items()):
    if digests != teachers:
      tag = hashlib.sha256(",".join(digests or ["unrecorded"]).encode()).hexdigest()[:8]
      target = os.path.join(records_dir, "superseded", code, f"seed{seed}.teachers-{tag}.json")
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.replace(path, target)
      moved.append(target)
  return moved


def _write(path: str, record: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=1)
  os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------------------------
# Ours, through the CLI.

# Our CLI with a per-part timer around the same parts as the original's profile (evaluation,
# checkpoints, data, compilation): run in a subprocess instead of `python -m mmkd_jax.main`.
_PROFILED = """
import json, sys, time
from mmkd_jax import main
from mmkd_jax.runs import checkpoint
from mmkd_jax.evaluation import evaluate as evaluation
from mmkd_jax.runs import progress
from mmkd_jax.training import setup as train
seconds = {}
def timed(fn, name):
  def call(*a, **k):
    t = time.perf_counter()
    try:
      return fn(*a, **k)
    finally:
      seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t
  return call
def after_the_steps(fn):  # the steps still in flight (MAX_IN_FLIGHT) are the steps' time, not evaluation's
  def call(eval_fn, state, *a, **k):
    import jax
    jax.block_until_ready(state)
    return fn(eval_fn, state, *a, **k)
  return call
evaluation.evaluate_student = after_the_steps(timed(evaluation.evaluate_student, "evaluation"))
evaluation.teacher_accuracy = timed(evaluation.teacher_accuracy, "evaluation")
checkpoint.Checkpoints.save = timed(checkpoint.Checkpoints.save, "checkpoints")
checkpoint.Checkpoints.wait = timed(checkpoint.Checkpoints.wait, "checkpoints")
batches = train.train_batches
def timed_batches(*a, **k):
  iterator = iter(batches(*a, **k))
  while True:
    t = time.perf_counter()
    batch = next(iterator, None)
    seconds["data"] = seconds.get("data", 0.0) + time.perf_counter() - t
    if batch is None:
      return
    yield batch
train.train_batches = timed_batches
announced = progress.announced
def announced_and_timed(fn, what, quiet):
  first = [True]
  inner = announced(fn, what, quiet)
  def call(*a, **k):
    if not first[0]:
      return inner(*a, **k)
    first[0] = False
    t = time.perf_counter()
    out = inner(*a, **k)
    import jax
    jax.block_until_ready(out)
    seconds["compilation and first step"] = seconds.get("compilation and first step", 0.0) + time.perf_counter() - t
    return out
  return call
progress.announced = announced_and_timed
sys.argv = ["mmkd_jax.main", *sys.argv[2:]]
try:
  main.cli()
finally:
  with open(PROFILE, "w") as f:
    json.dump(seconds, f)
"""


def our_directories(out: str, code: str, seed: int, timing: bool) -> tuple[str, str]:
  """(work directory, teacher cache directory) of our run ``code``; a timing run's are its own."""
  prefix = "timing_" if timing else ""
  return (os.path.join(work_dir(out), f"{prefix}{code}_seed{seed}"),
          os.path.join(work_dir(out), f"{prefix}cache_{code}_seed{seed}"))


def our_run(setting: dict, code: str, seed: int, out: str, timing: bool = False) -> tuple[str, list[str]]:
  """The work directory and CLI arguments of our run ``code`` (faithful, exact, precomputed);
  a timing run gets fresh directories of its own, so it is timed from its start."""
  work, cache = our_directories(out, code, seed, timing)
  extra = {"faithful": ["--config.faithful=True"], "exact": [],
           "precomputed": ["--config.teacher_source=precomputed", "--config.num_replays=4",
                           f"--config.cache_dir={cache}"]}[code]
  return work, our_args(setting, work, os.path.join(work_dir(out), "teachers"), seed,
                        "--config.mode=" + ("pipeline" if code == "precomputed" else "distill"), *extra)


def run_ours(setting: dict, code: str, seed: int, out_file: str, out: str, timing: bool = False) -> dict:
  work, args = our_run(setting, code, seed, out, timing)
  if timing:  # timed from its start: nothing of an earlier attempt to resume from
    for path in our_directories(out, code, seed, timing):
      shutil.rmtree(path, ignore_errors=True)
  profile = os.path.join(work_dir(out), f"{code}_seed{seed}.profile.json")
  warm = cache_is_warm(out, timing, code)
  started = time.perf_counter()
  done = subprocess.run([sys.executable, "-c", f"PROFILE = {profile!r}\n" + _PROFILED, "--", *args], cwd=ROOT,
                        env=_env(out, timing), capture_output=True, text=True)
  wall = time.perf_counter() - started
  if done.returncode != 0:
    raise RuntimeError(done.stderr[-3000:])
  os.makedirs(compilation_cache(out, timing), exist_ok=True)
  with open(os.path.join(compilation_cache(out, timing), f".filled_by_{code}"), "w"):
    pass
  with open(os.path.join(work, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  with open(os.path.join(work, "summary.json")) as f:
    summary = json.load(f)
  with open(profile) as f:
    parts = json.load(f)
  names = [name for name, _, _ in setting["teachers"]]
  epochs = []
  for r in (r for r in records if "epoch" in r):
    epochs.append({"test_top1": r["test/top1"], "test_loss": r["test/loss"],
                   "weights_logits": [r.get(f"teacher_weights/logits/{n}") for n in names],
                   "weights_feature": [r.get(f"teacher_weights/feature/{n}") for n in names]})
  parts["steps and host"] = summary["stage_seconds"]["student"] - sum(parts.values())
  if code == "precomputed":
    parts["precompute"] = summary["stage_seconds"]["precompute"]
  record = {"code": code, "seed": seed, "epochs": epochs, "wall_seconds": round(wall, 2),
            "profile_seconds": {k: round(v, 2) for k, v in parts.items()}, "code_version": summary["code_version"],
            "hypergradient": summary["setting"]["hypergradient"], "compilation_cache": "warm" if warm else "cold",
            "teachers": teacher_digests(setting, out)}
  _write(out_file, record)
  return record


# ----------------------------------------------------------------------------------------------
# The table.


def read_records(directory: str) -> dict[str, list[dict]]:
  """code -> its runs' records under ``directory`` (seed order)."""
  records = {}
  for code in CODES:
    path = os.path.join(directory, code)
    if os.path.isdir(path):
      records[code] = []
      for name in sorted(os.listdir(path)):
        if name.endswith(".json"):
          with open(os.path.join(path, name)) as f:
            records[code].append(json.load(f))
  return records


def paired_speedup(original: list[dict], runs: list[dict]) -> float:
  """Median over ``runs`` of the original's wall time at the same seed over the run's: the two ran
  one after the other on the same machine, while seeds of a resumed queue may come from machines
  of different speed (a ratio of medians would mix them)."""
  base = {r["seed"]: r["wall_seconds"] for r in original}
  return statistics.median(base[r["seed"]] / r["wall_seconds"] for r in runs if r["seed"] in base) \
      if any(r["seed"] in base for r in runs) else float("nan")


def largest_weight_counts(runs: list[dict], kind: str, names: list[str] | None = None) -> str:
  """How many runs end with each teacher most weighted (``kind``: logits or feature), e.g.
  't_resnet20 1, t_wrn_16_2 0, t_vgg8 4'; '—' where the runs record no such weights."""
  weights = [r["epochs"][-1][f"weights_{kind}"] for r in runs]
  if any(w is None for w in weights):
    return "—"
  counts = np.bincount([int(np.argmax(w)) for w in weights], minlength=len(weights[0]))
  names = names or [f"teacher {i}" for i in range(len(counts))]
  return ", ".join(f"{name} {count}" for name, count in zip(names, counts))


def teacher_sets_lines(records: dict) -> list[str]:
  """What the records distilled from: nothing for one teacher set; for several, the seeds of each
  when every code used the same set at the same seeds (blocks of a balanced design: the teachers
  add the same variance to every code), else a WARNING (the codes' distributions are not
  comparable)."""
  seeds_by_set: dict[tuple, dict[str, set]] = {}
  for code, runs in records.items():
    for r in runs:
      if r.get("teachers"):
        seeds_by_set.setdefault(tuple(r["teachers"]), {}).setdefault(code, set()).add(r.get("seed"))
  if len(seeds_by_set) < 2:
    return []
  codes = {code for code, runs in records.items() if runs}
  balanced = all(set(by_code) == codes and len({frozenset(seeds) for seeds in by_code.values()}) == 1
                 for by_code in seeds_by_set.values())
  if not balanced:
    return ["", f"WARNING: these runs distilled from {len(seeds_by_set)} different teacher sets (.pth sha256): "
            + "; ".join(", ".join(t) for t in sorted(seeds_by_set))]
  blocks = sorted((sorted(next(iter(by_code.values()))), digests) for digests, by_code in seeds_by_set.items())
  return ["", f"These runs distilled from {len(seeds_by_set)} teacher sets (.pth sha256), each used by every code at "
          "the same seeds (blocks): " + "; ".join(f"seeds {', '.join(map(str, seeds))}: {', '.join(digests)}"
                                                  for seeds, digests in blocks)]


def render(records: dict, setting_name: str, margin: float, timing: dict | None = None) -> str:
  """The table: accuracy over seeds with Welch intervals and TOST against the original, the learned
  weights per epoch, and the time profile; wall times from the timing runs where there are any
  (a quiet machine), else from the accuracy runs."""
  timing = timing if timing and timing.get("original") else records
  lines = [f"### {setting_name}: the original code against ours ({margin}-point equivalence margin)", "",
           "| code | seeds | last top-1 | best top-1 | last − original (95% CI, Welch) | TOST p (Δ within ±"
           f"{margin}) | equivalent within (TOST 5%) | wall min per run | speed-up over the original, same seed "
           "(first run, cold compilation cache) |",
           "|---|---|---|---|---|---|---|---|---|"]
  original = records.get("original", [])
  base_last = [r["epochs"][-1]["test_top1"] for r in original]
  base_wall = statistics.median(r["wall_seconds"] for r in timing["original"]) if timing.get("original") else None
  for code in CODES:
    runs = records.get(code, [])
    timed = timing.get(code) or runs
    if not timed:
      continue
    last = [r["epochs"][-1]["test_top1"] for r in runs]
    best = [max(e["test_top1"] for e in r["epochs"]) for r in runs]
    # ours: the runs that found the compilation cache warm (a user's later runs), where there are any
    warm = [r for r in timed if r.get("compilation_cache") == "warm"]
    wall = statistics.median(r["wall_seconds"] for r in (warm or timed))
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    row = (f"| {code} | {len(runs)} | {statistics.mean(last):.2f} ± {sd(last):.2f} | "
           f"{statistics.mean(best):.2f} ± {sd(best):.2f} |" if runs else
           f"| {code} | timed only | | |")  # precomputed teachers: its accuracy is not compared here
    if code != "original" and len(last) > 1 and len(base_last) > 1:
      d = significance.welch(last, base_last)
      row += (f" {d.diff:+.2f} [{d.low:+.2f}, {d.high:+.2f}] | {significance.tost(last, base_last, margin):.3f} |"
              f" ±{significance.equivalence_margin(last, base_last):.2f} |")
    else:
      row += " | | |"
    cold = [r for r in timed if r.get("compilation_cache") == "cold"]
    if base_wall is None:
      row += f" {wall / 60:.1f} | |"
    elif code == "original":
      row += f" {wall / 60:.1f} | 1.00x |"
    else:
      cold_text = (f" ({statistics.median(r['wall_seconds'] for r in cold) / 60:.1f} cold: "
                   f"{paired_speedup(timing['original'], cold):.2f}x)" if cold and warm else "")
      row += f" {wall / 60:.1f} | {paired_speedup(timing['original'], warm or timed):.2f}x{cold_text} |"
    lines.append(row)
  lines += teacher_sets_lines(records)
  versions = provenance.versions_line(r["code_version"] for code, runs in records.items() if code != "original"
                                      for r in runs if r.get("code_version"))
  lines += ["", versions] if versions else []
  lines += ["", "Mean learned teacher weight per epoch (logits / features), mean over seeds:", ""]
  for code in CODES:
    runs = records.get(code, [])
    if not runs:
      continue
    for kind in ("logits", "feature"):
      per_epoch = [np.mean([r["epochs"][e][f"weights_{kind}"] for r in runs], 0)
                   for e in range(len(runs[0]["epochs"])) if runs[0]["epochs"][e][f"weights_{kind}"] is not None]
      cells = " ".join("/".join(f"{w:.2f}" for w in epoch) for epoch in per_epoch)
      lines.append(f"- {code}, {kind}: {cells}")
  lines += ["", "The teacher with the largest weight at the last epoch, runs per teacher (logits; features):", ""]
  names = [name for name, _, _ in SETTINGS[setting_name]["teachers"]] if setting_name in SETTINGS else None
  for code in CODES:
    runs = [r for r in records.get(code, []) if r["epochs"][-1]["weights_logits"] is not None]
    if runs:
      lines.append(f"- {code}: " + "; ".join(largest_weight_counts(runs, kind, names) for kind in ("logits", "feature")))
  lines += ["", "Where the time goes (median seconds per run" + (", timing runs" if timing is not records else "") + "):", ""]
  for code in CODES:
    runs = timing.get(code, [])
    if runs:
      parts = sorted({k for r in runs for k in r["profile_seconds"]})
      lines.append(f"- {code}: " + ", ".join(f"{k} {statistics.median(r['profile_seconds'].get(k, 0) for r in runs):.1f}"
                                              for k in parts) + f"; wall {statistics.median(r['wall_seconds'] for r in runs):.1f}")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--reference", default=os.environ.get("MMKD_REFERENCE", ""))
  parser.add_argument("--setting", choices=tuple(SETTINGS), default="fashion_mnist")
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--codes", default=",".join(CODES))
  parser.add_argument("--out", default="")
  parser.add_argument("--margin", type=float, default=0.5)
  parser.add_argument("--collect_only", action="store_true")
  parser.add_argument("--timing", action="store_true",
                      help="timing runs (records under <out>/timing/): run them alone on a quiet machine")
  parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: one original run in this process
  args = parser.parse_args()
  setting = SETTINGS[args.setting]
  out = args.out or os.path.join(HERE, "results", "pytorch_end_to_end", args.setting)
  seeds = [int(s) for s in args.seeds.split(",") if s != ""]
  if args.one:
    teachers = prepare_teachers(setting, out)
    run_original(args.reference, setting, teachers, seeds[0], args.one, out)
    return
  if not args.collect_only:
    if "original" in args.codes and not args.reference:
      parser.error("--reference (a checkout of github.com/Rorozhl/MMKD) is needed to run the original code")
    prepare_teachers(setting, out)
    current = teacher_digests(setting, out)
    for seed in seeds:  # one seed of each code after the other: the same machine at the same time
      records_dir = os.path.join(out, *(("timing",) if args.timing else ()))
      for moved in supersede_unfinished_seed(records_dir, args.codes.split(","), seed, current):
        print(f"{args.setting}: seed {seed} unfinished on other teachers: {moved}", flush=True)
      for code in args.codes.split(","):
        target = os.path.join(out, *(("timing",) if args.timing else ()), code, f"seed{seed}.json")
        if os.path.exists(target):
          continue
        print(f"{args.setting}: {code} seed {seed} ...", flush=True)
        if code == "original":  # its own process: torch's threads and imports apart from ours
          done = subprocess.run([sys.executable, os.path.abspath(__file__), "--reference", args.reference,
                                 "--setting", args.setting, "--seeds", str(seed), "--out", out, "--one", target],
                                cwd=ROOT, env=_env(out, args.timing), capture_output=True, text=True)
          if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        else:
          run_ours(setting, code, seed, target, out, args.timing)
        with open(target) as f:
          record = json.load(f)
        print(f"  last top-1 {record['epochs'][-1]['test_top1']:.2f}, wall {record['wall_seconds'] / 60:.1f} min",
              flush=True)
  table = render(read_records(out), args.setting, args.margin, read_records(os.path.join(out, "timing")))
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(table)
  print(table)


if __name__ == "__main__":
  main()
