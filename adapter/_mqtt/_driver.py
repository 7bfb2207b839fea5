"""paho's socket on the asyncio event loop, with no network thread: the aiomqtt way.

The loop watches paho's socket (``add_reader``, and ``add_writer`` only while the kernel's send
buffer is full) and calls ``loop_read``/``loop_write``, and ``loop_misc`` once a second for the
keepalive. paho's ``on_socket_*`` callbacks tell the driver when the socket opens, closes and has
something to write.

Two costs of paho's socket use are taken off the hot path (bench/bench_mqtt.py measures them):
paho reads a packet with one ``recv`` per header byte, and writes each packet (each PUBACK) with a
``send`` of its own. ``BufferedPaho`` reads the socket in large chunks and serves paho's small reads
from that buffer, and collects paho's writes, which the driver sends a few milliseconds later in
one ``send``: the acks of many confirms leave together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

__all__ = ["BufferedPaho", "PahoDriver"]

log = logging.getLogger("adapter.mqtt")

_READ_SIZE = 256 * 1024
_MISC_INTERVAL = 1.0  # seconds between loop_misc calls: keepalive pings and their timeout
_FLUSH_DELAY = 0.005  # seconds paho's packets wait to leave together (measured: 2-10 ms alike)
_HOLD_LIMIT = 1024 * 1024  # bytes received while paused before the socket is left alone


class BufferedPaho(mqtt.Client):
    """paho's client with buffered socket I/O, for a driver on the event loop.

    paho calls ``_sock_recv``/``_sock_send`` for every read and write it makes: they are its seam
    between the protocol and the socket (paho-mqtt 2.x). Reads are served from one large ``recv``;
    writes go to ``outgoing``, which ``PahoDriver`` sends.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.inbound = b""
        self.inbound_at = 0
        self.outgoing = bytearray()
        super().__init__(*args, **kwargs)

    def reset_buffers(self) -> None:
        self.inbound = b""
        self.inbound_at = 0
        self.outgoing.clear()

    @property
    def buffered(self) -> bool:
        """True while received bytes wait in the buffer (the socket may have none to signal)."""
        return self.inbound_at < len(self.inbound)

    @property
    def unread(self) -> int:
        """Bytes in the buffer that paho has not read yet."""
        return len(self.inbound) - self.inbound_at

    def fill(self) -> bool:
        """Move what the socket holds into the buffer, without paho reading it: False at the end
        of the stream; ``BlockingIOError`` when there is nothing."""
        data = super()._sock_recv(_READ_SIZE)
        if not data:
            return False
        rest = self.inbound[self.inbound_at :]
        self.inbound = rest + data if rest else data
        self.inbound_at = 0
        return True

    def _sock_recv(self, bufsize: int) -> bytes:
        data, at = self.inbound, self.inbound_at
        if at >= len(data):
            data = super()._sock_recv(_READ_SIZE)  # BlockingIOError when empty; b"" at EOF
            if not data:
                return data
            self.inbound, at = data, 0
        self.inbound_at = at + bufsize
        return data[at : at + bufsize]

    def _sock_send(self, buf: bytes | bytearray) -> int:
        self.outgoing += buf
        return len(buf)


class PahoDriver:
    """Runs one ``BufferedPaho`` on the running event loop; ``lost()`` is called (on the loop)
    when the driver itself had to drop the connection, besides paho's own ``on_disconnect``.

    ``reconnect`` must run in a thread (its TCP connect and TLS handshake block): ``connecting``
    is True meanwhile, and the driver leaves paho alone.
    """

    def __init__(
        self, paho: BufferedPaho, *, keepalive: float, shown_url: str, lost: Callable[[], None]
    ) -> None:
        self.paho = paho
        self._keepalive = keepalive
        self._shown_url = shown_url
        self._lost = lost
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._fd = -1
        self._reading = False
        self._writing = False
        self._flush_due = False
        self._paused = False
        self.connecting = False
        self.closing = False
        self._paused_at = 0.0
        self._misc_timer: asyncio.TimerHandle | None = None
        paho.on_socket_open = self._on_socket_open
        paho.on_socket_close = self._on_socket_close
        paho.on_socket_register_write = self._on_register_write
        paho.on_socket_unregister_write = self._ignore_unregister_write

    # -- flow control ------------------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop taking messages until ``resume_reading``. So that a keepalive answer still gets
        through, one packet is taken every half keepalive meanwhile."""
        # Nothing more here: a window that fills and frees again at once, as it does under
        # load, must cost no epoll_ctl and no timer. What comes meanwhile is held (_hold).
        if not self._paused:
            self._paused = True
            self._paused_at = self._loop.time()

    def resume_reading(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._fd >= 0:
            if not self._reading:
                self._reading = True
                self._loop.add_reader(self._fd, self._on_readable)
            if self._has_pending():
                # What the buffers hold raises no readiness event: read it now.
                self._loop.call_soon(self._on_readable)

    def _hold(self) -> None:
        """Paused, and the socket has data: move it into the buffer, unread by paho, so that the
        poller does not report it again and again; past a limit, stop watching the socket (the
        broker keeps the rest)."""
        paho = self.paho
        if paho.unread >= _HOLD_LIMIT:
            self._reading = False
            self._loop.remove_reader(self._fd)
            return
        try:
            still_open = paho.fill()
        except BlockingIOError:
            return
        except OSError:
            still_open = False
        if not still_open:
            log.warning("MQTT bridge: %s closed the connection", self._shown_url)
            self.drop()

    # -- writing -----------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        """Send what paho queued, a few milliseconds from now (with whatever joins it)."""
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_later(_FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Send what paho queued, now."""
        self._flush_due = False
        paho = self.paho
        sock = paho.socket()
        if sock is None or self.connecting:
            return
        try:
            if paho.loop_write() != mqtt.MQTT_ERR_SUCCESS:
                return  # paho closed the socket and reported the loss
            self._send_buffered(sock)
        except Exception:
            log.exception("MQTT bridge: unexpected error writing to %s", self._shown_url)
            self.drop()

    def _send_buffered(self, sock: Any) -> None:
        outgoing = self.paho.outgoing
        while outgoing:
            try:
                sent = sock.send(outgoing)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
            except OSError as exc:
                log.warning("MQTT bridge: cannot write to %s (%s)", self._shown_url, exc)
                self.drop()
                return
            del outgoing[:sent]
        if outgoing and not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self.flush)
        elif not outgoing and self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    # -- reading and timers ------------------------------------------------------------------

    def _on_readable(self) -> None:
        if self._fd < 0:
            return
        if self._paused:
            self._hold()
            return
        paho = self.paho
        try:
            while not self._paused:
                if paho.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                    return  # paho closed the socket and reported the loss
                if not self._has_pending():
                    return
        except Exception:
            log.exception("MQTT bridge: unexpected error reading from %s", self._shown_url)
            self.drop()

    def _has_pending(self) -> bool:
        """Bytes received but not read by paho, which the poller cannot see: in the buffer, or
        (TLS) decrypted inside the SSL object."""
        if self.paho.buffered:
            return True
        sock = self.paho.socket()
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def _misc(self) -> None:
        if self._fd < 0:
            return
        now = self._loop.time()
        if self._paused and now - self._paused_at >= self._keepalive / 2:
            # Paused this long: take one packet, as a keepalive answer may wait behind messages.
            self._paused_at = now
            self._guarded(self.paho.loop_read)
        if self._fd >= 0:
            self._guarded(self.paho.loop_misc)
        if self._fd >= 0:
            self._misc_timer = self._loop.call_later(_MISC_INTERVAL, self._misc)

    def _guarded(self, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception:
            log.exception("MQTT bridge: unexpected error on the connection to %s", self._shown_url)
            self.drop()

    def drop(self) -> None:
        """Forget the socket, closing it if paho has not, and report the loss."""
        sock = self.paho.socket()
        self._unwatch()
        if sock is not None:
            # paho still holds it: its next reconnect() finds it closed (fileno -1) and goes on.
            sock.close()
            self._lost()

    def _unwatch(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        self._reading = self._writing = False
        if self._misc_timer is not None:
            self._misc_timer.cancel()
            self._misc_timer = None

    # -- paho's socket callbacks -------------------------------------------------------------

    def _on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        # paho calls back from the connecting thread inside reconnect(); everywhere else it runs on
        # the loop, where a direct call spares the wake-up.
        if threading.get_ident() == self._loop_thread:
            callback(*args)
        else:
            with contextlib.suppress(RuntimeError):  # a closed loop: the bridge is gone
                self._loop.call_soon_threadsafe(callback, *args)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.paho.reset_buffers()
        self._on_loop(self._watch, sock)

    def _watch(self, sock: Any) -> None:
        if self.closing or sock.fileno() < 0:
            return
        self._unwatch()
        self._fd = sock.fileno()
        self._reading = True
        self._loop.add_reader(self._fd, self._on_readable)
        self._misc_timer = self._loop.call_later(_MISC_INTERVAL, self._misc)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() != self._loop_thread or sock.fileno() < 0:
            return  # closed by drop() already (reconnect() in the thread cleans up after it)
        # The last packets (a DISCONNECT) may still be in the buffer: one try, then it closes.
        with contextlib.suppress(OSError):
            sock.send(self.paho.outgoing)
        self.paho.reset_buffers()
        self._unwatch()

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self.schedule_flush)

    def _ignore_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        """The writer is registered only while bytes wait for the socket (``_send_buffered``)."""
