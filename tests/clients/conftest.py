"""Starts a real cella server for the client-package tests (one per test session/worker)."""

import itertools
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _binary() -> str:
    if os.environ.get("CELLA_BIN"):
        return os.environ["CELLA_BIN"]
    for profile in ("release", "debug"):
        path = ROOT / "target" / profile / "cella"
        if path.exists():
            return str(path)
    raise RuntimeError("build cella first: cargo build --release")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_INSTANCES = itertools.count()


class Server:
    def __init__(self, token=None):
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        # Each server of this process needs its own cgroup parent and uids (a second one,
        # with a token, starts beside the worker's own).
        instance = next(_INSTANCES)
        tag = f"{os.getpid()}-{worker}-{instance}"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tempfile.mkdtemp(prefix=f"cella-clients-{tag}-")
        self.cgroup_parent = f"cella-clients-{tag}"
        slot = int(worker.lstrip("gw") or 0) + 5 * instance  # ten ranges of 1000 per pid
        uid_base = 3_000_000 + (os.getpid() % 1000) * 10_000 + slot * 1000
        env = dict(os.environ, CELLA_CGROUP_PARENT=self.cgroup_parent, CELLA_UID_BASE=str(uid_base),
                   CELLA_UID_COUNT="1000", CELLA_LOG="warn")
        if token:
            env["CELLA_API_TOKEN"] = token
        self.proc = subprocess.Popen(
            [_binary(), "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data_dir], env=env)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("cella exited during start-up")
            time.sleep(0.05)
        # The first listing checks every toolchain, so availability answers are final.
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        requests.get(f"{self.url}/api/v1/languages", headers=headers, timeout=120).raise_for_status()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        for hierarchy in ("memory", "pids", "cpu", "cpuacct", "cpuset", "freezer"):
            try:
                os.rmdir(f"/sys/fs/cgroup/{hierarchy}/{self.cgroup_parent}")
            except OSError:
                pass


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def endpoint(server):
    import sandbox_fusion

    sandbox_fusion.set_endpoint(server.url)
    return server.url
