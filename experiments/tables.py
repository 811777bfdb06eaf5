"""The results tables ``reproduce.py`` can run: rows (teacher/student settings) x methods.

Each row is a config file (with its argument and overrides); each method is resolved on top of it
with its presets (``mmkd_jax.config.resolve``). ``published`` holds the PyTorch numbers printed next to ours,
each with its source. The MMKD paper's tables (and CA-MKD's, EBKD's, AEKD's) could not be
retrieved from any public source the project could read (only the abstracts are stored): those cells say so instead of
showing a number; nothing here is copied from memory.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class Published:
  top1: float | None      # None: the table cell exists but its value could not be retrieved
  source: str


@dataclasses.dataclass(frozen=True)
class Row:
  label: str              # how the papers head the column: "teachers -> student"
  config: str
  arg: str | None = None  # the config file's get_config argument
  overrides: tuple[str, ...] = ()
  competence: str = ""    # routing.py / the oracle: per teacher "a,b|c|*" ("" = the teachers' classes)

  @property
  def slug(self) -> str:
    return "".join(c if c.isalnum() else "_" for c in self.label.lower()).strip("_")


def overrides_slug(overrides: tuple[str, ...]) -> str:
  """Overrides as a directory name's part ("weights.feat=1" -> "weights-feat-1")."""
  return "_".join("".join(c if c.isalnum() else "-" for c in o) for o in overrides)


@dataclasses.dataclass(frozen=True)
class Variant:
  """A method with overrides (an ablation); a plain method name is a Variant without any."""
  method: str
  overrides: tuple[str, ...] = ()
  label: str = ""
  name: str = ""  # its run directory's name (default: from the method and overrides)

  @property
  def slug(self) -> str:
    if self.name:
      return self.name
    if not self.overrides:
      return self.method
    return self.method + "__" + overrides_slug(self.overrides)


@dataclasses.dataclass(frozen=True)
class Table:
  title: str
  rows: tuple[Row, ...]
  methods: tuple  # method names or Variants
  published: dict = dataclasses.field(default_factory=dict)  # (row label, method) -> Published
  note: str = ""
  baseline: str = ""  # variant slugs (comma-separated): render differences to each (Welch, significance.py)
  group: str = ""     # tables of one group share their run directories (runs/reproduce/<group>)

  @property
  def variants(self) -> tuple[Variant, ...]:
    return tuple(m if isinstance(m, Variant) else Variant(m) for m in self.methods)

  @property
  def baselines(self) -> tuple[str, ...]:
    return tuple(b for b in self.baseline.split(",") if b)


_MMKD_ISSUE = ("Rorozhl/MMKD#4: the MMKD paper's Table 1, row 2 is 3 x ResNet32x4 -> MobileNetV2 on "
               "CIFAR-100; its value is not in any retrievable source")

_FM_ROW = Row("resnet20, wrn_16_2, vgg8 -> resnet8", "configs/fashion_mnist.py")
_FM_NOTE = ("Fashion-MNIST from the Debian package's IDX files; student and teachers train on the first "
            "5,000 training images (the 2-core CPU budget), 10 student epochs, tested on the 10,000 test "
            "images; hyperparameters chosen on train[90%:] (never on test). No published PyTorch numbers "
            "exist for this setting.")

_POOL_LABELS = {"specialists": "3 x resnet20 specialists (classes 0-3 | 4-6 | 7-9) -> resnet8",
                "mixed": "resnet20 strong, weak (500 images), noisy (60 % labels) -> resnet8"}


def _pool_row(pool: str, validation: bool = False, competence: str = "") -> Row:
  return Row(_POOL_LABELS[pool] + (" (validation)" if validation else ""), "configs/fashion_mnist.py",
             f"pool={pool}" + (",val" if validation else ""), competence=competence)


RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
_SELECTION_FEATS = (1.0, 10.0, 100.0)  # MMKD's weights.feat candidates of the validation tables


def pool_choices(pool: str, results_dir: str = RESULTS_DIR) -> dict:
  """What a pool's committed validation records choose; None where they do not exist yet.

  feat: MMKD's ``weights.feat`` with the highest validation top-1 (last epoch, seed 0; ties go to
  the smaller). best_teacher: (index, name) of the teacher with the highest validation top-1
  (``teachers.json`` of ``teacher_competence.py``). competence: "" (the teachers' classes) where a
  teacher was trained on a subset of classes, else the record's: within its margin of the best
  teacher's validation top-1 on each class. Never read from the test split.
  """
  group = os.path.join(results_dir, f"fashion_mnist_{pool}")
  scores = {}
  for feat in _SELECTION_FEATS:
    variant = Variant("mmkd", (f"weights.feat={feat}",))
    path = os.path.join(group, _pool_row(pool, validation=True).slug, variant.slug, "seed0", "summary.json")
    if os.path.exists(path):
      with open(path) as f:
        scores[feat] = json.load(f)["final_top1"]
  chosen = {"feat": None, "best_teacher": None, "competence": None}
  if len(scores) == len(_SELECTION_FEATS):
    chosen["feat"] = max(_SELECTION_FEATS, key=lambda feat: (scores[feat], -feat))
  path = os.path.join(group, "teachers.json")
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    chosen["best_teacher"] = best_teacher(record)
    chosen["competence"] = "" if any(record["trained_on"]) else record["competence"]
  return chosen


def best_teacher(teachers: dict) -> tuple[int, str]:
  """(index, name) of the teacher with the highest validation top-1 in a ``teachers.json`` record
  (the first of equal maxima)."""
  index = int(np.argmax(teachers["validation"]["overall"]))
  return index, teachers["teachers"][index]


_POOL_CHOICES = {pool: pool_choices(pool) for pool in _POOL_LABELS}


def _chosen_row(pool: str, validation: bool = False) -> Row:
  """The pool's row, its routing measured against the chosen competence."""
  return _pool_row(pool, validation, _POOL_CHOICES[pool]["competence"] or "")

ORACLE_IMPORT = 'imports=("experiments/oracle.py",)'


def _pool_methods(chosen: dict) -> tuple:
  methods = ["none", "kd", "aver", "ebkd", "camkd", "aekd", "fitnet", "amtml", "bomd"]
  if chosen["competence"] is not None:
    methods.append(Variant("oracle", (ORACLE_IMPORT, f"oracle.competence={chosen['competence']}"),
                           "oracle (weights on the competent teachers)", name="oracle"))
  if chosen["feat"] is not None:
    methods.append(Variant("mmkd", (f"weights.feat={chosen['feat']}",), f"MMKD (weights.feat={chosen['feat']:g})"))
  if chosen["best_teacher"] is not None:
    index, name = chosen["best_teacher"]
    if index == 0:  # KD's default teacher is the best one: one row, the same runs
      methods[methods.index("kd")] = Variant("kd", (), f"KD (best teacher: {name}, teacher 0)")
    else:
      methods.append(Variant("kd", (f"kd.teacher_index={index}",), f"KD (best teacher: {name})"))
  return tuple(methods)


def _mmkd_diagnostics(chosen: dict) -> tuple[Variant, ...]:
  """MMKD as chosen for the pool, then one switch at a time (experiments/meta_diagnostics.py reads
  what the weight networks did in each)."""
  feat = f"weights.feat={chosen['feat']}"
  return (Variant("mmkd", (feat,), f"MMKD ({feat})"),
          Variant("mmkd", (feat, "mmkd.feature_input=cosine"), "MMKD, cosine feature-weight input"),
          Variant("mmkd", ("weights.feat=0.0",), "MMKD, logit weights only (weights.feat=0)"),
          Variant("mmkd", (feat, "meta.lr=0.01"), "MMKD, meta.lr=1e-2 (10x)"))


TABLES: dict[str, Table] = {
    "fashion_mnist": Table(
        title="Fashion-MNIST (5,000 training images, 10 epochs), precomputed teachers (8 replays)",
        rows=(_FM_ROW,),
        methods=("none", Variant("kd", ("kd.teacher_index=1",), "KD (best teacher: wrn_16_2)"), "aver", "ebkd",
                 "camkd", "aekd", "fitnet", "amtml", "bomd", "mmkd"),
        note=_FM_NOTE, group="fashion_mnist"),
    "fashion_mnist_ablations": Table(
        title="Fashion-MNIST ablations of MMKD (same setting)",
        rows=(_FM_ROW,),
        methods=(Variant("mmkd", (), "MMKD, exact hypergradient (forward-over-reverse)"),
                 Variant("aver", (), "uniform weights (= AVER)"),
                 Variant("mmkd", ("meta.freq=20",), "MMKD, meta step every 20 batches"),
                 Variant("mmkd", ("meta.first_order=True",), "MMKD, first-order hypergradient"),
                 Variant("mmkd", ("meta.hypergradient=original",), "MMKD, original approximate hypergradient"),
                 Variant("mmkd", ("mmkd.feature_input=cosine",), "MMKD, cosine-normalised feature-weight input"),
                 Variant("mmkd", ("teacher_source=online",), "MMKD, online teachers (fresh augmentation each epoch)"),
                 Variant("mmkd", ("meta.freq=1",), "MMKD, meta step every batch")),
        baseline="mmkd", note=_FM_NOTE, group="fashion_mnist"),
    "fashion_mnist_val": Table(
        title="Fashion-MNIST model selection on train[90%:] (validation, not test)",
        rows=(Row("resnet20, wrn_16_2, vgg8 -> resnet8 (validation)", "configs/fashion_mnist.py", "val"),),
        methods=("aver",) + tuple(Variant("mmkd", (f"weights.feat={feat}",)) for feat in _SELECTION_FEATS),
        note="Selection runs: evaluated on 6,000 training images the students and teachers never train on.",
        group="fashion_mnist"),
    **{f"fashion_mnist_{pool}_val": Table(
        title=f"Fashion-MNIST, {pool} teachers: model selection on train[90%:] (validation, not test)",
        rows=(_chosen_row(pool, validation=True),),
        methods=("aver",) + tuple(Variant("mmkd", (f"weights.feat={feat}",)) for feat in _SELECTION_FEATS),
        note="Selection runs: evaluated on 6,000 training images the students and teachers never train on.",
        group=f"fashion_mnist_{pool}") for pool in _POOL_LABELS},
    **{f"fashion_mnist_{pool}": Table(
        title=f"Fashion-MNIST, {pool} teachers (5,000 training images, 10 epochs), precomputed teachers (8 replays)",
        rows=(_chosen_row(pool),),
        methods=_pool_methods(_POOL_CHOICES[pool]), note=_FM_NOTE,
        baseline="aver" + (",oracle" if _POOL_CHOICES[pool]["competence"] is not None else ""),
        group=f"fashion_mnist_{pool}")
       for pool in _POOL_LABELS},
    **{f"fashion_mnist_{pool}_mmkd": Table(
        title=f"Fashion-MNIST, {pool} teachers: why MMKD's weights do (not) route (same setting, 3 seeds)",
        rows=(_chosen_row(pool),),
        methods=_mmkd_diagnostics(_POOL_CHOICES[pool]), baseline=_mmkd_diagnostics(_POOL_CHOICES[pool])[0].slug,
        group=f"fashion_mnist_{pool}",
        note=("Switches, not defaults: the feature-weight network's input normalised (its raw Gram "
              "input saturates the softmax: one-hot weights, zero hypergradient), the logit weights "
              "alone, and a 10x meta learning rate (meta.lr, Adam)."))
       for pool in _POOL_LABELS if _POOL_CHOICES[pool]["feat"] is not None},
    "fashion_mnist_replays": Table(
        title="Fashion-MNIST, homogeneous teachers, 40 epochs: precomputed teachers (8 replays) against online",
        rows=(Row("resnet20, wrn_16_2, vgg8 -> resnet8, 40 epochs", "configs/fashion_mnist.py", None,
                  ("epochs=40", "lr_milestones=(24, 32)")),),
        methods=(Variant("aver", (), "AVER, precomputed (8 replays)"),
                 Variant("aver", ("teacher_source=online",), "AVER, online (a new view every epoch)"),
                 Variant("mmkd", (), "MMKD, precomputed (8 replays)"),
                 Variant("mmkd", ("teacher_source=online",), "MMKD, online (a new view every epoch)")),
        baseline="aver,mmkd", group="fashion_mnist_replays",
        note=("Each image has 8 augmented views for the whole 40 epochs with precomputed teachers (5 passes "
              "over each view), where online teachers see a new crop and flip every epoch, as the originals.")),
    "digits": Table(
        title="digits (offline, 1,438 train / 359 test), 15 epochs, teachers 15 epochs",
        rows=(Row("resnet14, resnet20, wrn_16_1 -> resnet8", "configs/digits.py"),),
        methods=("none", "kd", "aver", "ebkd", "camkd", "aekd", "fitnet", "amtml", "bomd", "mmkd",
                 Variant("mmkd", ("mmkd.feature_input=cosine",), "MMKD, cosine-normalised feature-weight input")),
        note="digits is this project's offline setting: no published PyTorch numbers exist for it."),
    "cifar100": Table(
        title="CIFAR-100, 240 epochs (the MMKD paper's setting)",
        rows=(Row("3 x vgg13 -> vgg8", "configs/cifar100.py", "vgg8,vgg13"),
              Row("3 x resnet32x4 -> resnet8x4", "configs/cifar100.py", "resnet8x4,resnet32x4"),
              Row("3 x resnet32x4 -> MobileNetV2", "configs/cifar100.py", "MobileNetV2,resnet32x4"),
              Row("3 x resnet32x4 -> ShuffleV1", "configs/cifar100.py", "ShuffleV1,resnet32x4"),
              Row("3 x resnet32x4 -> ShuffleV2", "configs/cifar100.py", "ShuffleV2,resnet32x4"),
              Row("3 x wrn_40_2 -> wrn_16_2", "configs/cifar100.py", "wrn_16_2,wrn_40_2")),
        methods=("none", "aver", "fitnet", "ebkd", "aekd", "camkd", "mmkd"),
        published={("3 x resnet32x4 -> MobileNetV2", "mmkd"): Published(None, _MMKD_ISSUE)},
        note=("Published CIFAR-100 numbers of MMKD, CA-MKD, EBKD, AEKD, AVER and FitNet-MKD could not be "
              "retrieved (only the papers' abstracts could be read): 'n/a' marks a cell the papers have but "
              "we could not read. AMTML-KD's Fig. 3 gives approximate CIFAR-100 bars for 2/3/5 "
              "unnamed teachers (about 70.4% for 3), which fit no row here.")),
}


# ------------------------------------------------------------------------------------------
# The reviewer's tables (issue #42): every method's main knobs chosen on validation from grids of
# one size, both oracles, 5 seeds, and each table in its own run directories (review_<pool>), so
# that one code version makes it.

REVIEW_POOLS = ("homogeneous", "mixed", "specialists")
HAS_FEATURE_TERM = ("camkd", "fitnet", "amtml", "bomd", "mmkd")
TUNED = ("kd", "aver", "ebkd", "camkd", "aekd", "fitnet", "amtml", "bomd", "mmkd", "oracle", "oracle_sample")
# Six validation runs per method: the temperature where the KD term is the only knob; the feature
# weight (every feature method's default lies in or between its values) x two temperatures else.
LOGIT_TEMPERATURES = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
FEATURE_WEIGHTS, FEATURE_TEMPERATURES = (1.0, 10.0, 100.0), (2.0, 4.0)
ORACLE_PLUGIN = 'imports=("experiments/oracle.py",)'


def tuning_grid(method: str) -> tuple[tuple[str, ...], ...]:
  """The candidate overrides of ``method``'s main knobs (one size for every method)."""
  if method in HAS_FEATURE_TERM:
    return tuple((f"weights.feat={w:g}", f"temperature={t:g}") for w in FEATURE_WEIGHTS for t in FEATURE_TEMPERATURES)
  return tuple((f"temperature={t:g}",) for t in LOGIT_TEMPERATURES)


def _review_row(pool: str, validation: bool = False, competence: str = "") -> Row:
  if pool == "homogeneous":
    return Row(_FM_ROW.label + (" (validation)" if validation else ""), _FM_ROW.config,
               "pool=homogeneous" + (",val" if validation else ""), competence="*|*|*")
  return _pool_row(pool, validation, competence)


def review_teachers(pool: str, results_dir: str = RESULTS_DIR) -> dict | None:
  """The pool's teachers.json (experiments/teacher_competence.py), or None before it exists."""
  path = os.path.join(results_dir, f"review_{pool}", "teachers.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _fixed_overrides(method: str, teachers: dict) -> tuple[str, ...] | None:
  """What a method's runs take from the pool's validation record (None: cannot run yet)."""
  if method == "kd":
    return (f"kd.teacher_index={best_teacher(teachers)[0]}",)
  if method == "oracle":
    competence = "" if any(teachers["trained_on"]) else teachers["competence"]
    return (ORACLE_PLUGIN, f"oracle.competence={competence}")
  if method == "oracle_sample":
    return (ORACLE_PLUGIN,)
  return ()


def tuning_variants(method: str, teachers: dict) -> tuple[Variant, ...]:
  fixed = _fixed_overrides(method, teachers)
  return tuple(Variant(method, (*fixed, *point), f"{method} ({', '.join(point)})", name=f"{method}__{overrides_slug(point)}")
               for point in tuning_grid(method))


def review_choices(pool: str, results_dir: str = RESULTS_DIR, teachers: dict | None = None) -> dict:
  """method -> the grid point with the highest validation top-1 (last epoch, seed 0; a tie goes to
  the earlier point), None while any of its grid's records is missing. Never read from test.
  ``teachers``: the pool's teachers.json record where the caller has read it."""
  teachers = teachers or review_teachers(pool, results_dir)
  chosen = {method: None for method in TUNED}
  if teachers is None:
    return chosen
  row = _review_row(pool, validation=True)
  for method in TUNED:
    if method == "oracle" and pool == "homogeneous":  # every teacher competent for every class: = AVER
      continue
    scores = []
    for variant in tuning_variants(method, teachers):
      path = os.path.join(results_dir, f"review_{pool}", row.slug, variant.slug, "seed0", "summary.json")
      if not os.path.exists(path):
        break
      with open(path) as f:
        scores.append(json.load(f)["final_top1"])
    else:
      best = int(np.argmax(scores))  # the first of equal maxima
      chosen[method] = tuning_grid(method)[best]
  return chosen


_REVIEW_NAMES = {"none": "student alone (no KD)", "kd": "KD (best teacher by validation)", "aver": "AVER",
                 "ebkd": "EBKD", "camkd": "CA-MKD", "aekd": "AEKD", "fitnet": "FitNet-MKD", "amtml": "AMTML-KD",
                 "bomd": "BOMD-like", "mmkd": "MMKD", "oracle": "oracle, per class (competent teachers)",
                 "oracle_sample": "oracle, per sample (the teacher most probable on the label)"}


def review_methods(pool: str, results_dir: str = RESULTS_DIR, teachers: dict | None = None) -> tuple[Variant, ...]:
  """The pool's table: the student alone, then each method with its chosen knobs (a method whose
  tuning has not finished has no row yet)."""
  teachers = teachers or review_teachers(pool, results_dir)
  chosen = review_choices(pool, results_dir, teachers)
  rows = [Variant("none", (), _REVIEW_NAMES["none"], name="none")]
  for method in TUNED:
    if teachers is None or chosen[method] is None:
      continue
    knobs = ", ".join(o.replace("weights.feat", "feat").replace("temperature", "T") for o in chosen[method])
    label = _REVIEW_NAMES[method] + (f" ({best_teacher(teachers)[1]})" if method == "kd" else "")
    rows.append(Variant(method, (*_fixed_overrides(method, teachers), *chosen[method]), f"{label}; {knobs}",
                        name=method))
  return tuple(rows)


def _review_tables() -> dict[str, Table]:
  tables = {}
  for pool in REVIEW_POOLS:
    teachers = review_teachers(pool)
    competence = "*|*|*" if pool == "homogeneous" else (
        "" if teachers is None or any(teachers["trained_on"]) else teachers["competence"])
    group = f"review_{pool}"
    tables[f"review_{pool}_tuning"] = Table(
        title=f"Fashion-MNIST, {pool} teachers: every method's knobs on train[90%:] (validation, not test)",
        rows=(_review_row(pool, validation=True, competence=competence),),
        methods=tuple(v for method in TUNED if teachers is not None and not (method == "oracle" and pool == "homogeneous")
                      for v in tuning_variants(method, teachers)),
        note=f"Selection runs, seed 0: each method's {len(tuning_grid('mmkd'))} candidates (tables.tuning_grid).",
        group=group)
    methods = review_methods(pool, teachers=teachers)
    names = {v.slug for v in methods}
    tables[f"review_{pool}"] = Table(
        title=f"Fashion-MNIST, {pool} teachers (5,000 training images, 10 epochs), every method tuned on validation",
        rows=(_review_row(pool, competence=competence),), methods=methods, note=_FM_NOTE, group=group,
        baseline=",".join(b for b in ("aver", "kd", "oracle_sample") if b in names))
  return tables


TABLES.update(_review_tables())
TABLES["review_deviations"] = Table(
    title="Fashion-MNIST, homogeneous teachers: docs/methods.md's deviations, each default against its faithful switch",
    rows=(_review_row("homogeneous"),),
    methods=(Variant("mmkd", (), "MMKD (defaults: feature maps cached in bfloat16, kaiming aligner init)", name="mmkd"),
             Variant("mmkd", ("cache_dtype=float32",), "MMKD, feature maps cached in float32", name="mmkd__cache-float32"),
             Variant("mmkd", ("adapter_init=torch",), "MMKD, PyTorch's default aligner init", name="mmkd__adapter-torch"),
             Variant("amtml", (), "AMTML-KD (default: no RKD distance term)", name="amtml"),
             Variant("amtml", ("weights.dist=1.0",), "AMTML-KD with the RKD distance term (weight 1)", name="amtml__dist-1")),
    baseline="mmkd,amtml", group="review_deviations",
    note=("The switches of docs/methods.md's deviations (precomputed feature maps in bfloat16; kaiming-normal "
          "adapters; AMTML-KD's RKD distance term left out), each against the default, 3 seeds, the "
          "section 8 setting; every other knob at the config's values."))
