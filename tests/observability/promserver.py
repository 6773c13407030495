"""A real Prometheus on loopback for the tests, and promtool, installed when missing."""

from __future__ import annotations

import functools
import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.files import REPO
from tests.support.process import free_port

INSTALL_SCRIPT = REPO / "deploy" / "install-test-tools.sh"
INSTALL_TIMEOUT_S = 900
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.25

Series = list[dict[str, Any]]


@functools.cache
def _install_attempt() -> str:
    """Run deploy/install-test-tools.sh once per session; its output says why a tool is missing."""
    done = subprocess.run(
        [str(INSTALL_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    return (done.stdout + done.stderr).strip()


def require_tool(name: str) -> str:
    """The path of `name` (promtool, prometheus), installing Debian's package when missing.

    Skips the calling test, saying why, only when the tool cannot be installed.
    """
    found = shutil.which(name)
    if found is None:
        output = _install_attempt()
        found = shutil.which(name)
        if found is None:
            pytest.skip(
                f"{name} is not installed and deploy/install-test-tools.sh could not install it "
                f"(Debian package `prometheus`, needs root and apt-get): {output or 'no output'}"
            )
    return found


class PromQLError(Exception):
    """Prometheus answered a query with an error."""


class PrometheusServer:
    """`prometheus` on 127.0.0.1 with a given config, storage in a temporary directory."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.binary = require_tool("prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start Prometheus and wait until /-/ready answers 200 (bounded)."""
        command = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            if self._ready():
                return
            time.sleep(POLL_INTERVAL_S)
        raise TimeoutError(f"prometheus not ready after {READY_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL when it has not exited within STOP_TIMEOUT_S."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 30) -> str:
        """The end of Prometheus's log, for failure messages."""
        if not self.log_path.exists():
            return "<no log>"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=HTTP_TIMEOUT_S) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def query(self, expr: str) -> Series:
        """The result of an instant query; PromQLError when Prometheus refuses it."""
        body = urllib.parse.urlencode({"query": expr}).encode()
        request = urllib.request.Request(f"{self.url}/api/v1/query", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:  # 400/422 carry the PromQL error as JSON
            answer = json.loads(error.read() or b"{}")
        if answer.get("status") != "success":
            raise PromQLError(f"{expr}: {answer.get('errorType')}: {answer.get('error')}")
        data = answer["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: Series = data["result"]
        return result

    def rules(self) -> Series:
        """Every loaded rule with its health ("ok", "err", "unknown") and last error."""
        url = f"{self.url}/api/v1/rules"
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            groups: Series = json.load(response)["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def targets(self) -> Series:
        """The active scrape targets with their health and last error."""
        with urllib.request.urlopen(
            f"{self.url}/api/v1/targets", timeout=HTTP_TIMEOUT_S
        ) as response:
            active: Series = json.load(response)["data"]["activeTargets"]
            return active

    def wait_for(
        self, expr: str, accept: Callable[[Series], bool], timeout_s: float, what: str
    ) -> Series:
        """Poll `expr` until `accept(result)` holds; AssertionError naming `what` after timeout_s."""
        deadline = time.monotonic() + timeout_s
        result: Series = []
        while True:
            result = self.query(expr)
            if accept(result):
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{what}: `{expr}` still {result} after {timeout_s} s\n"
                    f"targets: {self.targets()}\nprometheus log:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)


def values(result: Series) -> list[float]:
    """The sample values of an instant vector (NaN included)."""
    return [float(sample["value"][1]) for sample in result]


def all_finite_positive(result: Series) -> bool:
    """Whether a result is non-empty and every value is a number above zero."""
    numbers = values(result)
    return bool(numbers) and all(math.isfinite(v) and v > 0 for v in numbers)
