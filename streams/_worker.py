"""Running a worker process: prepare the brokers, then hand the process to Faust's worker."""

from __future__ import annotations

import asyncio
import logging

import faust

from streams._app import build_app
from streams._cli import prepare
from streams._config import Settings


def run_worker(settings: Settings) -> int:
    level = settings.worker.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(prepare(settings))
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = build_app(settings)
    worker = faust.Worker(app, loglevel=level, quiet=True, override_logging=False)
    worker.execute_from_commandline()
    return 0
