"""A private Mosquitto process for tests and benchmarks that must restart their broker (never the
shared one): a free port, a temporary directory with its own config and persistence file."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["PrivateMosquitto", "free_port"]

_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {directory}/
autosave_interval 1
# The defaults (1000 queued, 20 in flight) silently drop QoS 1 messages for a slow subscriber.
max_queued_messages 1000000
max_inflight_messages 1000
log_dest file {directory}/mosquitto.log
log_type error
log_type warning
log_type notice
"""


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateMosquitto:
    """``with PrivateMosquitto() as broker:`` runs ``mosquitto`` on ``broker.url``; ``restart()``
    stops it (SIGTERM: it saves its sessions) and starts it again on the same port."""

    def __init__(self, extra_config: str = "") -> None:
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._directory = Path(tempfile.mkdtemp(prefix="customevent-mosquitto-"))
        # Started as root, mosquitto drops to its own user, which must write the log and database.
        self._directory.chmod(0o777)
        self.config_file = self._directory / "mosquitto.conf"
        self.config_file.write_text(
            _CONFIG.format(port=self.port, directory=self._directory) + extra_config
        )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        self._process = subprocess.Popen(
            ["mosquitto", "-c", str(self.config_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError as exc:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mosquitto did not start on port {self.port}: {self.log()}"
                    ) from exc
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the broker gracefully (it writes its persistence file)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop, then start again on the same port with the saved sessions."""
        self.stop()
        self.start()

    def log(self) -> str:
        path = self._directory / "mosquitto.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if not os.environ.get("CUSTOMEVENT_KEEP_MOSQUITTO"):
            shutil.rmtree(self._directory, ignore_errors=True)
