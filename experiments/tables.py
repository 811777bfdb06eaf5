"""The results tables ``reproduce.py`` can run: rows (teacher/student settings) x methods.

Each row is a config file (with its argument and overrides); each method is resolved on top of it
with its presets (``mmkd_jax.config.resolve``). ``published`` holds the PyTorch numbers printed next to ours,
each with its source. The MMKD paper's tables (and CA-MKD's, EBKD's, AEKD's) could not be
retrieved (../shared/REFERENCE_NOTES.md, sections 0 and 1.11): those cells say so instead of
showing a number; nothing here is copied from memory.
"""

from __future__ import annotations

import dataclasses


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

  @property
  def slug(self) -> str:
    return "".join(c if c.isalnum() else "_" for c in self.label.lower()).strip("_")


@dataclasses.dataclass(frozen=True)
class Table:
  title: str
  rows: tuple[Row, ...]
  methods: tuple[str, ...]
  published: dict = dataclasses.field(default_factory=dict)  # (row label, method) -> Published
  note: str = ""


_MMKD_ISSUE = ("Rorozhl/MMKD#4: the MMKD paper's Table 1, row 2 is 3 x ResNet32x4 -> MobileNetV2 on "
               "CIFAR-100; its value is not in any retrievable source (REFERENCE_NOTES 1.11)")

TABLES: dict[str, Table] = {
    "digits": Table(
        title="digits (offline, 1,438 train / 359 test), 15 epochs",
        rows=(Row("resnet14, resnet20, wrn_16_1 -> resnet8", "configs/digits.py"),),
        methods=("none", "kd", "aver", "ebkd", "camkd", "aekd", "fitnet", "amtml", "bomd", "mmkd"),
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
              "retrieved (REFERENCE_NOTES sections 0, 1.11, 2): 'n/a' marks a cell the papers have but "
              "we could not read. AMTML-KD's Fig. 3 gives approximate CIFAR-100 bars for 2/3/5 "
              "unnamed teachers (about 70.4% for 3), which fit no row here.")),
}
