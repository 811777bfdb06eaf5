"""Prepares a dataset as array_record once (downloads, for the non-offline ones).

    python -m mmkd_jax.data.prepare cifar100 --data_dir ~/tensorflow_datasets
"""

from __future__ import annotations

import argparse

from mmkd_jax.data import sources


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("dataset", choices=sorted(sources.DATASETS))
  parser.add_argument("--data_dir", default=sources.default_data_dir())
  args = parser.parse_args(argv)
  sources.prepare(args.dataset, args.data_dir, allow_download=True)
  print(f"{args.dataset} is prepared under {args.data_dir}")


if __name__ == "__main__":
  main()
