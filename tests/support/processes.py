"""Real processes for end-to-end and fault tests: the daemon, and a waiter, as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from adapter._mqtt._testing import free_port

LOGS = Path(os.environ.get("CUSTOMEVENT_TEST_LOGS", "/tmp/customevent-test-logs"))


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMEVENT_")}
    env.update(extra)
    return env


def customevent(*args: str) -> list[str]:
    return [sys.executable, "-m", "adapter._cli", *args]


class Daemon:
    """``customevent serve`` in a subprocess on a free port; stopped with SIGTERM on exit."""

    def __init__(self, name: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}.log"
        defaults = {
            "CUSTOMEVENT_HTTP__PORT": str(self.port),
            "CUSTOMEVENT_HTTP__RATE_LIMIT": "0",
            "CUSTOMEVENT_AUTH__ANONYMOUS": "true",
        }
        self.env = clean_env(**{**defaults, **env})
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                customevent("serve"), env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited at start: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the daemon was not ready within 60 s: {self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        self.returncode = self.process.wait(timeout)
        return self.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def rabbitmqctl(*args: str, timeout: float = 120) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, timeout=timeout, capture_output=True)
