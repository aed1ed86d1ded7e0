"""The simplest sink: one JSON line per alert on a text stream, for log pipelines and local runs."""

from __future__ import annotations

import sys
from typing import TextIO

from sinks._alert import Alert


class StdoutSink:
    def __init__(self, stream: TextIO | None = None, *, name: str = "stdout") -> None:
        self.name = name
        self._stream = stream

    async def deliver(self, alert: Alert) -> None:
        stream = self._stream or sys.stdout
        stream.write(alert.to_bytes().decode() + "\n")
        stream.flush()
