"""The results tables ``reproduce.py`` can run: rows (teacher/student settings) x methods.

Each row is a config file (plus overrides); each method is applied on top of it with its preset
(``mmkd_jax.config_methods``). ``published`` holds the PyTorch numbers printed next to ours,
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
        rows=(Row("resnet14, resnet20, wrn_16_1 -> resnet8", "configs/digits_mmkd.py"),),
        methods=("none", "kd", "aver", "ebkd", "camkd", "aekd", "fitnet", "amtml", "bomd", "mmkd"),
        note="digits is this project's offline setting: no published PyTorch numbers exist for it."),
    "cifar100": Table(
        title="CIFAR-100, 240 epochs (the MMKD paper's setting)",
        rows=(Row("3 x vgg13 -> vgg8", "configs/cifar100_vgg8_vgg13.py"),
              Row("3 x resnet32x4 -> resnet8x4", "configs/cifar100_resnet8x4_resnet32x4.py"),
              Row("3 x resnet32x4 -> MobileNetV2", "configs/cifar100_mobilenetv2_resnet32x4.py"),
              Row("3 x resnet32x4 -> ShuffleV1", "configs/cifar100_shufflev1_resnet32x4.py"),
              Row("3 x resnet32x4 -> ShuffleV2", "configs/cifar100_shufflev2_resnet32x4.py"),
              Row("3 x wrn_40_2 -> wrn_16_2", "configs/cifar100_wrn_16_2_wrn_40_2.py")),
        methods=("none", "aver", "fitnet", "ebkd", "aekd", "camkd", "mmkd"),
        published={("3 x resnet32x4 -> MobileNetV2", "mmkd"): Published(None, _MMKD_ISSUE)},
        note=("Published CIFAR-100 numbers of MMKD, CA-MKD, EBKD, AEKD, AVER and FitNet-MKD could not be "
              "retrieved (REFERENCE_NOTES sections 0, 1.11, 2): 'n/a' marks a cell the papers have but "
              "we could not read. AMTML-KD's Fig. 3 gives approximate CIFAR-100 bars for 2/3/5 "
              "unnamed teachers (about 70.4% for 3), which fit no row here.")),
}
