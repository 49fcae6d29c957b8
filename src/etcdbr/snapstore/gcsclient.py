"""The google-cloud-storage client of a GCS store, set up as the Go tool's settings say
(compatibility.md §1.3; the rules are in :mod:`.gcs`'s docstring): the credentials file or
Application Default Credentials, the ``storageAPIEndpoint`` file, an emulator host, and the SDK's
retry of one request limited to :data:`etcdbr.retry.SDK_ATTEMPTS` tries.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import google.auth
from google.api_core.retry import Retry, retry_target
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account
from requests.adapters import HTTPAdapter

from .. import logs
from ..errors import ConfigError
from ..retry import SDK_ATTEMPTS, SDK_RETRY_PAUSE
from .credentials import Credentials, read_json_file
from .providers import first_line

if TYPE_CHECKING:
    from ..config import StoreConfig

log = logging.getLogger("etcdbr.snapstore.gcs")

CREDENTIALS_VAR = "GOOGLE_APPLICATION_CREDENTIALS"
EMULATOR_VAR = "STORAGE_EMULATOR_HOST"
ENDPOINT_FILE = "storageAPIEndpoint"
GOOGLE_ENDPOINT = "https://storage.googleapis.com"
SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
EMULATOR_PROJECT = "test"
#: Client() insists on a project; object calls never use it, so any name avoids an ADC lookup.
PLACEHOLDER_PROJECT = "etcd-backup-restore"


def build_client(config: "StoreConfig", display: str, pool_size: int) -> tuple[storage.Client, str, Credentials | None]:
    """``(client, endpoint, credentials)``: the client, the endpoint it talks to ("" for Google's),
    and the credential files to watch for rotation (None without a credentials file)."""
    creds_path = config.env(CREDENTIALS_VAR) or ""
    # The files whose change (secret rotation) makes the RotatingStore rebuild the store.
    watched = [creds_path, str(Path(creds_path).parent / ENDPOINT_FILE)] if creds_path else []
    emulator = config.env(EMULATOR_VAR) or os.environ.get(EMULATOR_VAR) or ""
    endpoint = _normalise_endpoint(
        config.endpoint_override or _endpoint_file(creds_path) or (emulator and _with_scheme(emulator)) or ""
    )
    anonymous = bool(emulator) or (endpoint.startswith("http://") and not creds_path)
    gcreds, project = _load_credentials(config, display, creds_path, anonymous)
    options = {"api_endpoint": endpoint} if endpoint else None
    try:
        client = storage.Client(project=project, credentials=gcreds, client_options=options)
    except (ValueError, auth_exceptions.GoogleAuthError) as exc:
        raise ConfigError(f"{display}: cannot set up the GCS client: {exc}") from None
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    for scheme in ("https://", "http://"):
        client._http.mount(scheme, adapter)
    return client, endpoint, Credentials({}, watched) if creds_path else None


def sdk_retry() -> Retry:
    """The retry every request of the store is made with (the SDK's own predicate: 429, 5xx,
    connection errors and timeouts)."""
    return _CountedRetry(predicate=DEFAULT_RETRY._predicate, timeout=24 * 3600.0)


def _load_credentials(config: "StoreConfig", display: str, path: str, anonymous: bool):
    var = config.env_prefix + CREDENTIALS_VAR
    if anonymous:
        return AnonymousCredentials(), EMULATOR_PROJECT
    if path:
        info = read_json_file(path, var, "GCS credentials file")
        _register_secrets(info)
        try:
            creds = _credentials_from_info(info)
        except (ValueError, KeyError, TypeError, auth_exceptions.GoogleAuthError) as exc:
            # The message names the file and what is wrong with it, never its contents.
            raise ConfigError(f"{var}: cannot load GCS credentials from {path!r}: {first_line(exc)}") from None
        return creds, info.get("project_id") or PLACEHOLDER_PROJECT
    try:
        creds, project = google.auth.default(scopes=list(SCOPES))
    except auth_exceptions.DefaultCredentialsError:
        raise ConfigError(
            f"{display}: no GCS credentials: set {var} to a service-account JSON file "
            f"(or {EMULATOR_VAR} for an emulator)"
        ) from None
    log.info("using application default credentials", extra={"store": display})
    return creds, project or PLACEHOLDER_PROJECT


class _CountedRetry(Retry):
    """The SDK's retry of one request (on 429, 5xx, connection errors and timeouts), limited to
    ``SDK_ATTEMPTS`` tries like the other providers' SDKs: api_core's own ``Retry`` only knows a
    deadline, so how often it tried depended on how fast each try failed."""

    def __call__(self, func, on_error=None):
        if self._on_error is not None:
            on_error = self._on_error

        @functools.wraps(func)
        def wrapped(*args, **kwargs):
            # After the last allowed wait, an endless one: retry_target gives up at once (its
            # deadline cannot be met) and raises RetryError with the last failure as its cause.
            waits = iter([SDK_RETRY_PAUSE] * (SDK_ATTEMPTS - 1) + [float("inf")])
            return retry_target(functools.partial(func, *args, **kwargs), self._predicate, waits,
                                timeout=self._timeout, on_error=on_error)

        return wrapped


def _endpoint_file(creds_path: str) -> str:
    """The Go tool's ``storageAPIEndpoint`` file beside the credentials file, if any."""
    if not creds_path:
        return ""
    path = Path(creds_path).parent / ENDPOINT_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror})") from None
    parsed = urlparse(text)
    if text and (not parsed.scheme or not parsed.netloc):
        raise ConfigError(f"{path} must hold a URL such as https://storage.example.com")
    return text


def _with_scheme(host: str) -> str:
    # The Go SDK takes STORAGE_EMULATOR_HOST as host:port; the Python one wants a URL.
    return host if "://" in host else f"http://{host}"


def _normalise_endpoint(url: str) -> str:
    """The Go SDK's endpoints include the JSON API path (``.../storage/v1/``); ours must not."""
    url = url.strip().rstrip("/")
    for suffix in ("/storage/v1", "/upload/storage/v1"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url


def _credentials_from_info(info: dict):
    """Credentials of the two kinds the Go tool accepts, built without any network call.

    (google.auth's generic loader resolves an external account's project, which already
    exchanges a token; and it accepts kinds an operator did not mean to hand us.)
    """
    kind = info.get("type")
    if kind == "service_account":
        return service_account.Credentials.from_service_account_info(info, scopes=list(SCOPES))
    if kind == "external_account":
        source = info.get("credential_source") or {}
        if str(source.get("environment_id", "")).startswith("aws"):
            from google.auth import aws

            return aws.Credentials.from_info(info, scopes=list(SCOPES))
        if "executable" in source:
            from google.auth import pluggable

            return pluggable.Credentials.from_info(info, scopes=list(SCOPES))
        from google.auth import identity_pool

        return identity_pool.Credentials.from_info(info, scopes=list(SCOPES))
    raise ValueError(f"credentials of type {kind!r} are not supported (service_account or external_account)")


def _register_secrets(info: dict) -> None:
    """Mask the private parts of a credentials file in logs, whatever logs them later."""
    for name in ("private_key", "private_key_id", "client_secret", "refresh_token"):
        value = info.get(name)
        if isinstance(value, str):
            logs.register_secret(value)
            # A PEM key may surface line by line (e.g. in a parser's error).
            for line in value.splitlines():
                if len(line) >= 16 and "-----" not in line:
                    logs.register_secret(line)
