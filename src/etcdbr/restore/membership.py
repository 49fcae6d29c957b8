"""Multi-member clusters: does the rest of the cluster have a quorum, and replacing a member that
lost its data through etcd's membership API rather than from a snapshot.

Why never a snapshot while the cluster lives: a member rebuilt from a snapshot starts with a
fresh Raft log (and, after an earlier replacement, possibly a member ID the cluster no longer
knows). A leader that still holds the entries after that log's few bootstrap entries sends them
again, and the member applies them on top of a keyspace that already contains them: its data
diverges from its peers' without any error. A member that is merely behind needs nothing at all:
Raft catches it up when it starts.

The replacement is etcd's documented procedure for a member that lost its data, done with a
learner so that the cluster's quorum never depends on the new member before it is in sync:

1. remove the member (found by ``--name`` or by its peer URLs) through a member that serves
   linearizable requests;
2. add it back as a learner with its ``--initial-advertise-peer-urls``;
3. run etcd once, from here, on the empty data dir with ``--initial-cluster-state=existing`` and
   the initial cluster ``MemberAdd`` returned, listening on the member's own peer port, until
   the leader has synced it (etcd refuses to promote a learner that is not in sync);
4. promote it to a voting member and stop it.

The data dir then holds this member's WAL, and etcd ignores ``--initial-cluster`` and
``--initial-cluster-state`` when a WAL exists: the etcd started afterwards needs no other flags
than usual, so no wrapper has to rewrite them. Step 3 is why this is done here and not left to
that etcd: started with ``--initial-cluster-state=new`` on an empty data dir after a re-add, etcd
derives its member ID from names, URLs and token, comes up as the member just removed, is told
"the member has been permanently removed from the cluster" and exits, leaving a data dir behind.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from .. import metrics, retry
from ..config import EtcdConnectionConfig, RestorationConfig
from ..errors import EtcdError, RestoreError
from ..etcd import client as etcdclient
from ..retry import UNLIMITED, Policy, aretry_call
from .binaries import EtcdRelease
from .embedded import _free_ports, _tail

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 3.0
CALL_TIMEOUT = 15.0
STOP_GRACE = 30.0
CHANGE_TIMEOUT = 60.0
# A membership change etcd refuses for now is asked again every 0.5s, for CHANGE_TIMEOUT seconds.
CHANGE_RETRY = Policy(attempts=UNLIMITED, first_wait=0.5, multiplier=1.0, within=CHANGE_TIMEOUT)
TRANSIENT = ("unhealthy cluster", "UNAVAILABLE", "DEADLINE_EXCEEDED", "leader changed")
MEMBER_NOT_FOUND = "member not found"
# A learner receives the whole keyspace from the leader before it may be promoted.
JOIN_TIMEOUT = 1800.0
# etcd's answer while a learner is still catching up; anything else is not worth waiting for.
NOT_IN_SYNC = "in sync with leader"


def parse_initial_cluster(text: str) -> list[tuple[str, str]]:
    """``name=url,name=url`` as (name, url) pairs, in order (etcd's syntax, URLs checked)."""
    from ..configcheck import parse_url_map

    return parse_url_map(text)


def cluster_size(initial_cluster: str) -> int:
    """Number of members of ``--initial-cluster`` (a member with several peer URLs counts once)."""
    return len({name for name, _ in parse_initial_cluster(initial_cluster)})


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool

    @property
    def hex_id(self) -> str:
        return f"{self.id:x}"


@dataclass(frozen=True)
class ClientStatus:
    """What a member answering on a client URL says about itself (only a member that has seen a
    leader since it started answers there: etcd serves clients once it is ready)."""

    endpoint: str
    member_id: int
    leader_id: int


@dataclass(frozen=True)
class PeerInfo:
    """A member answering on its peer URL, which etcd serves from the start, leader or not."""

    name: str
    peer_url: str
    cluster_version: str           # "not_decided" until the member's cluster had a first leader
    client_urls: tuple[str, ...]

    @property
    def has_history(self) -> bool:
        """The member has been part of a cluster with a leader: it holds data of its own.

        A data dir made by ``etcdutl snapshot restore`` (or a new member's) knows no cluster
        version until its cluster elects a first leader; one that ran with a leader recorded it."""
        return self.cluster_version not in ("", "not_decided")


@dataclass
class ClusterView:
    peers: list[PeerInfo]                # other members up (on their peer URLs)
    answering: list[ClientStatus]        # members serving clients
    members: list[Member] | None = None  # from a member that served a linearizable read
    endpoint: str | None = None          # that member's endpoint
    endpoints: tuple[str, ...] = ()      # client URLs asked

    @property
    def has_quorum(self) -> bool:
        return self.members is not None

    def with_history(self) -> list[PeerInfo]:
        return [p for p in self.peers if p.has_history]


def _member(m) -> Member:
    return Member(id=m.ID, name=m.name, peer_urls=tuple(m.peerURLs), client_urls=tuple(m.clientURLs),
                  is_learner=m.isLearner)


async def _member_list(client) -> list[Member]:
    return [_member(m) for m in await etcdclient.member_list(client, timeout=CALL_TIMEOUT)]


def _ssl_context(etcd_config: EtcdConnectionConfig) -> ssl.SSLContext:
    # Only etcd's public /version and /members are read, nothing is sent: an unknown CA is no
    # reason to go blind. The client certificate is offered for peers that demand one.
    if etcd_config.cacert:
        ctx = ssl.create_default_context(cafile=etcd_config.cacert)
    else:
        ctx = ssl._create_unverified_context()
    if etcd_config.cert and etcd_config.key:
        ctx.load_cert_chain(etcd_config.cert, etcd_config.key)
    return ctx


def _get_json(url: str, ctx: ssl.SSLContext | None):
    with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT, context=ctx) as resp:
        return json.loads(resp.read(1 << 20).decode())


def probe_peer(etcd_config: EtcdConnectionConfig, name: str, peer_url: str) -> PeerInfo | None:
    ctx = _ssl_context(etcd_config) if peer_url.startswith("https://") else None
    base = peer_url.rstrip("/")
    try:
        version = _get_json(base + "/version", ctx)
    except (OSError, ValueError, ssl.SSLError) as exc:
        log.debug("etcd peer does not answer", extra={"peer_url": peer_url, "error": str(exc)})
        return None
    clients: list[str] = []
    try:
        for m in _get_json(base + "/members", ctx):
            clients += m.get("clientURLs") or []
    except (OSError, ValueError, ssl.SSLError, AttributeError, TypeError):
        pass
    return PeerInfo(name, peer_url, str(version.get("etcdcluster", "")), tuple(clients))


async def _probe_client(etcd_config: EtcdConnectionConfig, endpoint: str
                        ) -> tuple[ClientStatus | None, list | None]:
    client = etcdclient.connect(etcd_config, endpoint)
    try:
        try:
            st = await etcdclient.status(client, timeout=PROBE_TIMEOUT)
        except EtcdError as exc:
            log.debug("etcd endpoint does not answer", extra={"endpoint": endpoint, "error": str(exc)})
            return None, None
        answer = ClientStatus(endpoint, st.member_id, st.leader_id)
        if not st.leader_id:
            return answer, None
        try:  # a leader in its status is only a belief; a linearizable read proves the quorum
            await etcdclient.current_revision(client, timeout=PROBE_TIMEOUT)
            return answer, await _member_list(client)
        except EtcdError as exc:
            log.debug("etcd endpoint has no quorum", extra={"endpoint": endpoint, "error": str(exc)})
            return answer, None
    finally:
        await client.close()


async def _probe(etcd_config: EtcdConnectionConfig, endpoints: Sequence[str],
                 peers: Sequence[tuple[str, str]]) -> ClusterView:
    found = await asyncio.gather(*(asyncio.to_thread(probe_peer, etcd_config, n, u) for n, u in peers))
    up = [p for p in found if p is not None]
    if up and not any(p.has_history for p in up):
        # Members whose cluster never had a leader have no quorum (and serve no client yet).
        return ClusterView(peers=up, answering=[], endpoints=tuple(endpoints))
    # Client URLs the members advertise count too: the configured endpoint may be this member's own.
    asked = list(dict.fromkeys([*endpoints, *(u for p in up for u in p.client_urls)]))
    results = await asyncio.gather(*(_probe_client(etcd_config, ep) for ep in asked))
    view = ClusterView(peers=up, answering=[a for a, _ in results if a is not None], endpoints=tuple(asked))
    for answer, members in results:
        if answer is not None and members is not None:  # members come only with an answer
            view.members, view.endpoint = members, answer.endpoint
            break
    return view


def wait_for_cluster(etcd_config: EtcdConnectionConfig, endpoints: Sequence[str], peers: Sequence[tuple[str, str]],
                     wait: float, poll: float = 1.0) -> ClusterView:
    """Probe the other members until one serves linearizable requests, or until all of those
    up hold no history (restored or new, waiting for each other), or until ``wait`` seconds
    passed. ``peers``: (name, peer URL) of the other members; ``endpoints``: client URLs.
    Members that are down are waited for: they may hold data and be on their way up."""
    last: ClusterView | None = None

    def settled() -> ClusterView | None:
        nonlocal last
        view = asyncio.run(_probe(etcd_config, endpoints, peers))
        if view.has_quorum or (view.peers and not view.with_history()):
            return view
        if last is None:
            log.info("waiting for the other members of the cluster to show a leader",
                     extra={"endpoints": ",".join(view.endpoints), "timeout_seconds": wait,
                            "members_up": ",".join(p.name for p in view.peers)})
        last = view
        return None

    view = retry.poll(settled, every=poll, within=wait)
    if view is None:
        assert last is not None
        return last
    return view


def _listen_url(advertised: str) -> str:
    """Where to listen for an advertised peer URL: its own address when that is an IP literal,
    every interface otherwise (the host name resolves to this machine, as for etcd itself)."""
    u = urlparse(advertised)
    host = u.hostname or ""
    try:
        ipaddress.ip_address(host)
        bind = host
    except ValueError:
        bind = "0.0.0.0"
    if ":" in bind:
        bind = f"[{bind}]"
    return f"{u.scheme}://{bind}:{u.port or 2380}"


def manual_replacement(name: str, peer_urls: Sequence[str], endpoint: str, members: Sequence[Member]) -> str:
    """The etcdctl commands that replace this member by hand, for an error message."""
    ours = [m for m in members if m.name == name or set(m.peer_urls) & set(peer_urls)]
    steps = [f"etcdctl --endpoints={endpoint} member remove {m.hex_id}" for m in ours]
    steps.append(f"etcdctl --endpoints={endpoint} member add {name} --learner --peer-urls={','.join(peer_urls)}")
    return ("; ".join(steps) + "; then start etcd on an empty data dir with --initial-cluster-state=existing and "
            "the ETCD_INITIAL_CLUSTER that member add prints, and run `etcdctl member promote <new id>` "
            "once it is in sync")


@dataclass
class Replacement:
    removed: list[Member]
    member_id: int
    initial_cluster: str


class MemberReplacer:
    """Replace ``restoration.name`` in a live cluster; see the module doc for the steps."""

    def __init__(self, etcd_config: EtcdConnectionConfig, restoration: RestorationConfig, release: EtcdRelease,
                 data_dir: Path, *, join_timeout: float = JOIN_TIMEOUT) -> None:
        self.etcd_config = etcd_config
        self.restoration = restoration
        self.release = release
        self.data_dir = data_dir
        self.join_timeout = join_timeout
        self.name = restoration.name
        self.peer_urls = list(restoration.initial_advertise_peer_urls)

    def ours(self, members: Sequence[Member]) -> list[Member]:
        return [m for m in members if m.name == self.name or set(m.peer_urls) & set(self.peer_urls)]

    def run(self, view: ClusterView) -> Replacement:
        assert view.endpoint is not None
        if self.data_dir.exists():
            raise RestoreError(f"{self.data_dir} must not exist when the member joins (move it aside first)")
        return asyncio.run(self._run(view))

    async def _run(self, view: ClusterView) -> Replacement:
        client = etcdclient.connect(self.etcd_config, view.endpoint)
        try:
            members = await _member_list(client)
            removed = await self._remove(client, view, members)
            added = await self._add(client, removed)
            initial_cluster = self._initial_cluster(added)
            log.info("added the member back as a learner",
                     extra={"member": self.name, "member_id": f"{added.member.ID:x}",
                            "initial_cluster": initial_cluster})
            await self._join(client, added.member.ID, initial_cluster)
            return Replacement(removed, added.member.ID, initial_cluster)
        finally:
            await client.close()

    async def _remove(self, client, view: ClusterView, members: list[Member]) -> list[Member]:
        """Remove this member's records. Removing a member that is down never costs the cluster
        its quorum: the members up already form one of the larger membership."""
        ours = self.ours(members)
        answering = {a.member_id: a.endpoint for a in view.answering}
        for m in ours:
            if m.id in answering:
                raise RestoreError(f"member {m.name or self.name} ({m.hex_id}) answers at {answering[m.id]}, so its "
                                   "etcd is running: initialize must run before this member's etcd starts, and "
                                   "never replaces a running member")
        for m in ours:
            started = time.monotonic()
            try:
                await self._retrying(client, f"member remove {m.hex_id}", lambda m=m: etcdclient.member_remove(
                    client, m.id, timeout=CALL_TIMEOUT))
            except EtcdError as exc:
                if MEMBER_NOT_FOUND not in str(exc):
                    metrics.member_remove_duration.labels("false").observe(time.monotonic() - started)
                    raise  # otherwise it is gone already
            metrics.member_remove_duration.labels("true").observe(time.monotonic() - started)
            log.warning("removed the member from the cluster", extra={"member": m.name or self.name,
                                                                      "member_id": m.hex_id,
                                                                      "peer_urls": ",".join(m.peer_urls)})
        return ours

    async def _add(self, client, removed: list[Member]):
        started = time.monotonic()
        try:
            # Right after a learner was removed, etcd 3.5 answers a member add with "member not
            # found" for a moment.
            added = await self._retrying(client, "member add", lambda: etcdclient.member_add(
                client, self.peer_urls, learner=True, timeout=CALL_TIMEOUT), transient=(*TRANSIENT, MEMBER_NOT_FOUND))
            metrics.is_learner_count_total.labels("true").inc()
            metrics.is_learner.set(1)
            metrics.add_learner_duration.labels("true").observe(time.monotonic() - started)
            return added
        except EtcdError as exc:
            metrics.is_learner_count_total.labels("false").inc()
            metrics.add_learner_duration.labels("false").observe(time.monotonic() - started)
            if not removed:
                raise
            raise RestoreError(f"{exc} (the member was removed from the cluster already; the next run of "
                               "initialize adds it)") from None

    @staticmethod
    async def _retrying(client, what: str, call, transient: Sequence[str] = TRANSIENT):
        # etcd refuses membership changes ("unhealthy cluster") until the member asked has been
        # connected to every voting peer for 5s, e.g. just after one of them (re)started.
        def refused_for_now(exc: BaseException) -> bool:
            return isinstance(exc, EtcdError) and any(t in str(exc) for t in transient)

        def retrying(attempt: int, exc: BaseException, pause: float) -> None:
            log.debug("membership change refused for now; retrying", extra={"what": what, "error": str(exc)})

        return await aretry_call(CHANGE_RETRY, call, retry_on=refused_for_now,
                                 on_retry=retrying)

    def _initial_cluster(self, added) -> str:
        # As `etcdctl member add` prints it: members that never started have no name yet.
        pairs = []
        for m in added.members:
            name = self.name if m.ID == added.member.ID else m.name
            pairs += [f"{name}={url}" for url in m.peerURLs]
        return ",".join(pairs)

    def _command(self, initial_cluster: str, client_url: str) -> list[str]:
        r = self.restoration
        return [
            self.release.etcd,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-peer-urls", ",".join(_listen_url(u) for u in self.peer_urls),
            "--initial-advertise-peer-urls", ",".join(self.peer_urls),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", "existing",
            # The leader may send a db as large as the cluster's; the default 2 GiB quota of this
            # one-off member must not raise a NOSPACE alarm for the whole cluster.
            "--quota-backend-bytes", str(r.embedded_etcd_quota_bytes),
            "--logger", "zap",
            "--log-level", "warn",
            "--log-outputs", "stderr",
        ]

    async def _join(self, client, member_id: int, initial_cluster: str) -> None:
        work = Path(tempfile.mkdtemp(prefix="etcdbr-join-"))
        log_path = work / "join-etcd.log"
        client_url = f"http://127.0.0.1:{_free_ports(1)[0]}"
        cmd = self._command(initial_cluster, client_url)
        promoted = False
        proc = None
        try:
            with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            log.info("started etcd to sync the learner from the leader",
                     extra={"pid": proc.pid, "peer_urls": ",".join(self.peer_urls), "data_dir": str(self.data_dir)})
            started = time.monotonic()
            try:
                promoted = await self._promote(client, member_id, proc, log_path)
            finally:
                metrics.member_promote_duration.labels(metrics.label_bool(promoted)).observe(
                    time.monotonic() - started)
            metrics.is_learner.set(0)
            log.info("the learner is in sync; promoted it to a voting member",
                     extra={"member": self.name, "member_id": f"{member_id:x}"})
        except BaseException as exc:
            _stop(proc)
            if not promoted:
                await self._undo(client, member_id, exc)
            raise
        finally:
            if promoted:
                _stop(proc)
            shutil.rmtree(work, ignore_errors=True)

    async def _promote(self, client, member_id: int, proc: subprocess.Popen, log_path: Path) -> bool:
        last = ""
        next_note = time.monotonic() + 30

        async def promoted() -> bool | None:
            nonlocal last, next_note
            rc = proc.poll()
            if rc is not None:
                raise RestoreError(f"etcd joining the cluster as {self.name} exited with code {rc}; last lines of "
                                   f"its log:\n{_tail(log_path)}")
            try:
                await etcdclient.member_promote(client, member_id, timeout=CALL_TIMEOUT)
                return True
            except EtcdError as exc:
                last = str(exc)
                if "can only promote a learner member" in last and NOT_IN_SYNC not in last:
                    return True  # an earlier attempt went through; the member is a voter already
            if time.monotonic() >= next_note:
                log.info("the learner is still catching up with the leader", extra={"member": self.name})
                next_note = time.monotonic() + 30
            return None

        if await retry.apoll(promoted, every=0.5, within=self.join_timeout):
            return True
        raise RestoreError(f"the learner {self.name} was not in sync with the leader after "
                           f"{self.join_timeout:.0f}s (last answer: {last}); last lines of its log:\n"
                           f"{_tail(log_path)}")

    async def _undo(self, client, member_id: int, cause: BaseException) -> None:
        """A learner that never got in sync is removed again, with the half-synced data dir: left
        behind, etcd would start on that dir as a learner that nobody promotes."""
        shutil.rmtree(self.data_dir, ignore_errors=True)
        try:
            await etcdclient.member_remove(client, member_id, timeout=CALL_TIMEOUT)
            log.warning("removed the learner again after the join failed",
                        extra={"member_id": f"{member_id:x}", "error": str(cause)})
        except EtcdError as exc:  # harmless: a learner is no voter, and the next run removes it first
            log.warning("could not remove the learner after the join failed; the next run removes it",
                        extra={"member_id": f"{member_id:x}", "error": str(exc)})


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
