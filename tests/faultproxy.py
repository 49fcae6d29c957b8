"""A TCP proxy that injects network faults, switched at run time by the test that owns it.

Put it between a client and a real service (S3 server, GCS emulator, etcd) and point the client at
``proxy.endpoint``. Modes, each applying to live connections as well as new ones:

* :meth:`FaultProxy.pass_through` - forward everything (the initial mode);
* :meth:`FaultProxy.latency` - delay every forwarded chunk by a fixed time;
* :meth:`FaultProxy.cut_after` - forward N bytes of a connection in one direction, then close both
  sides (FIN), or reset them (RST) with ``reset=True``: a transfer broken mid-way;
* :meth:`FaultProxy.reset` - reset every connection at once and each new one on accept;
* :meth:`FaultProxy.blackhole` - accept, then never forward a byte (a silent network partition);
* :meth:`FaultProxy.refuse` - stop listening: connections are refused, as when a host is down.

Threads, not asyncio, so the same proxy serves blocking clients (boto3, google-cloud-storage), an
asyncio gRPC client in the test's own loop and subprocesses alike. It binds 127.0.0.1 only, on a
free port chosen by the kernel unless one is given; the port survives :meth:`refuse` and the return
to another mode.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
CHUNK = 64 * 1024
# How often idle pumps look at the mode; bounds how quickly a mode change reaches a live connection.
POLL = 0.05

UP, DOWN, BOTH = "up", "down", "both"


@dataclass
class Stats:
    """What went through since the proxy started (or since :meth:`FaultProxy.reset_stats`)."""

    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    cuts: int = 0
    resets: int = 0
    refused: int = 0
    blackholed: int = 0


@dataclass
class _Mode:
    name: str = "pass"
    delay: float = 0.0
    cut_bytes: int = 0
    cut_direction: str = UP
    cut_reset: bool = False
    # How many more connections the cut may hit (None: every one until the mode changes).
    cut_budget: int | None = None
    generation: int = 0


@dataclass(eq=False)
class _Conn:
    client: socket.socket
    upstream: socket.socket | None
    sent: dict = field(default_factory=lambda: {UP: 0, DOWN: 0})
    closed: bool = False
    cut_armed: bool = False
    half_closed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _rst(sock: socket.socket | None) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _fin(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port`` with switchable faults."""

    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0, name: str = "proxy") -> None:
        self.target = (target_host, int(target_port))
        self.name = name
        self._port = listen_port
        self._mode = _Mode()
        self._cond = threading.Condition()
        self._conns: set[_Conn] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.stats = Stats()

    @classmethod
    def for_url(cls, url: str, **kwargs) -> "FaultProxy":
        """A proxy for ``http://host:port`` (or ``host:port``)."""
        from urllib.parse import urlparse

        parsed = urlparse(url if "://" in url else f"tcp://{url}")
        return cls(parsed.hostname or LOCALHOST, parsed.port or 80, **kwargs)

    # -- addresses -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"{LOCALHOST}:{self._port}"

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{self.endpoint}"

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "FaultProxy":
        self._listen()
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection. Idempotent."""
        self._stopped.set()
        self._close_listener()
        with self._cond:
            self._cond.notify_all()
        for conn in self._snapshot_conns():
            self._close(conn, rst=False)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOCALHOST, self._port))
        sock.listen(128)
        sock.settimeout(POLL)
        self._port = sock.getsockname()[1]
        self._listener = sock
        thread = threading.Thread(target=self._accept_loop, args=(sock,), name=f"{self.name}-accept", daemon=True)
        self._accept_thread = thread
        thread.start()

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        thread = self._accept_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    # -- modes ---------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode.name

    def _set(self, **fields) -> None:
        with self._cond:
            generation = self._mode.generation + 1
            self._mode = _Mode(generation=generation, **fields)
            for conn in self._conns:
                conn.cut_armed = False
            self._cond.notify_all()
        if self._listener is None and not self._stopped.is_set():
            self._listen()

    def pass_through(self) -> None:
        """Forward everything, without delay (also ends a black hole: held bytes then flow)."""
        self._set(name="pass")

    def latency(self, seconds: float) -> None:
        """Delay each forwarded chunk, in either direction, by ``seconds``."""
        self._set(name="latency", delay=float(seconds))

    def cut_after(self, nbytes: int, direction: str = UP, *, reset: bool = False,
                  connections: int | None = None) -> None:
        """Forward ``nbytes`` of each connection in ``direction`` (``up`` = client to server, ``down``
        or ``both``), then close both sides of it - with RST if ``reset``. Counting starts at this
        call for live connections. ``connections`` limits how many connections get cut; after
        that the proxy forwards normally."""
        if direction not in (UP, DOWN, BOTH):
            raise ValueError(f"direction must be {UP!r}, {DOWN!r} or {BOTH!r}")
        with self._cond:
            for conn in self._conns:
                conn.sent = {UP: 0, DOWN: 0}
        self._set(name="cut", cut_bytes=int(nbytes), cut_direction=direction, cut_reset=reset,
                  cut_budget=connections)

    def reset(self) -> None:
        """Reset (RST) every live connection now and every new one as soon as it is accepted."""
        self._set(name="reset")
        for conn in self._snapshot_conns():
            self.stats.resets += 1
            self._close(conn, rst=True)

    def blackhole(self) -> None:
        """Accept connections but forward nothing in either direction until the mode changes."""
        self._set(name="blackhole")

    def refuse(self) -> None:
        """Stop listening (new connections are refused) and reset live connections."""
        with self._cond:
            self._mode = _Mode(name="refuse", generation=self._mode.generation + 1)
            self._cond.notify_all()
        self._close_listener()
        for conn in self._snapshot_conns():
            self.stats.resets += 1
            self._close(conn, rst=True)

    def drop_connections(self, *, rst: bool = True) -> int:
        """Close every live connection now (RST by default), keeping the mode. Returns how many."""
        conns = self._snapshot_conns()
        for conn in conns:
            if rst:
                self.stats.resets += 1
            self._close(conn, rst=rst)
        return len(conns)

    def reset_stats(self) -> None:
        self.stats = Stats()

    @property
    def live_connections(self) -> int:
        with self._cond:
            return sum(1 for c in self._conns if not c.closed)

    # -- machinery -----------------------------------------------------------------------------
    def _snapshot_conns(self) -> list[_Conn]:
        with self._cond:
            return list(self._conns)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopped.is_set() and self._listener is listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.stats.connections += 1
            mode = self._mode
            if mode.name == "reset":
                self.stats.resets += 1
                _rst(client)
                continue
            if mode.name == "refuse":  # raced with refuse(): behave as if closed
                self.stats.refused += 1
                _rst(client)
                continue
            conn = _Conn(client=client, upstream=None)
            with self._cond:
                self._conns.add(conn)
            threading.Thread(target=self._open_upstream, args=(conn,), name=f"{self.name}-conn", daemon=True).start()

    def _open_upstream(self, conn: _Conn) -> None:
        # In a black hole the client sees an accepted connection that never answers; the upstream
        # is opened only once the hole closes, as a real partition would delay the handshake.
        if not self._wait_while_blackholed(conn):
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError as exc:
            log.debug("proxy could not reach its target", extra={"target": self.target, "error": str(exc)})
            self._close(conn, rst=True)
            return
        with conn.lock:
            if conn.closed:
                _fin(upstream)
                return
            conn.upstream = upstream
        for sock in (conn.client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(POLL)
        threading.Thread(target=self._pump, args=(conn, UP), name=f"{self.name}-up", daemon=True).start()
        threading.Thread(target=self._pump, args=(conn, DOWN), name=f"{self.name}-down", daemon=True).start()

    def _wait_while_blackholed(self, conn: _Conn) -> bool:
        counted = False
        with self._cond:
            while self._mode.name == "blackhole" and not conn.closed and not self._stopped.is_set():
                if not counted:
                    self.stats.blackholed += 1
                    counted = True
                self._cond.wait(POLL)
            return not conn.closed and not self._stopped.is_set()

    def _pump(self, conn: _Conn, direction: str) -> None:
        src = conn.client if direction == UP else conn.upstream
        dst = conn.upstream if direction == UP else conn.client
        assert src is not None and dst is not None
        while not conn.closed and not self._stopped.is_set():
            try:
                data = src.recv(CHUNK) if self._mode.name != "blackhole" else None
            except socket.timeout:
                continue
            except OSError:
                self._close(conn, rst=False)
                return
            if data is None:
                # Black hole: leave bytes in the kernel buffers, forward nothing, until the mode changes.
                if not self._wait_while_blackholed(conn):
                    return
                continue
            if not data:
                # Half-close: pass the FIN on, keep the other direction running until it ends too.
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                with conn.lock:
                    conn.half_closed += 1
                    both = conn.half_closed == 2
                if both:
                    self._close(conn, rst=False)
                return
            if not self._forward(conn, direction, dst, data):
                return

    def _forward(self, conn: _Conn, direction: str, dst: socket.socket, data: bytes) -> bool:
        mode = self._mode
        if mode.name == "latency" and mode.delay > 0:
            time.sleep(mode.delay)
        elif mode.name == "cut" and mode.cut_direction in (direction, BOTH):
            with self._cond:
                if not conn.cut_armed and self._mode is mode:
                    if mode.cut_budget is not None and mode.cut_budget <= 0:
                        pass
                    else:
                        conn.cut_armed = True
                        if mode.cut_budget is not None:
                            mode.cut_budget -= 1
                armed = conn.cut_armed
            if armed:
                room = mode.cut_bytes - conn.sent[direction]
                if room <= len(data):
                    if room > 0:
                        self._send(conn, direction, dst, data[:room])
                    self.stats.cuts += 1
                    if mode.cut_reset:
                        self.stats.resets += 1
                    self._close(conn, rst=mode.cut_reset)
                    return False
        elif mode.name in ("reset", "refuse"):
            self._close(conn, rst=True)
            return False
        return self._send(conn, direction, dst, data)

    def _send(self, conn: _Conn, direction: str, dst: socket.socket, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                n = dst.send(view)
            except socket.timeout:
                if conn.closed or self._stopped.is_set():
                    return False
                continue
            except OSError:
                self._close(conn, rst=False)
                return False
            view = view[n:]
            conn.sent[direction] += n
            if direction == UP:
                self.stats.bytes_up += n
            else:
                self.stats.bytes_down += n
        return True

    def _close(self, conn: _Conn, *, rst: bool) -> None:
        with conn.lock:
            if conn.closed:
                return
            conn.closed = True
        close = _rst if rst else _fin
        close(conn.client)
        close(conn.upstream)
        with self._cond:
            self._conns.discard(conn)
            self._cond.notify_all()


__all__ = ["FaultProxy", "Stats", "UP", "DOWN", "BOTH"]
