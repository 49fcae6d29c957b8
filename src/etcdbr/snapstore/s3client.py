"""The boto3 client of an S3 store, built from the Go tool's credentials file (compatibility.md
§1.3): access keys or a web identity (``roleARN`` + ``tokenPath``), region, path style, TLS trust
(``trustedCaCert``, ``insecureSkipVerify``) and checksum modes; timeouts and the SDK's retries
from our settings (``--store-timeout``, :data:`etcdbr.retry.SDK_ATTEMPTS`).
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import tempfile
from typing import Any

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import (
    AssumeRoleWithWebIdentityCredentialFetcher,
    CredentialProvider,
    DeferredRefreshableCredentials,
)
from botocore.utils import FileWebIdentityTokenLoader

from ..errors import ConfigError
from ..retry import SDK_ATTEMPTS
from .credentials import as_bool

DEFAULT_REGION = "us-east-1"


def build_client(values: dict, have_file: bool, *, region: str | None, endpoint_url: str,
                 connect_timeout: float, request_timeout: float, pool_size: int,
                 temp_dir: str | None) -> tuple[Any, str, str | None]:
    """``(client, region, ca_dir)``: the client, the region it uses, and the private directory
    holding the CA bundle it trusts (None without ``trustedCaCert``; remove it with
    :func:`remove_ca_dir` once the client is closed). ``values`` are the credentials file's, and
    ``have_file`` says whether there was one (else boto3's default chain finds credentials)."""
    session = botocore.session.Session()
    access_key = str(values.get("accessKeyID") or "")
    secret = str(values.get("secretAccessKey") or "")
    if have_file:
        if access_key and secret:
            session.set_credentials(access_key, secret)
        elif values.get("roleARN") and values.get("tokenPath"):
            _use_web_identity(session, str(values["roleARN"]), str(values["tokenPath"]), region or DEFAULT_REGION)
        else:
            raise ConfigError(
                "S3 credentials lack accessKeyID and secretAccessKey (or roleARN and tokenPath for web identity)"
            )
    region = region or session.get_config_variable("region") or DEFAULT_REGION

    options: dict[str, Any] = {
        # --store-timeout bounds every request; botocore tries each one SDK_ATTEMPTS times.
        "connect_timeout": connect_timeout,
        "read_timeout": request_timeout,
        "retries": {"mode": "standard", "total_max_attempts": SDK_ATTEMPTS},
        "max_pool_connections": pool_size,
        "user_agent_extra": "etcd-backup-restore",
        "tcp_keepalive": True,
    }
    # Every byte we download is checked by us (etcd's SHA-256 trailer, the delta hash, the
    # copier's SHA-256), so botocore's CRC pass over responses would hash it twice. Uploads
    # keep their request checksum: the service checks what it received.
    options["response_checksum_validation"] = "when_required"
    if endpoint_url or as_bool(values.get("s3ForcePathStyle", False)):
        options["s3"] = {"addressing_style": "path"}
    for key, option in (("requestChecksumCalculation", "request_checksum_calculation"),
                        ("responseChecksumValidation", "response_checksum_validation")):
        if values.get(key):
            mode = str(values[key]).strip().lower()
            if mode not in ("when_supported", "when_required"):
                raise ConfigError(f"S3 credentials: {key} must be when_supported or when_required, not {mode!r}")
            options[option] = mode
    kwargs: dict[str, Any] = {"region_name": region, "config": BotoConfig(**options)}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url

    ca_dir = None
    if as_bool(values.get("insecureSkipVerify", False)):
        kwargs["verify"] = False
    elif values.get("trustedCaCert"):
        ca_dir = _write_ca(str(values["trustedCaCert"]), temp_dir or None)
        kwargs["verify"] = os.path.join(ca_dir, "ca.pem")
    try:
        return boto3.Session(botocore_session=session).client("s3", **kwargs), region, ca_dir
    except BaseException:
        remove_ca_dir(ca_dir)
        raise


def _use_web_identity(session, role_arn: str, token_path: str, region: str) -> None:
    """Assume ``role_arn`` with the projected token at ``token_path``, refreshed before expiry."""
    fetcher = AssumeRoleWithWebIdentityCredentialFetcher(
        client_creator=functools.partial(session.create_client, region_name=region),
        web_identity_token_loader=FileWebIdentityTokenLoader(token_path),
        role_arn=role_arn,
        extra_args={"RoleSessionName": "etcd-backup-restore"},
    )
    credentials = DeferredRefreshableCredentials(
        method="assume-role-with-web-identity", refresh_using=fetcher.fetch_credentials
    )
    session.get_component("credential_provider").insert_before("env", _FixedProvider(credentials))


def _write_ca(pem: str, base: str | None) -> str:
    """botocore wants a CA bundle path; keep the PEM in a private directory (returned)."""
    try:
        if base:
            os.makedirs(base, mode=0o700, exist_ok=True)
        ca_dir = tempfile.mkdtemp(prefix="etcdbr-s3-ca-", dir=base)
    except OSError as exc:
        raise ConfigError(f"--snapstore-temp-directory {base!r}: cannot create a private directory "
                          f"for the CA bundle ({exc.strerror or exc})") from None
    os.chmod(ca_dir, stat.S_IRWXU)
    fd = os.open(os.path.join(ca_dir, "ca.pem"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pem if pem.endswith("\n") else pem + "\n")
    return ca_dir


def remove_ca_dir(ca_dir: str | None) -> None:
    if ca_dir:
        shutil.rmtree(ca_dir, ignore_errors=True)


class _FixedProvider(CredentialProvider):
    """Hands botocore credentials we built (web identity from the credentials file)."""

    METHOD = "etcdbr-web-identity"
    CANONICAL_NAME = "etcdbr-web-identity"

    def __init__(self, credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self):
        return self._credentials
