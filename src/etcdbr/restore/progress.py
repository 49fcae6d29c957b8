"""Progress of a restore: a tqdm bar for people at a terminal, plain INFO lines for log readers."""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("etcdbr.restore")


class Progress:
    def __init__(self, interactive: bool | None = None) -> None:
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar: Any = None  # a tqdm bar on a terminal

    def info(self, message: str, **fields) -> None:
        if self._bar is not None:
            self._bar.clear()
        log.info(message, extra=fields)
        if self._bar is not None:
            self._bar.refresh()

    def start_bytes(self, description: str, total: int | None) -> None:
        if self.interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                             file=sys.stderr, leave=False)

    def add_bytes(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def start_deltas(self, total: int) -> None:
        self.close()
        if self.interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="applying deltas", unit="delta", file=sys.stderr, leave=False)

    def delta_done(self, index: int, total: int, **fields) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(revision=fields.get("revision"), refresh=False)
        else:
            log.info(f"applying deltas {index}/{total}", extra=fields)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
