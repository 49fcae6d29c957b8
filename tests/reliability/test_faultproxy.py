"""The fault proxy itself: each mode does what the fault tests rely on, measured at both ends."""

from __future__ import annotations

import http.client
import http.server
import socket
import socketserver
import threading
import time

import pytest

from faultproxy import FaultProxy


class _Recorder(socketserver.ThreadingTCPServer):
    """Echo server that remembers what each connection sent and whether it ended."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.ended: list[threading.Event] = []
        super().__init__(("127.0.0.1", 0), _EchoHandler)


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        got = bytearray()
        ended = threading.Event()
        self.server.received.append(got)
        self.server.ended.append(ended)
        try:
            while data := self.request.recv(65536):
                got.extend(data)
                self.request.sendall(data)
        except OSError:
            pass
        finally:
            ended.set()


@pytest.fixture
def echo():
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo):
    with FaultProxy("127.0.0.1", echo.server_address[1]) as p:
        yield p


def _connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            break
        out += data
    return out


def _wait(pred, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_binds_loopback_on_a_free_port(proxy):
    assert proxy.endpoint.startswith("127.0.0.1:")
    assert proxy.port > 0
    assert proxy.url() == f"http://127.0.0.1:{proxy.port}"


def test_pass_through_round_trip_and_counts(proxy, echo):
    with _connect(proxy) as s:
        s.sendall(b"hello" * 1000)
        assert _recv_exactly(s, 5000) == b"hello" * 1000
    assert _wait(lambda: proxy.stats.bytes_down == 5000)
    assert proxy.stats.bytes_up == 5000
    assert proxy.stats.connections == 1
    assert bytes(echo.received[0]) == b"hello" * 1000


def test_latency_delays_each_chunk(proxy):
    proxy.latency(0.3)
    with _connect(proxy) as s:
        t0 = time.monotonic()
        s.sendall(b"x")
        assert _recv_exactly(s, 1) == b"x"
        # one delay on the way up, one on the way down
        assert time.monotonic() - t0 >= 0.55
    proxy.pass_through()
    with _connect(proxy) as s:
        t0 = time.monotonic()
        s.sendall(b"y")
        assert _recv_exactly(s, 1) == b"y"
        assert time.monotonic() - t0 < 0.3


def test_cut_after_forwards_exactly_n_bytes_then_closes(proxy, echo):
    proxy.cut_after(1000, "up")
    with _connect(proxy) as s:
        try:
            s.sendall(b"a" * 5000)
        except OSError:
            pass
        # The client sees the connection end: EOF (FIN) after the echoed prefix.
        got = b""
        while True:
            try:
                data = s.recv(65536)
            except OSError:
                break
            if not data:
                break
            got += data
    assert _wait(lambda: echo.ended and echo.ended[0].is_set())
    assert bytes(echo.received[0]) == b"a" * 1000
    assert len(got) <= 1000
    assert proxy.stats.cuts == 1


def test_cut_with_reset_gives_the_client_a_reset(proxy, echo):
    proxy.cut_after(10, "up", reset=True)
    s = _connect(proxy)
    try:
        s.sendall(b"b" * 100)
        with pytest.raises(ConnectionResetError):
            for _ in range(50):
                if not s.recv(65536):
                    raise AssertionError("got a clean EOF instead of a reset")
    finally:
        s.close()
    assert proxy.stats.resets >= 1


def test_cut_downstream_truncates_an_http_body():
    body = b"z" * 200_000

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with FaultProxy("127.0.0.1", server.server_address[1]) as p:
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
            conn.request("GET", "/")
            assert conn.getresponse().read() == body
            conn.close()
            p.cut_after(50_000, "down")
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
            conn.request("GET", "/")
            response = conn.getresponse()
            with pytest.raises(http.client.IncompleteRead):
                response.read()
            conn.close()
    finally:
        server.shutdown()
        server.server_close()


def test_cut_budget_hits_only_the_first_connections(proxy, echo):
    proxy.cut_after(0, "up", connections=1)
    with _connect(proxy) as s:
        s.sendall(b"first")
        assert s.recv(100) == b""
    with _connect(proxy) as s:
        s.sendall(b"second")
        assert _recv_exactly(s, 6) == b"second"
    assert proxy.stats.cuts == 1


def test_reset_kills_live_and_new_connections(proxy):
    live = _connect(proxy)
    live.sendall(b"ping")
    assert _recv_exactly(live, 4) == b"ping"
    proxy.reset()
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        for _ in range(50):
            live.sendall(b"x" * 1000)
            if not live.recv(65536):
                raise AssertionError("clean EOF instead of a reset")
    live.close()
    with pytest.raises(ConnectionResetError):
        # The reset may even beat the end of connect(); either way the client sees a reset.
        with _connect(proxy) as s:
            s.sendall(b"x")
            if not s.recv(10):
                raise ConnectionResetError("EOF")  # a reset may surface as EOF on some kernels
    proxy.pass_through()
    with _connect(proxy) as s:
        s.sendall(b"ok")
        assert _recv_exactly(s, 2) == b"ok"


def test_blackhole_accepts_but_forwards_nothing_until_lifted(proxy, echo):
    proxy.blackhole()
    s = _connect(proxy, timeout=0.5)
    s.sendall(b"held")
    with pytest.raises(socket.timeout):
        s.recv(10)
    assert echo.received == [] or bytes(echo.received[0]) == b""
    assert proxy.stats.blackholed == 1
    proxy.pass_through()
    s.settimeout(3)
    assert _recv_exactly(s, 4) == b"held"
    s.close()


def test_blackhole_freezes_a_live_connection(proxy):
    s = _connect(proxy, timeout=0.5)
    s.sendall(b"1")
    assert _recv_exactly(s, 1) == b"1"
    proxy.blackhole()
    time.sleep(0.15)  # the pumps look at the mode every 50 ms
    s.sendall(b"2")
    with pytest.raises(socket.timeout):
        s.recv(10)
    proxy.pass_through()
    s.settimeout(3)
    assert _recv_exactly(s, 1) == b"2"
    s.close()


def test_refuse_then_listen_again_on_the_same_port(proxy):
    port = proxy.port
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    proxy.pass_through()
    assert proxy.port == port
    with _connect(proxy) as s:
        s.sendall(b"back")
        assert _recv_exactly(s, 4) == b"back"


def test_unreachable_target_resets_the_client():
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]
    with FaultProxy("127.0.0.1", dead_port) as p:
        s = _connect(p)
        with pytest.raises((ConnectionResetError, AssertionError)):
            data = s.recv(10)
            assert data, "EOF"
        s.close()


def test_drop_connections_keeps_the_mode(proxy):
    s = _connect(proxy)
    s.sendall(b"a")
    assert _recv_exactly(s, 1) == b"a"
    assert _wait(lambda: proxy.live_connections == 1)
    assert proxy.drop_connections() == 1
    s.close()
    assert proxy.mode == "pass"
    with _connect(proxy) as s2:
        s2.sendall(b"b")
        assert _recv_exactly(s2, 1) == b"b"


def test_stop_is_idempotent_and_closes_the_port(echo):
    p = FaultProxy("127.0.0.1", echo.server_address[1]).start()
    port = p.port
    p.stop()
    p.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
