"""Test harness for the Python bindings: puts the generated module on the
path and starts a real omnisync-hub process per test on a free port.

bindings/test.sh sets OMNISYNC_PY_BINDINGS (the generated module and the
library next to it) and OMNISYNC_HUB_BINARY; the defaults match a plain
`cargo build` followed by bindings/generate.sh.
"""

import os
import pathlib
import queue
import re
import subprocess
import sys
import tempfile
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
BINDINGS = pathlib.Path(
    os.environ.get("OMNISYNC_PY_BINDINGS", ROOT / "bindings" / "generated" / "python")
)
HUB_BINARY = pathlib.Path(
    os.environ.get("OMNISYNC_HUB_BINARY", ROOT / "target" / "debug" / "omnisync-hub")
)
# How long the hub may take to print its address.
HUB_START_TIMEOUT_S = 30

sys.path.insert(0, str(BINDINGS))


class Hub:
    """A running omnisync-hub process and its sync URL."""

    def __init__(self, process, url, data_dir):
        self.process = process
        self.url = url
        self.data_dir = data_dir


@pytest.fixture
def hub():
    if not HUB_BINARY.exists():
        pytest.fail(f"{HUB_BINARY} is missing: run `cargo build -p omnisync-hub` first")
    data_dir = tempfile.TemporaryDirectory(prefix="omnisync-hub-")
    process = subprocess.Popen(
        [str(HUB_BINARY), "serve", "--dev-auth", "--listen", "127.0.0.1:0", "--data-dir", data_dir.name],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = queue.Queue()

    def read_stdout():
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        while True:
            line = lines.get(timeout=HUB_START_TIMEOUT_S)
            found = re.search(r"sync at (ws://\S+)\)", line)
            if found:
                break
        yield Hub(process, found.group(1), data_dir.name)
    finally:
        process.kill()
        process.wait()
        data_dir.cleanup()


@pytest.fixture
def tmp_db_dir():
    with tempfile.TemporaryDirectory(prefix="omnisync-py-") as directory:
        yield pathlib.Path(directory)
