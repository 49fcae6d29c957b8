"""``/config``: the effective configuration, keyed by flag name, with every secret masked.

Keys are the flag names of the command, so the YAML served is itself a valid ``--config-file``
(secrets aside). Credentials never enter :class:`Config` (providers read them from their files),
so what can leak is limited to flags marked secret; those are masked by name, and the rendered
text is passed through the log redactor as well, which masks every registered secret value.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Iterable

import yaml

from .. import logs
from ..cli.options import GROUPS, Opt
from ..config import Config, format_duration

MASK = logs.MASK


def _value(config: Config, dest: str) -> Any:
    target: Any = config
    for part in dest.split("."):
        target = target.get(part) if isinstance(target, dict) else getattr(target, part)
    return target


def _plain(value: Any) -> Any:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def effective_config(config: Config, groups: Iterable[str], extra: Iterable[Opt] = ()) -> dict:
    """``{flag-name: value}`` for the flags of ``groups``; secret flags show ``******`` when set."""
    out: dict[str, Any] = {}
    for opt in [o for g in groups for o in GROUPS[g]] + list(extra):
        try:
            value = _value(config, opt.dest)
        except (AttributeError, KeyError):
            continue
        if opt.secret:
            value = MASK if value else ""
        out[opt.name] = _plain(value)
    return out


def render(config: Config, groups: Iterable[str], fmt: str = "yaml", extra: Iterable[Opt] = ()) -> str:
    data = effective_config(config, groups, extra)
    if fmt == "json":
        import json

        text = json.dumps(data, indent=2, sort_keys=True)
    else:
        text = yaml.safe_dump(data, sort_keys=True, default_flow_style=False)
    return logs.redact(text)
