"""Provider credentials in the Go tool's layouts, read from the environment of one endpoint.

``<P>_APPLICATION_CREDENTIALS_JSON`` names a JSON file; otherwise ``<P>_APPLICATION_CREDENTIALS``
names a directory that holds either a ``*.json`` file or one file per key (file name = key).
``P`` is prefixed with ``SECONDARY_`` or ``SOURCE_`` for those endpoints. Values are secrets:
nothing here logs them, and errors name files and keys, never contents.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # config imports the provider names from this package
    from ..config import StoreConfig


@dataclass
class Credentials:
    values: dict = field(default_factory=dict)
    #: Files whose modification should trigger a reload (hot rotation of secrets).
    sources: list[str] = field(default_factory=list)

    def get(self, key: str, default=None):
        return self.values.get(key, default)

    def fingerprint(self) -> tuple:
        """Changes when any source file changes; cheap enough to poll before each snapshot."""
        out: list[tuple[str, int | None, int | None]] = []
        for src in self.sources:
            try:
                st = os.stat(src)
                out.append((src, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((src, None, None))
        return tuple(out)


def load_credentials(config: "StoreConfig", stem: str) -> Credentials | None:
    """Load ``<prefix><stem>_APPLICATION_CREDENTIALS[_JSON]``; None when neither is set."""
    json_var = f"{config.env_prefix}{stem}_APPLICATION_CREDENTIALS_JSON"
    dir_var = f"{config.env_prefix}{stem}_APPLICATION_CREDENTIALS"
    json_path = os.environ.get(json_var)
    if json_path:
        return Credentials(read_json_file(json_path, json_var), [json_path])
    dir_path = os.environ.get(dir_var)
    if not dir_path:
        return None
    directory = Path(dir_path)
    if not directory.is_dir():
        raise ConfigError(f"{dir_var} must name a directory of credential files; {dir_path!r} is not one")
    json_files = sorted(directory.glob("*.json"))
    if json_files:
        return Credentials(read_json_file(str(json_files[0]), dir_var), [str(json_files[0])])
    values, sources = {}, []
    for entry in sorted(directory.iterdir()):
        # Kubernetes secret volumes add ..data links and dot-directories; only plain files are keys.
        if entry.name.startswith(".") or not entry.is_file():
            continue
        try:
            values[entry.name] = entry.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read credential file {entry} ({exc.strerror})") from None
        sources.append(str(entry))
    return Credentials(values, sources)


def read_json_file(path: str, var: str, what: str = "credentials file") -> dict:
    """The JSON object in ``path`` (named by the variable ``var``); errors never quote its contents."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{var}: cannot read {what} {path!r} ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{var}: {what} {path!r} is not valid JSON (line {getattr(exc, 'lineno', '?')})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{var}: {what} {path!r} must hold a JSON object")
    return data


def require(creds: Credentials, keys: list[str], what: str) -> None:
    missing = [k for k in keys if not creds.get(k)]
    if missing:
        raise ConfigError(f"{what} credentials lack {', '.join(missing)}")


def as_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "t", "yes")
