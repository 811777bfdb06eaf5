"""Preparing a TFDS dataset as a user sees it: no TFDS banners or progress bars (our own stage
lines say what happens), and nothing left of a preparation that failed."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys

import tensorflow_datasets as tfds

from mmkd_jax.runs import storage


class _WithoutTfdsBanners:
  """stdout without TFDS's preparation banners ("Downloading and preparing dataset Unknown size
  ...", "... downloaded and prepared to ...": bold escape codes, and nothing is downloaded for an
  offline dataset); everything else passes through."""

  BANNERS = ("Downloading and preparing dataset", "downloaded and prepared to")

  def __init__(self, stream):
    self.stream = stream
    self.dropped = False  # print() writes a line's text and its newline apart: drop both

  def write(self, text: str) -> int:
    if any(banner in text for banner in self.BANNERS) or (self.dropped and text == "\n"):
      self.dropped = text != "\n"
      return len(text)
    self.dropped = False
    return self.stream.write(text)

  def __getattr__(self, name):
    return getattr(self.stream, name)


def prepare_quietly(builder_: tfds.core.DatasetBuilder) -> None:
  """``builder_.download_and_prepare`` as array_record, without TFDS's banners and progress bars
  (our own stage lines say what happens)."""
  tfds.display_progress_bar(False)
  with contextlib.redirect_stdout(_WithoutTfdsBanners(sys.stdout)):
    builder_.download_and_prepare(file_format="array_record")


@contextlib.contextmanager
def undone_on_failure(data_dir: str):
  """Removes what a failed preparation made under a local ``data_dir`` (TFDS creates the dataset's
  and its download directories before a builder reads a single source file): a refused command
  leaves the data directory as it was."""
  highest_new = os.path.abspath(data_dir)  # the highest directory of data_dir's path it may create
  while not os.path.exists(os.path.dirname(highest_new)):
    highest_new = os.path.dirname(highest_new)

  def present() -> set[str]:
    found = {highest_new} if os.path.isdir(highest_new) else set()
    for root in (data_dir, os.path.join(data_dir, "downloads")):
      if os.path.isdir(root):
        found |= {os.path.join(root, entry) for entry in os.listdir(root)}
    return found
  before = set() if storage.is_url(data_dir) else present()
  try:
    yield
  except BaseException:
    if not storage.is_url(data_dir):
      for path in sorted(present() - before, key=len, reverse=True):
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
    raise
