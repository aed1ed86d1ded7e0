"""Running a worker process: prepare the brokers, then hand the process to Faust's worker."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import faust
from prometheus_client import start_http_server

from streams._config import ConfigError, Settings
from streams.operator._cli import prepare
from streams.worker._app import build_app


def serve_metrics(settings: Settings, *, port: int | None = None, key: str = "worker.metrics_port") -> None:
    """The Prometheus endpoint, started before Faust so a taken port stops the process at once."""
    host = settings.worker.metrics_host
    port = settings.worker.metrics_port if key == "worker.metrics_port" else port
    if port is None:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot listen on {host}:{port}: {exc.strerror}") from None
    logging.getLogger("tripwire.worker").info("metrics on http://%s:%d/metrics", host, port)


def run_worker(settings: Settings, *, config_path: Path | None = None) -> int:
    level = settings.worker.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(prepare(settings))
    serve_metrics(settings)
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = build_app(settings, config_path=config_path)
    worker = faust.Worker(app, loglevel=level, quiet=True, override_logging=False)
    worker.execute_from_commandline()
    return 0
