"""One small family of errors, so callers can tell what happened without parsing messages.

Only :class:`StoreUnavailable` is worth retrying: every other store error is a fact about the
request (missing object, wrong credentials, locked object) that a retry cannot change.
"""

from __future__ import annotations

from typing import Any


class EtcdbrError(Exception):
    """Root of every error this tool raises on purpose."""

    exit_code = 1


class ConfigError(EtcdbrError):
    """A flag, environment variable, config file or credential is wrong. Exit code 2."""

    exit_code = 2


def not_installed(what: str, package: str, extra: str) -> ConfigError:
    """The error for an optional part of the tool whose package is missing: one line naming the
    command that installs it (the extras of ``pyproject.toml``)."""
    return ConfigError(f"{what} needs the Python package {package!r}, which is not installed: "
                       f"pip install 'etcd-backup-restore[{extra}]'")


class StoreError(EtcdbrError):
    """A snapstore operation failed. ``endpoint`` names the store, ``key`` the object."""

    def __init__(self, message: str, *, endpoint: str = "", key: str = "") -> None:
        self.endpoint = endpoint
        self.key = key
        where = endpoint + (f" object {key}" if key else "")
        super().__init__(f"{where}: {message}" if where else message)
        self.reason = message


class ObjectNotFound(StoreError):
    """The object does not exist (a definite answer, never a guess made from an error)."""


class StoreUnavailable(StoreError):
    """The store could not be reached or answered with a transient failure; retrying may help."""


class PermissionDenied(StoreError):
    """The credentials were refused or lack a permission: a credential problem, exit 2 as the
    README lists it (retrying cannot help; the operator must change the credentials or grants)."""

    exit_code = 2


class ImmutableObject(StoreError):
    """Deletion refused because the object is under retention (Object Lock, bucket lock, WORM)."""


class IntegrityError(EtcdbrError):
    """Data failed a check: hash mismatch, truncated payload, unknown format or suffix."""


class RevisionGap(IntegrityError):
    """A chain of snapshots is not contiguous."""


class EtcdError(EtcdbrError):
    """etcd could not be reached or refused an operation."""

    #: The gRPC status behind the error (a ``grpc.StatusCode``), when there was one: it tells an
    #: expired auth token (reconnect) from an unreachable member.
    grpc_code: Any = None


class RestoreError(EtcdbrError):
    """A restore could not complete; the previous data dir is left in place."""
