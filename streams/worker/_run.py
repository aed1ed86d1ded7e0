"""Running worker processes: prepare the brokers, then hand each process to Faust's worker.

`tripwire worker --processes N` runs N worker processes of one consumer group on this host (Python runs
one core per process): this process prepares the brokers once, starts the N, restarts one that dies, and
stops them all on SIGTERM or SIGINT. Each serves its metrics on `worker.metrics_port + i`. `tripwire
stages` runs the keyed stages alone, in a group of their own, for a worker with `worker.stages:
own_process`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faust
from prometheus_client import start_http_server

from agents_contract import Fence
from streams._config import ConfigError, Settings
from streams._kafka import ensure_topics, topic_specs, wait_for_broker
from streams.worker._collector import settle_startup

log = logging.getLogger("tripwire.worker")


async def prepare(settings: Settings) -> None:
    """Wait for Kafka and Redis, then create the topics: what a worker does before it joins the group."""
    await wait_for_broker(settings.kafka.bootstrap, security=settings.kafka.security)
    fence = Fence(settings.redis.url)
    try:
        await fence.ping()
    except Exception as exc:
        raise ConfigError(f"redis.url: cannot reach {settings.redis.url}: {exc}") from None
    finally:
        await fence.close()
    for outcome in await ensure_topics(
        settings.kafka.bootstrap, topic_specs(settings), security=settings.kafka.security
    ):
        logging.getLogger("tripwire.topics").info(
            "topic %s: %s (%d partitions)",
            outcome.spec.name,
            "created" if outcome.created else "exists",
            outcome.partitions,
        )


def serve_metrics(settings: Settings, *, port: int | None = None, key: str = "worker.metrics_port") -> None:
    """The Prometheus endpoint, started before Faust so a taken port stops the process at once."""
    host = settings.worker.metrics_host
    port = settings.worker.metrics_port if key == "worker.metrics_port" and port is None else port
    if port is None:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot listen on {host}:{port}: {exc.strerror}") from None
    log.info("metrics on http://%s:%d/metrics", host, port)


def _logging(settings: Settings) -> str:
    level = settings.worker.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return level


def run_worker(
    settings: Settings, *, config_path: Path | None = None, processes: int = 1, process: int | None = None
) -> int:
    from streams.worker._app import build_app

    level = _logging(settings)
    if processes > 1:
        return _supervise(settings, config_path, processes)
    if process is None:
        asyncio.run(prepare(settings))
        serve_metrics(settings)
    else:
        base = settings.worker.metrics_port
        serve_metrics(settings, port=None if base is None else base + process)
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = build_app(settings, config_path=config_path, process=process)
    settle_startup()
    faust.Worker(app, loglevel=level, quiet=True, override_logging=False).execute_from_commandline()
    return 0


def run_stages(settings: Settings) -> int:
    from streams.worker._app import build_stages_app

    level = _logging(settings)
    if settings.worker.stages != "own_process":
        log.warning(
            "worker.stages is %r: the workers run the stages too, and both would judge them (set it to "
            "own_process for the workers and this process alike)",
            settings.worker.stages,
        )
    asyncio.run(prepare(settings))
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = build_stages_app(settings)
    settle_startup()
    faust.Worker(app, loglevel=level, quiet=True, override_logging=False).execute_from_commandline()
    return 0


def _supervise(settings: Settings, config_path: Path | None, processes: int) -> int:
    if config_path is None:
        raise ConfigError("worker --processes: needs --config FILE (every process reads the same file)")
    asyncio.run(prepare(settings))
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def start(i: int) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "streams",
            "worker",
            "--config",
            str(config_path),
            "--process",
            str(i),
        ]
        return subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    children = {i: start(i) for i in range(processes)}
    log.warning(
        "started %d worker processes: %s", processes, ", ".join(str(c.pid) for c in children.values())
    )
    restarts: dict[int, list[float]] = {i: [] for i in children}
    while not stopping:
        time.sleep(0.2)
        for i, child in list(children.items()):
            code = child.poll()
            if code is None or stopping:
                continue
            now = time.monotonic()
            recent = [t for t in restarts[i] if now - t < 60] + [now]
            restarts[i] = recent
            if len(recent) > 5:
                log.critical("worker process %d exited %d times within a minute; stopping", i, len(recent))
                stopping = True
                break
            log.error("worker process %d (pid %d) exited with %s; starting it again", i, child.pid, code)
            children[i] = start(i)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0
