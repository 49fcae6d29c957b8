"""The flags of :mod:`.flags` as click options, the config file, and the Config they resolve to.

click does the parsing. Each flag is a :class:`FlagOption`: its type (:mod:`.types`) converts the
value, ``envvar`` gives the environment fallback, and ``--config-file`` (eager, so it is read
before any other flag) fills click's ``default_map``. That is click's own precedence, and ours:
**flag > environment > config file > default**, the default being the field's in
:mod:`etcdbr.config`. A bad value from any of these is one line naming the flag (or the variable,
or the file's key) and what it expects, exit 2. :func:`resolve` then copies the parsed values into
a :class:`Config` and records where each came from (``config.extra["origins"]``), which the
configuration rules and the member-identity messages quote.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Callable

import click
from click.core import ParameterSource

from ..config import Config, format_duration, read_yaml_mapping
from ..errors import ConfigError
from .flags import COMPAT_IGNORED, GROUPS, TITLES, Opt

__all__ = ["COMPAT_IGNORED", "GROUPS", "FlagCommand", "FlagError", "FlagGroup", "FlagOption", "Opt", "add_options",
           "read_config_file", "resolve", "secret_values"]


class FlagError(click.UsageError):
    """A bad flag, environment variable or config-file value: one line, exit 2, no usage block."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=file is None)


class FlagOption(click.Option):
    """A click option built from an :class:`Opt`. Booleans take pflag's forms (``--flag``,
    ``--flag=true``, ``--flag=false``); a repeatable flag also splits each value at commas."""

    def __init__(self, param_decls=None, *, spec: Opt, section: str | None) -> None:
        names = [f"--{spec.name}", *(f"--{a}" for a in spec.aliases)]
        if spec.short:
            names.insert(0, f"-{spec.short}")
        kwargs: dict[str, Any] = {"type": spec.type, "help": spec.help, "multiple": spec.multiple,
                                  "envvar": list(spec.env) or None, "show_envvar": True, "show_default": False,
                                  "hidden": spec.compat and not spec.help, "default": spec.default}
        if spec.is_bool:
            kwargs.update(is_flag=False, flag_value=True)  # a bare --flag means true
        super().__init__([*names, spec.param], **kwargs)
        self.spec = spec
        #: the --help section; None: the command's own flags
        self.section = section

    def type_cast_value(self, ctx: click.Context, value: Any) -> Any:
        if not self.multiple:
            return super().type_cast_value(ctx, value)
        items = [value] if isinstance(value, str) else list(value or ())
        return [self.type(part.strip(), self, ctx) for item in items for part in str(item).split(",") if part.strip()]

    def consume_value(self, ctx: click.Context, opts: Mapping[str, Any]) -> tuple[Any, ParameterSource]:
        """A value the Go tool's config file pins wins over the flag and its environment variable."""
        value, source = super().consume_value(ctx, opts)
        state = _file_state(ctx)
        if self.name in state["pinned"] and source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            where = f"--{self.spec.name}" if source is ParameterSource.COMMANDLINE else "its environment variable"
            state["overridden"].append(f"{where} (set by {state['keys'][self.name]!r} in --config-file)")
            return state["pinned"][self.name], ParameterSource.DEFAULT_MAP
        return value, source

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        try:
            return super().process_value(ctx, value)
        except click.BadParameter as exc:
            if exc.param not in (None, self):
                raise
            shown = "******" if self.spec.secret else (
                ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
            raise FlagError(f"invalid value {shown!r} for {origin(ctx, self.spec)}: expected {exc.message}",
                            ctx=ctx) from None

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        shown = _default_text(self.spec.default)
        if shown:
            extra["default"] = shown
        return extra


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def origin(ctx: click.Context, spec: Opt) -> str:
    """Where the value of ``spec`` came from, as error messages name it."""
    source = ctx.get_parameter_source(spec.param)
    if source is ParameterSource.ENVIRONMENT:
        var = next((e for e in spec.env if os.environ.get(e)), spec.env[0] if spec.env else "?")
        return f"environment variable {var}"
    if source is ParameterSource.DEFAULT_MAP:
        return f"{_file_state(ctx)['keys'].get(spec.param, spec.name)!r} in --config-file"
    if source is ParameterSource.DEFAULT or source is None:
        return "default"
    return f"--{spec.name}"


# -- the config file -----------------------------------------------------------------------------
class ConfigFileValues(dict):
    """A config file's flag values by flag name (or alias). ``paths``: the file's own key for each,
    as errors name it; ``wins``: the file's values win over flags and environment (the Go tool's
    format, whose server takes its configuration from the file alone)."""

    def __init__(self, values: Mapping[str, Any], paths: Mapping[str, str] | None = None, wins: bool = False,
                 ignored: list[str] | None = None):
        super().__init__(values)
        self.paths = dict(paths or {})
        self.wins = wins
        #: keys of the file that set nothing (the Go tool ignores them too)
        self.ignored = list(ignored or [])


def read_config_file(path: str) -> dict[str, Any]:
    """The flag values a ``--config-file`` gives, keyed by flag name or alias (no dashes).

    The one place that knows the file's formats: this tool's (a YAML mapping of flag names to
    values) and the Go tool's nested one (:mod:`.goconfig`), handed on as flag names."""
    from . import goconfig

    data = read_yaml_mapping(path, unreadable="--config-file: cannot read {path!r} ({reason})",
                             invalid="--config-file: {path!r} is not valid YAML{where}",
                             not_mapping="--config-file: {path!r} must be a mapping of flag names to values")
    if goconfig.is_go_format(data):
        values, paths, ignored = goconfig.flatten(data)
        return ConfigFileValues(values, paths, wins=True, ignored=ignored)
    return {str(k).lstrip("-"): v for k, v in data.items()}


def _file_state(ctx: click.Context) -> dict:
    """What this command's --config-file gave: which key set each parameter, and the Go tool's
    ignored flags the command has no option for."""
    return ctx.meta.setdefault("etcdbr.config-file", {}).setdefault(
        ctx.command_path, {"keys": {}, "compat": {}, "pinned": {}, "overridden": [], "ignored": []})


def _load_config_file(ctx: click.Context, _param: click.Parameter, path: str | None) -> str | None:
    """``--config-file``'s callback: its values become click's default_map for this command."""
    if not path:
        return path
    try:
        values = read_config_file(path)
    except ConfigError as exc:
        raise FlagError(str(exc), ctx=ctx) from None
    by_key = {key: p for p in ctx.command.params if isinstance(p, FlagOption)
              for key in (p.spec.name, *p.spec.aliases)}
    paths = getattr(values, "paths", {})
    wins = getattr(values, "wins", False)
    ignored = getattr(values, "ignored", [])
    if wins:
        # The Go tool's file configures its server; another command takes what it has flags for.
        values = {k: v for k, v in values.items() if k in by_key or k in COMPAT_IGNORED}
    unknown = sorted(k for k in values if k not in by_key and k not in COMPAT_IGNORED)
    if unknown:
        raise FlagError(f"--config-file: unknown key {unknown[0]!r} for this command", ctx=ctx)
    state = _file_state(ctx)
    state["ignored"] = ignored
    defaults = dict(ctx.default_map or {})
    for key, value in values.items():
        option = by_key.get(key)
        if value is None:  # a key without a value leaves the flag unset
            continue
        if option is None:
            state["compat"][key] = value
        elif option.name not in state["keys"] or key == option.spec.name:
            defaults[option.name] = value  # the flag's own name wins over an alias
            state["keys"][option.name] = paths.get(key, key)
            if wins:
                state["pinned"][option.name] = value
    ctx.default_map = defaults
    return path


def _config_file_option(fn: Callable) -> Callable:
    return click.option("--config-file", "config_file", default=None, metavar="PATH", is_eager=True,
                        callback=_load_config_file,
                        help="YAML file of flag values keyed by flag name or alias (flags and environment win).")(fn)


def add_options(*groups: str, extra: list[Opt] | None = None) -> Callable:
    """Decorate a click command with the flags of ``groups``, its own ``extra`` flags and
    ``--config-file``. Every command takes the logging flags."""
    groups = tuple(dict.fromkeys((*groups, "logging")))

    def decorate(fn):
        sections = [(None, o) for o in extra or []] + [(TITLES[g], o) for g in groups for o in GROUPS[g]]
        for section, spec in reversed(sections):
            fn = click.option(cls=FlagOption, spec=spec, section=section)(fn)
        return _config_file_option(fn)

    return decorate


# -- grouped --help ------------------------------------------------------------------------------
class _GroupedHelp:
    """``--help`` with one section per flag group; each flag shows its type or choices, its
    default and its environment variable."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list] = {}
        general = []
        for param in self.get_params(ctx):  # type: ignore[attr-defined]  # a mixin of click.Command
            record = param.get_help_record(ctx)
            if record is None or isinstance(param, click.Argument):
                continue
            if not isinstance(param, FlagOption):
                general.append(record)
                continue
            title = param.section or (ctx.command.name or "command").capitalize()
            sections.setdefault(title, []).append(record)
        for title, rows in [*sections.items(), ("", general)]:
            if rows:
                with formatter.section(f"{title} options" if title else "Options"):
                    formatter.write_dl(rows)


class FlagCommand(_GroupedHelp, click.Command):
    pass


class FlagGroup(_GroupedHelp, click.Group):
    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_options(ctx, formatter)
        self.format_commands(ctx, formatter)


# -- Config --------------------------------------------------------------------------------------
def _set(config: Config, dest: str, value: Any) -> None:
    target: Any = config
    *path, attr = dest.split(".")
    for p in path:
        target = getattr(target, p)
    if isinstance(target, dict):
        target[attr] = value
    else:
        setattr(target, attr, value)


def resolve(source: click.Context | Mapping, *groups: str, extra: list[Opt] | None = None) -> Config:
    """The Config of the flags of ``groups`` and ``extra``, from a parsed click context (or a
    mapping of parameter names to parsed values: a parameter missing from it takes its default,
    and a value equal to the default counts as the default)."""
    ctx = source if isinstance(source, click.Context) else None
    params: Mapping = source.params if isinstance(source, click.Context) else source
    config = Config()
    origins = config.extra.setdefault("origins", {})  # flag name -> where its value came from
    compat = dict(_file_state(ctx)["compat"]) if ctx is not None else {}
    # flags and variables the Go tool's config file overrode (command_runner logs them)
    config.extra["overridden"] = list(_file_state(ctx)["overridden"]) if ctx is not None else []
    config.extra["file_ignored"] = list(_file_state(ctx)["ignored"]) if ctx is not None else []
    for spec in [o for g in groups for o in GROUPS[g]] + (extra or []):
        value = params.get(spec.param)
        if spec.compat:
            if value is not None:
                compat[spec.name] = value
            continue
        if value is None:
            value, where = spec.default, "default"
        elif ctx is not None:
            where = origin(ctx, spec)
        else:
            where = "default" if value == spec.default else f"--{spec.name}"
        origins[spec.name] = where
        _set(config, spec.dest, value)
    # The Go tool's ignored flags: their values are still checked as the Go tool checks them.
    config.extra["compat"] = compat
    return config


def secret_values(config: Config) -> list[str]:
    """Every secret the configuration carries (for log masking and /config redaction)."""
    return [config.etcd.password] if config.etcd.password else []
