"""Where and how to reach one etcd endpoint: its address, TLS credentials and channel options."""

from __future__ import annotations

import ssl
from urllib.parse import urlparse

import grpc

from ..config import EtcdConnectionConfig
from ..errors import ConfigError, EtcdError

DEFAULT_PORT = 2379
# A watch response may carry many revisions of large values; gRPC's 4 MiB default would turn a
# busy etcd into RESOURCE_EXHAUSTED errors. etcd bounds its own messages.
CHANNEL_OPTIONS = {
    "grpc.max_receive_message_length": -1,
    "grpc.max_send_message_length": -1,
    # Notice a silently dead connection (etcd host gone) instead of watching it forever. etcd
    # accepts pings every 5s or more (--grpc-keepalive-min-time), and only while a call is open.
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.http2.max_pings_without_data": 0,
    # etcd's snapshot stream outruns an upload: with BDP probing gRPC grows the receive window and
    # holds tens of MiB of the stream in native memory ahead of our bounded hand-over queue (peak
    # RSS 169-190 MiB for a 1 GiB snapshot). A fixed 1 MiB window keeps the stream as fast next to
    # etcd and the process at 136-139 MiB (bench/README.md, memory).
    "grpc.http2.bdp_probe": 0,
    "grpc.http2.lookahead_bytes": 1024 * 1024,
}


def parse_endpoint(endpoint: str) -> tuple[str, int, bool]:
    """(host, port, TLS?) of an ``--endpoints`` entry; a bare ``host:port`` is plain HTTP."""
    text = endpoint.strip()
    if "://" not in text:
        text = "http://" + text
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https", "unix", "unixs") or not parsed.hostname:
        raise ConfigError(f"invalid etcd endpoint {endpoint!r}: expected http(s)://host:port")
    return parsed.hostname, parsed.port or DEFAULT_PORT, parsed.scheme in ("https", "unixs")


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path!r}: {exc.strerror}") from None


def tls_credentials(config: EtcdConnectionConfig, host: str, port: int) -> tuple[grpc.ChannelCredentials, str]:
    """Channel credentials from ``--cacert``/``--cert``/``--key``, and the server name to check the
    certificate against instead of ``host`` ("" for ``host`` itself)."""
    root = _read(config.cacert, "--cacert") if config.cacert else None
    cert = _read(config.cert, "--cert") if config.cert else None
    key = _read(config.key, "--key") if config.key else None
    if bool(cert) != bool(key):
        raise ConfigError("--cert and --key must be given together")
    override = ""
    if root is None and config.insecure_skip_tls_verify:
        # gRPC cannot switch certificate verification off. What --insecure-skip-tls-verify means
        # in practice (a self-signed or unknown CA) is approximated by trusting the certificate
        # the server presents, under the name it carries.
        try:
            pem = ssl.get_server_certificate((host, port), timeout=5)
        except OSError as exc:
            raise EtcdError(f"etcd {host}:{port}: cannot fetch the server certificate: {exc}") from None
        root = pem.encode()
        override = certificate_name(pem) or ""
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert), override


def certificate_name(pem: str) -> str | None:
    """The first DNS name of a PEM certificate's SANs, else its common name."""
    from cryptography import x509  # only for the skip-verify approximation

    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = san.get_values_for_type(x509.DNSName)
            if names:
                return names[0]
        except x509.ExtensionNotFound:
            pass
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(cns[0].value) if cns else None
    except Exception:  # noqa: BLE001 - any parse failure just means no override
        return None
