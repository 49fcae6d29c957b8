"""Structured logging: one event per line, a message plus key=value fields.

Text lines read ``<time> INFO: <message> key=value ...`` so that the sentences operators grep for
(see the dual-endpoint document) appear word for word; ``--log-format=json`` gives one JSON object
per line. Every registered secret is masked in the final line, whatever path it took to get there.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import warnings
from datetime import datetime, timezone
from typing import Any

LEVEL_NAMES = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARN", "ERROR": "ERROR", "CRITICAL": "FATAL"}
# logrus levels the Go tool's --log-level takes as numbers.
LOGRUS_LEVELS = {"0": "critical", "1": "critical", "2": "error", "3": "warning", "4": "info", "5": "debug",
                 "6": "debug"}
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
MASK = "******"

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Never print ``value``: masks it in every log line from now on."""
    if value and len(str(value)) >= 4:
        with _secrets_lock:
            _secrets.add(str(value))


def redact(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _fields(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _format_value(value) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        level = LEVEL_NAMES.get(record.levelname, record.levelname)
        line = f"{ts} {level}: {record.getMessage()}"
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_format_value(v)}" for k, v in fields.items())
        if record.exc_info and record.levelno <= logging.DEBUG:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": LEVEL_NAMES.get(record.levelname, record.levelname).lower(),
            "msg": record.getMessage(),
            "logger": record.name,
        }
        for k, v in _fields(record).items():
            event[k] = v if isinstance(v, (int, float, bool)) or v is None else str(v)
        return redact(json.dumps(event))


def parse_level(text: str) -> int:
    name = LOGRUS_LEVELS.get(str(text).strip(), str(text).strip()).upper()
    if name == "WARN":
        name = "WARNING"
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise ValueError("a level: debug, info, warning, error (or the Go tool's 0-6)")
    return level


def setup(level: str = "info", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    # Third-party libraries log request details (URLs with signatures, headers) at DEBUG.
    for noisy in ("botocore", "boto3", "urllib3", "azure", "google", "aiohttp.access", "grpc", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # google-auth warns while it probes for Application Default Credentials (the metadata server);
    # the store's own error says what is missing, so its guesses stay at debug.
    logging.getLogger("google.auth").setLevel(max(logging.ERROR, root.level) if root.level > logging.DEBUG
                                              else logging.DEBUG)
    warnings.showwarning = _warning_as_log_line


def _warning_as_log_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning (from an SDK: deprecations, credential hints) as one debug log line, never
    the two-line block Python prints on stderr before an error."""
    text = " ".join(str(message).split())
    logging.getLogger("py.warnings").debug(f"{category.__name__}: {text}",
                                           extra={"source": f"{filename}:{lineno}"})
