"""``/config``: etcd's member configuration, rendered as the Go server renders it for etcd-wrapper.

etcd-wrapper (the etcd container under etcd-druid) starts etcd with what the sidecar's ``/config``
serves. The Go server builds it from etcd's config file (etcd-druid's layout: the advertised URLs
of every member keyed by member name) and the environment, and this module does the same:

* every key of the file, as the file has it;
* ``name``: ``$POD_NAME``, prefixed by ``member-name-prefix`` and a dash when the file sets one;
* ``initial-advertise-peer-urls`` and ``advertise-client-urls``: this member's URLs out of the
  per-member maps, comma-joined (a file in etcd's own format, a plain string, is kept as it is);
* ``initial-cluster``: when etcd (asked through ``--service-endpoints``, else ``--endpoints``)
  lists more than one member, only the entries of current members and of this one (etcd refuses
  a start whose initial cluster counts members that have not joined yet); unchanged otherwise;
* ``initial-cluster-state``: ``new`` for a cluster of one; else ``existing`` when etcd lists a
  learner (this member joins as one), ``new`` otherwise, and ``new`` when etcd cannot be asked (a
  first bootstrap, etcd not running yet).

The result is YAML with sorted keys. The file is ``$ETCD_CONF``, else
``/var/etcd/config/etcd.conf.yaml``. (The Go handler reads the latter only and also writes the
rendered file to ``$HOME/etcd.conf.yaml``; this one writes nothing.)
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import yaml

from ..config import Config, read_yaml_mapping
from ..errors import ConfigError, EtcdbrError
from ..etcd import client as etcdclient
from ..etcdconf import config_path

log = logging.getLogger(__name__)

#: Longest wait for etcd's member list (etcd-wrapper waits for this answer to start etcd).
MEMBER_LIST_TIMEOUT = 5.0
NEW, EXISTING = "new", "existing"


def member_name(conf: dict) -> str:
    """``$POD_NAME``, with ``member-name-prefix-`` in front when the file sets a prefix."""
    pod = os.environ.get("POD_NAME", "").strip()
    if not pod:
        raise ConfigError("POD_NAME is not set: the member's name is derived from it")
    prefix = conf.get("member-name-prefix")
    return f"{prefix}-{pod}" if isinstance(prefix, str) and prefix else pod


def _member_urls(conf: dict, key: str, name: str, path: str) -> str:
    value = conf.get(key)
    if isinstance(value, dict):
        urls = value.get(name)
        if not urls:
            raise ConfigError(f"etcd config file {path}: {key} has no URLs for member {name!r}")
        return ",".join(str(u) for u in (urls if isinstance(urls, list) else [urls]))
    if value is None:
        raise ConfigError(f"etcd config file {path}: {key} is missing")
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _cluster_entries(initial_cluster: str) -> list[tuple[str, str]]:
    entries = []
    for item in initial_cluster.split(","):
        name, _, url = item.strip().partition("=")
        if name:
            entries.append((name, url))
    return entries


async def _members(config: Config) -> list | None:
    """etcd's member list through the service endpoints (a ready member), or None."""
    endpoints = list(config.etcd.service_endpoints or config.etcd.endpoints)
    if not endpoints:
        return None
    client = etcdclient.connect(config.etcd, endpoints[0])
    try:
        return await etcdclient.member_list(client, linearizable=False, timeout=MEMBER_LIST_TIMEOUT)
    except EtcdbrError as exc:
        log.info("etcd's member list is not available for /config; the initial cluster is served as the file has it",
                 extra={"error": str(exc)})
        return None
    finally:
        await client.close()


async def render(config: Config) -> str:
    """The member configuration etcd-wrapper starts etcd with (ConfigError when it cannot be built)."""
    path, _ = config_path()
    conf: dict[str, Any] = await asyncio.to_thread(
        read_yaml_mapping, path, unreadable="cannot read etcd config file {path!r} ({reason})",
        invalid="etcd config file {path} is not valid YAML{where}",
        not_mapping="etcd config file {path} must be a YAML mapping")
    name = member_name(conf)
    conf["name"] = name
    conf["initial-advertise-peer-urls"] = _member_urls(conf, "initial-advertise-peer-urls", name, path)
    conf["advertise-client-urls"] = _member_urls(conf, "advertise-client-urls", name, path)

    members = await _members(config)
    initial_cluster = str(conf.get("initial-cluster", ""))
    if members is not None and len(members) > 1:
        current = {m.name for m in members}
        kept = [f"{n}={u}" for n, u in _cluster_entries(initial_cluster) if n in current or n == name]
        initial_cluster = ",".join(kept)
    conf["initial-cluster"] = initial_cluster

    size = len({n for n, _ in _cluster_entries(initial_cluster)})
    if size <= 1 or members is None:
        state = NEW
    else:
        state = EXISTING if any(m.isLearner for m in members) else NEW
    conf["initial-cluster-state"] = state
    log.info("served etcd's member configuration", extra={"member": name, "initial_cluster_state": state})
    return yaml.safe_dump(conf, sort_keys=True, default_flow_style=False)
