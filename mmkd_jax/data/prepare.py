"""Prepares a dataset as array_record once (downloads, for the non-offline ones).

    python -m mmkd_jax.data.prepare cifar100 --data_dir ~/tensorflow_datasets

Offline, a dataset that needs a download fails at once, in one line, exit 2, leaving nothing: the
hosts it downloads from are tried first (5 s each), and a failed preparation removes what it made.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.parse

from mmkd_jax.data import sources, tfds_prepare

CONNECT_SECONDS = 5.0


def unreachable_hosts(name: str, data_dir: str) -> list[str]:
  """The hosts ``name`` downloads from that cannot be reached (none for an offline dataset)."""
  if sources.DATASETS.get(name).offline:
    return []
  urls = getattr(sources.builder(name, data_dir), "url_infos", None) or {}
  hosts = sorted({urllib.parse.urlsplit(url).hostname for url in urls} - {None})
  missing = []
  for host in hosts:
    try:
      socket.create_connection((host, 443), timeout=CONNECT_SECONDS).close()
    except OSError:
      missing.append(host)
  return missing


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("dataset", choices=sorted(sources.DATASETS))
  parser.add_argument("--data_dir", default=sources.default_data_dir())
  args = parser.parse_args(argv)
  data_dir = args.data_dir
  try:
    missing = unreachable_hosts(args.dataset, data_dir)
    if missing:
      raise ConnectionError(f"cannot reach {', '.join(missing)} (tried {CONNECT_SECONDS:g} s), where "
                            f"{args.dataset} is downloaded from: this machine seems to be offline. Prepare it on a "
                            f"machine with internet and copy {os.path.join(data_dir, args.dataset)} here (or point "
                            "--config.data_dir at that copy)")
    with tfds_prepare.undone_on_failure(data_dir):  # nothing of a failed preparation is left
      sources.prepare(args.dataset, data_dir, allow_download=True)
  except (OSError, ValueError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  print(f"{args.dataset} is prepared under {data_dir}")


if __name__ == "__main__":
  main()
