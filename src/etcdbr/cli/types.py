"""click parameter types for the value syntaxes of this tool's flags.

Each type converts text from a flag, an environment variable or the config file (where YAML may
already have made it a number, a boolean or a list) and accepts a value that is already of its
type. A value it refuses fails with what was *expected* ("an integer > 0", "a duration such as
30s"); :class:`etcdbr.cli.options.FlagOption` turns that into the one error line naming the flag
and where the value came from. The syntaxes themselves live in :mod:`etcdbr.config`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable

import click

from ..config import (
    PROVIDERS,
    UNSUPPORTED_PROVIDERS,
    parse_bool,
    parse_cron,
    parse_duration,
    parse_int,
    parse_time,
    parse_url,
)


def _read(param_type: click.ParamType, parse: Callable[[str], Any], value: Any, param, ctx) -> Any:
    """``parse(value)``; its ValueError (what was expected) becomes click's failure."""
    try:
        return parse(str(value))
    except ValueError as exc:
        param_type.fail(str(exc), param, ctx)


class Text(click.ParamType):
    name = "text"

    def convert(self, value: Any, param, ctx) -> str:
        return value if isinstance(value, str) else str(value)


class Path(Text):
    """A file or directory path, kept as text (whether it must exist is the command's business)."""

    name = "path"


class Bool(click.types.BoolParamType):
    """pflag's booleans: ``1 t T true TRUE True`` and ``0 f F false FALSE False``. A bare
    ``--flag`` means true (the option's flag value)."""

    def convert(self, value: Any, param, ctx) -> bool:
        return value if isinstance(value, bool) else _read(self, parse_bool, value, param, ctx)

    def get_metavar(self, param, ctx) -> str:
        return "[true|false]"


class Syntax(click.ParamType):
    """Text read by one of :mod:`etcdbr.config`'s syntax functions (``parse``), whose
    :class:`ValueError` says what was expected."""

    parse: Callable[[str], Any]

    def convert(self, value: Any, param, ctx) -> Any:
        return _read(self, type(self).parse, value, param, ctx)


class Cron(Syntax):
    """A standard 5-field cron expression, validated and kept as text."""

    name = "cron"
    parse = staticmethod(parse_cron)


class Timestamp(Syntax):
    """An RFC 3339 time with its zone; kept as an aware datetime."""

    name = "rfc3339"
    parse = staticmethod(parse_time)

    def convert(self, value: Any, param, ctx) -> Any:
        from datetime import datetime

        if isinstance(value, datetime):  # YAML reads an unquoted timestamp itself
            if value.tzinfo is None:
                self.fail("an RFC 3339 time with a zone, such as 2026-12-05T14:02:00Z", param, ctx)
            return value
        return super().convert(value, param, ctx)


class Url(Syntax):
    """A URL with a scheme and a host; empty means unset."""

    name = "url"
    parse = staticmethod(parse_url)


class Duration(Syntax):
    """Go's ``time.ParseDuration`` syntax (``300ms``, ``1h30m``, ``0``) as a :class:`timedelta`,
    optionally bounded below (``minimum``, exclusive unless ``inclusive``)."""

    name = "duration"
    parse = staticmethod(parse_duration)

    def __init__(self, minimum: timedelta | None = None, *, inclusive: bool = False, expect: str = "") -> None:
        self.minimum = minimum
        self.inclusive = inclusive
        op = ">=" if inclusive else ">"
        self.expect = expect or (f"a duration {op} {_seconds(minimum)} such as 30s or 5m" if minimum is not None
                                 else "")

    def convert(self, value: Any, param, ctx) -> timedelta:
        d = value if isinstance(value, timedelta) else super().convert(value, param, ctx)
        if self.minimum is not None and (d < self.minimum or (d == self.minimum and not self.inclusive)):
            self.fail(self.expect, param, ctx)
        return d


def _seconds(d: timedelta | None) -> str:
    return "0" if not d else f"{d.total_seconds():g}s"


class Integer(click.IntRange):
    """An integer, optionally within ``[minimum, maximum]``; ``expect`` says what a value out of
    range should have been. Help shows ``INTEGER RANGE`` and the range (``x>=1``)."""

    def __init__(self, minimum: int | None = None, maximum: int | None = None, *, expect: str = "") -> None:
        super().__init__(min=minimum, max=maximum)
        if minimum is None and maximum is None:
            self.name = "integer"
        self.expect = expect

    def convert(self, value: Any, param, ctx) -> int:
        integer = isinstance(value, int) and not isinstance(value, bool)
        number = value if integer else _read(self, parse_int, value, param, ctx)
        if (self.min is not None and number < self.min) or (self.max is not None and number > self.max):
            self.fail(self.expect, param, ctx)
        return number

    def _describe_range(self) -> str:
        return "" if self.min is None and self.max is None else super()._describe_range()


def positive() -> Integer:
    return Integer(1, expect="an integer > 0")


def non_negative() -> Integer:
    return Integer(0, expect="an integer >= 0")


class ByteSize(Integer):
    """A size in bytes (an integer, as the Go tool takes it), with a minimum."""

    name = "bytes"

    def __init__(self, minimum: int, *, expect: str = "") -> None:
        super().__init__(minimum, expect=expect or f"a size in bytes >= {minimum}")


class Fraction(click.FloatRange):
    """A share between 0 and 1."""

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)

    def convert(self, value: Any, param, ctx) -> float:
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            share = float(value)
        except (TypeError, ValueError):
            self.fail("a number between 0 and 1", param, ctx)
        if not 0 <= share <= 1:
            self.fail("a number between 0 and 1", param, ctx)
        return share


class Choice(click.Choice):
    """One of fixed words, case-sensitive as the Go tool compares them."""

    def __init__(self, *choices: str) -> None:
        super().__init__(choices, case_sensitive=True)

    def convert(self, value: Any, param, ctx) -> str:
        text = value if isinstance(value, str) else str(value)
        if text not in self.choices:
            self.fail(self.expected(text), param, ctx)
        return text

    def expected(self, text: str) -> str:
        return "one of " + ", ".join(self.choices)


class Provider(Choice):
    """A storage provider; empty means Local. Providers of the Go tool this tool does not
    support are named as such."""

    def __init__(self) -> None:
        super().__init__(*PROVIDERS)

    def convert(self, value: Any, param, ctx) -> str:
        text = str(value).strip()
        return super().convert(text, param, ctx) if text else ""

    def expected(self, text: str) -> str:
        why = f"{text} is not supported by this tool" if text in UNSUPPORTED_PROVIDERS else "case-sensitive"
        return f"one of {', '.join(PROVIDERS)} ({why})"


class LogLevel(click.ParamType):
    """A level name (debug, info, warning, error, ...) or the Go tool's logrus number 0-6; kept as
    given (``logs.setup`` maps it)."""

    name = "level"

    def convert(self, value: Any, param, ctx) -> str:
        from ..logs import parse_level

        text = value if isinstance(value, str) else str(value)
        try:
            parse_level(text)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return text

    def get_metavar(self, param, ctx) -> str:
        return "[debug|info|warning|error|0-6]"
