"""The async etcd client against real etcd members: TLS with a CA and a client certificate (etcd
demanding one), ``--insecure-skip-tls-verify`` with a self-signed certificate for another name,
and an auth token that etcd forgets on a restart, renewed without the caller noticing."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
from datetime import timedelta
from pathlib import Path

import pytest

from etcdbr.config import EtcdConnectionConfig
from etcdbr.errors import EtcdError
from etcdbr.etcd import client as etcdclient
from services import free_ports

pytestmark = pytest.mark.integration


def _write_key(key, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)


def _certificate(path: Path, subject: str, key, *, issuer=None, ca: bool = False, dns=(), ips=(), client=False):
    """Write a certificate for ``key`` (self-signed unless ``issuer`` = (its name, its key))."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    path.write_bytes(builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return name


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _tls_etcd(etcd_factory, *tls_args: str):
    """A member serving plain HTTP (for the harness's health check) and TLS on a port of its own;
    returns it and its https:// endpoint."""
    client_port, peer_port, tls_port = free_ports(3)
    urls = f"http://127.0.0.1:{client_port},https://127.0.0.1:{tls_port}"
    etcd = etcd_factory(client_port=client_port, peer_port=peer_port,
                        extra_args=["--listen-client-urls", urls, "--advertise-client-urls", urls, *tls_args])
    return etcd, f"https://127.0.0.1:{tls_port}"


async def _status_and_revision(config: EtcdConnectionConfig) -> tuple[int, int]:
    client = etcdclient.connect(config)
    try:
        st = await etcdclient.status(client)
        return st.revision, await etcdclient.current_revision(client)
    finally:
        await client.close()


def test_tls_with_a_ca_and_a_client_certificate(etcd_factory, tmp_path):
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca = _certificate(tmp_path / "ca.crt", "etcdbr test CA", ca_key, ca=True)
    _certificate(tmp_path / "server.crt", "etcd", server_key, issuer=(ca, ca_key), dns=["localhost"], ips=["127.0.0.1"])
    _certificate(tmp_path / "client.crt", "etcdbr", client_key, issuer=(ca, ca_key), client=True)
    for key, name in ((server_key, "server.key"), (client_key, "client.key")):
        _write_key(key, tmp_path / name)
    etcd, endpoint = _tls_etcd(etcd_factory, "--cert-file", str(tmp_path / "server.crt"),
                               "--key-file", str(tmp_path / "server.key"), "--client-cert-auth",
                               "--trusted-ca-file", str(tmp_path / "ca.crt"))
    config = EtcdConnectionConfig(endpoints=[endpoint], insecure_transport=False, insecure_skip_tls_verify=False,
                                  cacert=str(tmp_path / "ca.crt"), cert=str(tmp_path / "client.crt"),
                                  key=str(tmp_path / "client.key"), connection_timeout=timedelta(seconds=5))
    revision, current = asyncio.run(_status_and_revision(config))
    assert revision == current >= 1

    # etcd demands a client certificate: without one the call fails, as one line naming the endpoint
    config.cert = config.key = ""
    with pytest.raises(EtcdError, match=rf"^etcd {endpoint}: status failed: ") as failed:
        asyncio.run(_status_and_revision(config))
    assert "\n" not in str(failed.value)


def test_skip_tls_verify_trusts_a_self_signed_certificate_under_its_own_name(etcd_factory, tmp_path):
    key = _key()
    # Valid for a name only, not for the address the client dials: the client must check the
    # certificate against the name it carries.
    _certificate(tmp_path / "self.crt", "etcd.test", key, dns=["etcd.test"])
    _write_key(key, tmp_path / "self.key")
    etcd, endpoint = _tls_etcd(etcd_factory, "--cert-file", str(tmp_path / "self.crt"),
                               "--key-file", str(tmp_path / "self.key"))
    config = EtcdConnectionConfig(endpoints=[endpoint], insecure_transport=False, insecure_skip_tls_verify=True,
                                  connection_timeout=timedelta(seconds=5))
    revision, current = asyncio.run(_status_and_revision(config))
    assert revision == current >= 1

    config.insecure_skip_tls_verify = False  # then the unknown certificate is refused
    with pytest.raises(EtcdError, match=rf"^etcd {endpoint}: status failed: "):
        asyncio.run(_status_and_revision(config))


def test_an_auth_token_etcd_forgot_is_renewed(etcd_factory):
    etcd = etcd_factory()
    password = "renew-Passw0rd"
    etcd.etcdctl("user", "add", f"root:{password}")
    etcd.etcdctl("auth", "enable")
    config = EtcdConnectionConfig(endpoints=[etcd.client_url], username="root", password=password,
                                  connection_timeout=timedelta(seconds=5))

    async def scenario():
        client = etcdclient.connect(config)
        try:
            before = await etcdclient.current_revision(client)
            token = client.metadata
            # etcd's simple tokens live in its memory only: after a restart the token is unknown
            await asyncio.to_thread(etcd.restart)
            after = await etcdclient.current_revision(client)
            assert await etcdclient.member_list(client)
            return before, token, after, client.metadata
        finally:
            await client.close()

    before, token, after, renewed = asyncio.run(scenario())
    assert token and renewed and token != renewed
    assert after == before


def test_credentials_for_an_etcd_without_auth_are_no_error(etcd_factory):
    etcd = etcd_factory()
    config = EtcdConnectionConfig(endpoints=[etcd.client_url], username="root", password="unused-Passw0rd")

    async def scenario():
        client = etcdclient.connect(config)
        try:
            st = await etcdclient.status(client)
            return st, client.metadata
        finally:
            await client.close()

    st, metadata = asyncio.run(scenario())
    assert st.is_leader and metadata is None
