"""Real `notify core` and `notify bridge` processes on loopback ports for the
python-socketio tests; notifications are created with the real grpcurl."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("NOTIFY_BIN", str(ROOT / "target" / "debug" / "notify"))
GRPCURL = os.environ.get("GRPCURL", str(ROOT / ".venv" / "bin" / "grpcurl"))
SECRET = "python-test-secret-16-bytes-plus"


def _start(args, prefix):
    stderr = None if os.environ.get("TEST_LOG") else subprocess.DEVNULL
    process = subprocess.Popen([BIN, *args], stdout=subprocess.PIPE, stderr=stderr, text=True)
    for line in process.stdout:
        if line.startswith(prefix):
            fields = dict(part.split("=", 1) for part in line[len(prefix):].split())
            return process, fields
    raise RuntimeError(f"{args[0]} exited before it was ready")


class Stack:
    """A core and a bridge in front of it."""

    def __init__(self, directory):
        database = f"sqlite://{directory}/notify.db"
        self.core, fields = _start(
            ["core", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
             "--database-url", database],
            "notify core ready",
        )
        self.core_addr = fields["grpc"]
        self.bridge, fields = _start(
            ["bridge", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
             "--core-url", f"http://{self.core_addr}", "--jwt-secret", SECRET],
            "notify bridge ready",
        )
        self.url = f"http://{fields['http']}"
        self.others = []

    def another_bridge(self, args):
        """One more bridge in front of the core, with `args` in place of the
        secret; returns its URL."""
        process, fields = _start(
            ["bridge", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
             "--core-url", f"http://{self.core_addr}", *args],
            "notify bridge ready",
        )
        self.others.append(process)
        return f"http://{fields['http']}"

    def token(self, role, user_id):
        return subprocess.check_output(
            [BIN, "token", f"--{role}", str(user_id), "--jwt-secret", SECRET], text=True
        ).strip()

    def grpc(self, method, body):
        output = subprocess.check_output(
            [GRPCURL, "-plaintext", "-d", json.dumps(body), self.core_addr,
             f"notify.v1.NotificationService/{method}"],
            text=True,
        )
        return json.loads(output)

    def stop(self):
        for process in (*self.others, self.bridge, self.core):
            process.kill()
            process.wait()


@pytest.fixture()
def stack():
    with tempfile.TemporaryDirectory() as directory:
        running = Stack(directory)
        try:
            yield running
        finally:
            running.stop()
