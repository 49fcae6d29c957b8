"""The member's identity from etcd's own config file, as the Go tool reads it.

etcd-druid starts the sidecar without ``--name`` or ``--initial-cluster``: the member's name, peer
URLs and cluster live in etcd's YAML config file, at ``$ETCD_CONF`` or else
``/var/etcd/config/etcd.conf.yaml``. This module reads from that file what the restore and the
initializer need, for every setting that no flag, environment variable or ``--config-file`` sets
(those always win):

==========================  ==================================  =================================
etcd config key             our setting                         note
==========================  ==================================  =================================
``name``                    ``--name``                          see the druid form below
``data-dir``                ``--data-dir``
``initial-cluster``         ``--initial-cluster``
``initial-cluster-token``   ``--initial-cluster-token``
``initial-cluster-state``   (the initial cluster state)         ``new`` or ``existing``
``initial-advertise-peer-   ``--initial-advertise-peer-urls``   a comma-separated string (etcd's
urls``                                                          format) or druid's map
==========================  ==================================  =================================

etcd-druid's form maps every member to its URLs (``initial-advertise-peer-urls: {etcd-main-0:
[https://...]}``); the member's name is then ``$POD_NAME``, prefixed with ``member-name-prefix``
when the file sets one (the Go tool's rule), and ``name`` only when ``POD_NAME`` is unset.

A file named by ``ETCD_CONF`` must be readable; the default path is read only when it exists.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from .config import read_yaml_mapping
from .errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_PATH = "/var/etcd/config/etcd.conf.yaml"
ENV = "ETCD_CONF"


@dataclass
class MemberIdentity:
    """What etcd's config file says about this member; None where it says nothing."""

    path: str
    name: str | None = None
    data_dir: str | None = None
    initial_cluster: str | None = None
    initial_cluster_token: str | None = None
    initial_cluster_state: str | None = None
    peer_urls: list[str] | None = None
    name_from: str = ""  # how the name was derived, for error messages
    #: option name -> value, for the settings the file gives
    values: dict = field(default_factory=dict)


def config_path() -> tuple[str, bool]:
    """The file to read and whether it was named explicitly (by ``ETCD_CONF``)."""
    explicit = os.environ.get(ENV, "").strip()
    return (explicit, True) if explicit else (DEFAULT_PATH, False)


def _text(conf: dict, key: str, path: str) -> str | None:
    value = conf.get(key)
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise ConfigError(f"etcd config file {path}: {key} must be a string")
    text = str(value).strip()
    return text or None


def _url_list(value, key: str, path: str) -> list[str]:
    items = value if isinstance(value, list) else str(value).split(",")
    urls = [str(u).strip() for u in items if str(u).strip()]
    if not urls:
        raise ConfigError(f"etcd config file {path}: {key} is empty")
    return urls


def read_member_identity() -> MemberIdentity | None:
    """The identity in etcd's config file, or None when there is no file to read."""
    path, explicit = config_path()
    if not explicit and not os.path.exists(path):
        return None
    conf = read_yaml_mapping(path, unreadable=ENV + ": cannot read etcd config file {path!r} ({reason})",
                             invalid="etcd config file {path} is not valid YAML{where}",
                             not_mapping="etcd config file {path} must be a YAML mapping")
    ident = MemberIdentity(path=path)
    ident.name = _text(conf, "name", path)
    ident.name_from = "name"
    ident.data_dir = _text(conf, "data-dir", path)
    ident.initial_cluster = _text(conf, "initial-cluster", path)
    ident.initial_cluster_token = _text(conf, "initial-cluster-token", path)
    ident.initial_cluster_state = _text(conf, "initial-cluster-state", path)
    peers = conf.get("initial-advertise-peer-urls")
    if isinstance(peers, dict):  # etcd-druid: every member's URLs, keyed by member name
        pod = os.environ.get("POD_NAME", "").strip()
        if pod:
            prefix = _text(conf, "member-name-prefix", path)
            ident.name = f"{prefix}-{pod}" if prefix else pod
            ident.name_from = "POD_NAME" + (" and member-name-prefix" if prefix else "")
        if ident.name is None or ident.name not in peers:
            known = ", ".join(map(str, peers)) or "none"
            raise ConfigError(f"etcd config file {path}: initial-advertise-peer-urls lists members {known} but not "
                              f"this member {ident.name!r} (from {ident.name_from})")
        ident.peer_urls = _url_list(peers[ident.name], "initial-advertise-peer-urls", path)
    elif peers is not None:
        ident.peer_urls = _url_list(peers, "initial-advertise-peer-urls", path)
    ident.values = {k: v for k, v in {
        "name": ident.name, "data-dir": ident.data_dir, "initial-cluster": ident.initial_cluster,
        "initial-cluster-token": ident.initial_cluster_token,
        "initial-advertise-peer-urls": ident.peer_urls}.items() if v is not None}
    return ident


#: etcd config key -> our Config attribute (under ``restoration``)
_DESTS = {"name": "name", "data-dir": "data_dir", "initial-cluster": "initial_cluster",
          "initial-cluster-token": "initial_cluster_token",
          "initial-advertise-peer-urls": "initial_advertise_peer_urls"}


def apply_member_identity(config) -> MemberIdentity | None:
    """Fill the restoration settings no flag, environment variable or ``--config-file`` set from
    etcd's config file; ``config.extra["origins"]`` then says where each value came from."""
    ident = read_member_identity()
    if ident is None:
        return None
    origins = config.extra.setdefault("origins", {})
    used = {}
    for key, value in ident.values.items():
        if origins.get(key, "default") != "default":
            continue
        setattr(config.restoration, _DESTS[key], value)
        derived = key == "name" and ident.name_from != "name"  # druid's form: from POD_NAME
        origins[key] = (f"{ident.name_from} with etcd config file {ident.path}" if derived
                        else f"{key!r} in etcd config file {ident.path}")
        used[key] = ",".join(value) if isinstance(value, list) else value
    if ident.initial_cluster_state:
        config.restoration.initial_cluster_state = ident.initial_cluster_state
    if used:
        log.info("member settings from etcd's config file (flags win)", extra={"file": ident.path, **{
            ("member" if k == "name" else k.replace("-", "_")): v for k, v in used.items()}})
    return ident
