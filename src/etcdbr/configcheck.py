"""Configuration rules that span settings, checked before a command touches etcd, a store or a
data dir: at least every configuration the Go tool refuses at start (its ``Validate()`` methods)
is refused here too, with one line and exit code 2.

Single values (a negative count, a bad duration, an unknown policy) are refused where they are
parsed (the flags' types, :mod:`etcdbr.cli.types`); the rules here need more than one value, or a syntax the
parsers do not know (etcd's URL lists). ``docs/configuration-rules.md`` lists both kinds, each
with the Go tool's rule beside ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

from .config import Config, RestorationConfig, parse_bool, parse_duration
from .errors import ConfigError

#: Go's ``math.MaxInt`` on the 64-bit platforms it runs on.
MAX_INT = 2 ** 63 - 1
ONE_SECOND = timedelta(seconds=1)


# -- etcd's URL syntax (go.etcd.io/etcd/client/pkg/v3/types.NewURLs) --------------------------
def url_problem(url: str) -> str | None:
    """Why etcd would refuse ``url`` as a member URL, or None."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        return f"{url!r} is not a URL ({exc})"
    if parts.scheme in ("unix", "unixs"):
        return None
    if parts.scheme not in ("http", "https"):
        return f"{url!r}: the scheme must be http, https, unix or unixs"
    if not parts.hostname or port is None:
        return f"{url!r} does not have the form scheme://host:port"
    if parts.path:
        return f"{url!r} must not contain a path"
    return None


def parse_url_map(text: str, flag: str = "--initial-cluster") -> list[tuple[str, str]]:
    """``name=url,...`` as etcd parses it, every URL checked; ConfigError on the first bad entry."""
    pairs = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, url = item.partition("=")
        if not sep or not url.strip():
            raise ConfigError(f"{flag}: entry {item!r} is not name=peer-url")
        problem = url_problem(url)
        if problem:
            raise ConfigError(f"{flag}: {problem}")
        pairs.append((name.strip(), url.strip()))
    return pairs


def _same_url(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def check_member_urls(rest: RestorationConfig) -> None:
    """What ``etcdutl snapshot restore`` needs of the member's flags (etcd's bootstrap checks):
    ``--name`` is a member of ``--initial-cluster``, ``--initial-advertise-peer-urls`` are exactly
    the URLs ``--initial-cluster`` gives that member, and no URL is listed twice. URLs are
    compared as text (scheme and host case-insensitive), not resolved."""
    pairs = parse_url_map(rest.initial_cluster)
    for url in rest.initial_advertise_peer_urls:
        problem = url_problem(url)
        if problem:
            raise ConfigError(f"--initial-advertise-peer-urls: {problem}")
    mine = sorted({_same_url(u) for n, u in pairs if n == rest.name})
    if not mine:
        names = ", ".join(dict.fromkeys(n for n, _ in pairs)) or "none"
        raise ConfigError(f"--name {rest.name!r} is not a member of --initial-cluster (members: {names})")
    urls = [_same_url(u) for _, u in pairs]
    twice = next((u for i, u in enumerate(urls) if u in urls[:i]), None)
    if twice:
        raise ConfigError(f"--initial-cluster lists the URL {twice} more than once")
    advertised = sorted({_same_url(u) for u in rest.initial_advertise_peer_urls})
    if advertised != mine:
        raise ConfigError(f"--initial-advertise-peer-urls ({','.join(rest.initial_advertise_peer_urls)}) must be the "
                          f"URLs --initial-cluster gives member {rest.name!r} ({','.join(mine)})")


# -- the rules ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    id: str
    groups: tuple[str, ...]  # applies to commands that take any of these flag groups (empty: all)
    check: Callable[[Config], str | None]  # the one-line refusal, or None


def _limit_based(c: Config) -> str | None:
    s = c.snapshotter
    if s.garbage_collection_policy == "LimitBased" and s.max_backups <= 0:
        return (f"--max-backups must be greater than 0 with --garbage-collection-policy=LimitBased "
                f"(got {s.max_backups})")
    return None


def _max_backups(c: Config) -> str | None:
    if c.snapshotter.max_backups > MAX_INT:
        return f"--max-backups must be at most {MAX_INT}"
    return None


def _memory_limit(c: Config) -> str | None:
    if c.snapshotter.delta_snapshot_memory_limit > MAX_INT:
        return f"--delta-snapshot-memory-limit must be at most {MAX_INT} bytes"
    return None


def _snapshot_timeout(c: Config) -> str | None:
    e = c.etcd
    if e.snapshot_timeout < e.connection_timeout:
        return (f"--etcd-snapshot-timeout ({_show(e.snapshot_timeout)}) must not be shorter than "
                f"--etcd-connection-timeout ({_show(e.connection_timeout)})")
    return None


def _reelection(c: Config) -> str | None:
    if c.server.reelection_period <= ONE_SECOND:
        return f"--reelection-period must be longer than 1s (got {_show(c.server.reelection_period)})"
    return None


def _parsed(name: str, raw: object, kind: type, parse: Callable[[str], Any], expected: str) -> tuple[Any, str | None]:
    """``(value, None)`` for a flag's value, parsed by the flag already or text from another
    command's file; ``(None, refusal)`` when the text is no ``expected``."""
    if isinstance(raw, kind):
        return raw, None
    try:
        return parse(str(raw)), None
    except ValueError:
        return None, f"invalid value {raw!r} for --{name}: expected {expected}"


def _compat_duration(name: str, minimum: timedelta, wording: str) -> Callable[[Config], str | None]:
    def check(c: Config) -> str | None:
        raw = c.extra.get("compat", {}).get(name)
        if raw is None:
            return None
        value, refusal = _parsed(name, raw, timedelta, parse_duration, "a duration such as 30s")
        if refusal:
            return refusal
        if value <= minimum:
            return f"--{name} must be {wording} (got {_show(value)})"
        return None

    return check


def _lease_names(c: Config) -> str | None:
    compat = c.extra.get("compat", {})
    extra = c.extra

    def pick(name: str):
        key = name.replace("-", "_")
        return extra[key] if key in extra else compat.get(name)

    raw = pick("enable-snapshot-lease-renewal")
    if raw is None:
        return None
    enabled, refusal = _parsed("enable-snapshot-lease-renewal", raw, bool, parse_bool, "true or false")
    if refusal:
        return refusal
    if enabled:
        for name in ("full-snapshot-lease-name", "delta-snapshot-lease-name"):
            value = pick(name)
            if value is not None and not str(value).strip():
                return f"--{name} must not be empty with --enable-snapshot-lease-renewal=true"
    return None


def _refusal(check: Callable[[], object]) -> str | None:
    """The message of the ConfigError ``check()`` raises, or None."""
    try:
        check()
    except ConfigError as exc:
        return str(exc)
    return None


def _initial_cluster(c: Config) -> str | None:
    return _refusal(lambda: parse_url_map(c.restoration.initial_cluster))


def _peer_urls(c: Config) -> str | None:
    urls = c.restoration.initial_advertise_peer_urls
    if not urls:
        return "--initial-advertise-peer-urls must name at least one URL"
    for url in urls:
        problem = url_problem(url)
        if problem:
            return f"--initial-advertise-peer-urls: {problem}"
    return None


def _cluster_state(c: Config) -> str | None:
    state = c.restoration.initial_cluster_state
    if state and state not in ("new", "existing"):
        return f"initial-cluster-state must be new or existing, not {state!r} (etcd config file)"
    return None


def _member(c: Config) -> str | None:
    return _refusal(lambda: check_member_urls(c.restoration))


def _codec_installed(c: Config) -> str | None:
    """zstd is an optional extra: refuse --compression-policy=zstd at start when it is missing."""
    from .compression import require_codec

    return _refusal(lambda: require_codec(c.snapshotter.compression))


RULES: list[Rule] = [
    Rule("codec-installed", ("compression",), _codec_installed),
    Rule("gc-limit-based", ("snapshotter",), _limit_based),
    Rule("max-backups-bound", ("snapshotter",), _max_backups),
    Rule("delta-memory-bound", ("snapshotter",), _memory_limit),
    Rule("snapshot-timeout", ("etcd",), _snapshot_timeout),
    Rule("reelection-period", ("server",), _reelection),
    Rule("leader-election-timeout", ("server",),
         _compat_duration("etcd-connection-timeout-leader-election", ONE_SECOND, "longer than 1s")),
    Rule("heartbeat-duration", ("server",), _compat_duration("k8s-heartbeat-duration", timedelta(0), "greater than 0")),
    Rule("lease-names", (), _lease_names),  # server (ignored flags) and compact
    Rule("initial-cluster-urls", ("restoration",), _initial_cluster),
    Rule("peer-urls", ("restoration",), _peer_urls),
    Rule("initial-cluster-state", ("restoration",), _cluster_state),
]
#: Checked at start only by commands that always restore (restore, compact); initialize and
#: server check it right before a restore, so that a member that never needs one starts as it
#: does with the Go tool.
MEMBER_RULE = Rule("member-in-cluster", ("restoration",), _member)


def _show(d: timedelta) -> str:
    from .config import format_duration

    return format_duration(d)


def advisories(config: Config, groups: Sequence[str]) -> list[str]:
    """Settings that work but deserve a WARN at start: what they cost an operator who may go back
    to the Go tool."""
    out = []
    if "compression" in groups and config.snapshotter.compression == "zstd":
        out.append("--compression-policy=zstd writes .zst snapshots that the Go etcdbrctl cannot read: "
                   "a store written with it can only be restored by this tool (gzip, zlib and lzw are "
                   "readable by both)")
    return out


def check(config: Config, groups: Sequence[str], *, member_urls: bool = False) -> None:
    """Raise :class:`ConfigError` (exit 2) for the first rule ``config`` breaks."""
    rules = RULES + ([MEMBER_RULE] if member_urls else [])
    for rule in rules:
        if not rule.groups or any(g in groups for g in rule.groups):
            message = rule.check(config)
            if message:
                raise ConfigError(message)
