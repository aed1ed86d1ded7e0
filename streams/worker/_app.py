"""The Faust app of a worker: its topics and tables, and what runs in it.

Faust runs the consumer group, the tables and their recovery, the timers and the keyed stages' agent. The
session judge (`_judge.py`) reads `agent.events` and the stages' verdicts beneath Faust's per-event
machinery, through the seam's intake (`_seam.py`), and checkpoints its state and offsets on an interval.
The stages (`_stage_agent.py`) run in the worker unless `tripwire stages` runs them in a process of their
own. Timers (`_upkeep.py`) escalate unacknowledged kills, run the timed detectors, evict what is done and
follow the config file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import faust
import orjson

from agents_contract import Fence, FenceError, KafkaSecurity
from detectors import SessionState, wall_clock
from streams._config import Settings, command_signer, event_auth, internal_signer
from streams._kafka import changelog_topic
from streams.worker import _metrics as m
from streams.worker import _restore as restore
from streams.worker import _seam as seam
from streams.worker._fencing import FenceKeeper
from streams.worker._judge import SessionJudge
from streams.worker._pipeline import Departures, Pipeline, Retention
from streams.worker._readiness import Readiness
from streams.worker._stage_agent import StageAgent
from streams.worker._stages import StageJudge
from streams.worker._store import LiveStore
from streams.worker._upkeep import Upkeep, guarded
from streams.worker._watch import KillWatch

log = logging.getLogger("tripwire.worker")

_RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


def _broker_urls(bootstrap: str) -> list[str]:
    return [f"{seam.SCHEME}://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def faust_credentials(security: KafkaSecurity) -> Any:
    """The Faust form of the Kafka security settings (Faust hands them to its consumer, producer and admin
    client); None for PLAINTEXT."""
    if security.protocol == "PLAINTEXT":
        return None
    context = security.ssl_context() if security.protocol in ("SSL", "SASL_SSL") else None
    if security.protocol == "SSL":
        return faust.SSLCredentials(context)
    options = security.client_options()
    if security.sasl_mechanism == "OAUTHBEARER":
        return faust.OAuthCredentials(oauth_cb=options["sasl_oauth_token_provider"], ssl_context=context)
    return faust.SASLCredentials(
        username=options["sasl_plain_username"],
        password=options["sasl_plain_password"],
        ssl_context=context,
        mechanism=security.sasl_mechanism,
    )


def _datadir(app_id: str, process: int | None) -> Path:
    # Faust makes the app's own directory but not its parents; tables live in memory and their changelogs,
    # and the directory would otherwise be made in the working directory.
    parent = Path(tempfile.gettempdir()) / "tripwire-faust"
    parent.mkdir(parents=True, exist_ok=True)
    return parent / (app_id if process is None else f"{app_id}.{process}")


def _faust_app(settings: Settings, app_id: str, *, process: int | None) -> faust.App:
    conf, topics = settings.worker, settings.topics
    seam.register()
    restore.register()
    app = faust.App(
        app_id,
        broker=_broker_urls(settings.kafka.bootstrap),
        broker_client_id=settings.kafka.client_id,
        broker_credentials=faust_credentials(settings.kafka.security),
        store=f"{restore.SCHEME}://",
        datadir=str(_datadir(app_id, process)),
        web_enabled=False,
        topic_partitions=topics.partitions,
        topic_replication_factor=topics.replication,
        topic_disable_leader=True,
        # Kills go out the moment they are appended; everything else is appended in bulk and confirmed at
        # checkpoints, so it fills batches without waiting for a linger.
        producer_linger_ms=0,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=conf.rebalance_timeout_s,
        broker_session_timeout=conf.session_timeout_s,
        broker_heartbeat_interval=min(3.0, conf.session_timeout_s / 3),
        broker_request_timeout=max(90.0, conf.session_timeout_s * 2),
    )
    app.conf.tripwire_fetch_max_wait_ms = conf.fetch_max_wait_ms
    # For the tables' bulk restore, which reads their changelogs with a plain consumer of its own.
    app.conf.tripwire_bootstrap = settings.kafka.bootstrap
    app.conf.tripwire_kafka_options = {
        "client_id": f"{settings.kafka.client_id}-restore",
        **settings.kafka.security.client_options(),
    }
    instance = conf.instance_id
    if instance is not None and process is not None:
        instance = f"{instance}.{process}"
    app.conf.tripwire_group_instance_id = instance
    return app


def _raw_table(app: faust.App, name: str, partitions: int) -> Any:
    table: Any = app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes)
    table.key_serializer = table.value_serializer = "raw"
    return table


def _stages(app: faust.App, settings: Settings, app_id: str, output: seam.Output) -> StageAgent:
    """The keyed stages' table and agent in this app."""
    topics, conf = settings.topics, settings.worker
    table = _raw_table(app, "stages", topics.partitions)
    store: LiveStore[dict[str, Any]] = LiveStore(
        table, dict, orjson.loads, orjson.dumps, changelog_topic=changelog_topic(app_id, "stages")
    )
    agent = StageAgent(
        StageJudge(
            settings.detectors, command_signer(settings), wall_clock, internal=internal_signer(settings)
        ),
        store,
        output,
        topics,
    )
    stages_topic = app.topic(topics.stages, partitions=topics.partitions, **_RAW)

    @app.agent(stages_topic, name="stages")
    async def judge_stages(stream: Any) -> None:
        await agent.run(stream, batch_max=conf.batch_max, within_s=conf.batch_within_ms / 1000)

    async def expire_stage_keys() -> None:
        mine = {tp.partition for tp in app.consumer.assignment() if tp.topic == topics.stages}
        await agent.expire(mine, wall_clock())

    app.timer(interval=conf.timer_interval_s)(guarded("expire_stage_keys", expire_stage_keys))

    return agent


def build_stages_app(settings: Settings) -> faust.App:
    """`tripwire stages`: the keyed stages alone, in a consumer group of their own (`<app_id>-stages`), so
    their CPU is not the session judge's."""
    app_id = f"{settings.worker.app_id}-stages"
    app = _faust_app(settings, app_id, process=None)
    output = seam.Output(app, retry_max_s=settings.worker.act_retry_max_s)
    _stages(app, settings, app_id, output)
    return app


def build_app(
    settings: Settings, *, config_path: Path | None = None, process: int | None = None
) -> faust.App:
    conf, topics = settings.worker, settings.topics
    app = _faust_app(settings, conf.app_id, process=process)
    output = seam.Output(app, retry_max_s=conf.act_retry_max_s)
    # The judge reads the sessions' events and the keyed stages' verdicts about those sessions: both keyed by
    # session_id with the same partition count, so the group gives partition p of both to one worker. Faust
    # subscribes to them for this agent; the seam takes their records to the judge before Faust's streams.
    judged_topics = app.topic(topics.events, topics.verdicts, partitions=topics.partitions, **_RAW)
    intake = seam.Intake((topics.events, topics.verdicts), max_records=conf.intake_max_records)
    app.tripwire_intake = intake  # type: ignore[attr-defined]

    @app.agent(judged_topics, name="judge")
    async def judge_in_faust(stream: Any) -> None:
        async for _ in stream:
            # Faust would ack and commit this record before its state is checkpointed.
            log.critical("a judged topic's record reached a Faust stream: the seam is not in place; exiting")
            os._exit(70)

    signer = command_signer(settings)
    internal = internal_signer(settings)
    fence = Fence(settings.redis.url, ttl_s=settings.redis.fence_ttl_s)

    async def page(alert: Any) -> None:
        await output.deliver(
            [(topics.alerts, None, alert.session_id.encode(), alert.to_bytes(), None)], what="alert"
        )

    judge = SessionJudge(
        app=app,
        intake=intake,
        pipeline=Pipeline.from_settings(
            settings.detectors,
            signer,
            wall_clock,
            verdicts_topic=topics.verdicts,
            event_auth=event_auth(settings),
            internal=internal,
        ),
        store=LiveStore(
            _raw_table(app, "sessions", topics.partitions),
            SessionState,
            SessionState.from_bytes,
            SessionState.to_bytes,
            changelog_topic=changelog_topic(conf.app_id, "sessions"),
        ),
        output=output,
        fencing=FenceKeeper(
            fence,
            app_id=conf.app_id,
            redis_url=settings.redis.url,
            page=page,
            clock=wall_clock,
            signer=signer,
        ),
        watch=KillWatch(int(conf.kill_ack_timeout_s * 1000)),
        departures=Departures(
            Retention(
                ended_ms=int(conf.evict_ended_after_s * 1000),
                killed_ms=int(conf.evict_killed_after_s * 1000),
                idle_ms=int(conf.evict_idle_after_s * 1000),
            )
        ),
        conf=conf,
        topics=topics,
        internal=internal,
    )
    app.task(judge.run)
    stage_agent = _stages(app, settings, conf.app_id, output) if conf.stages == "in_worker" else None
    Upkeep(
        app=app,
        settings=settings,
        judge=judge,
        stage_judge=stage_agent.judge if stage_agent else None,
        output=output,
        fence=fence,
        config_path=config_path,
    ).install()

    if settings.sinks.in_worker:

        @app.task  # type: ignore[untyped-decorator]
        async def deliver_alerts() -> None:
            from streams.operator._sinks import run_sinks

            await run_sinks(settings)

    _follow_rebalances(app, judge, fence, settings)
    return app


def _follow_rebalances(app: faust.App, judge: SessionJudge, fence: Fence, settings: Settings) -> None:
    conf, topics = settings.worker, settings.topics
    readiness = Readiness(conf.recovery_timeout_s)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def rebalance_started(sender: Any, revoked: Any, **kwargs: Any) -> None:
        readiness.rebalancing()
        await judge.revoke({tp.partition for tp in revoked if tp.topic == topics.events})

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def announce_ready(sender: Any, **kwargs: Any) -> None:
        # Recovery is over: judge the partitions this worker now owns, and rebuild the kill watch from their
        # states.
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == topics.events}
        judge.owned = owned
        judge.watch.clear()
        rebuilds[0] += 1
        app.add_future(rebuild_watch(rebuilds[0], owned))
        # Ready once the streams are seeked and resumed (Faust does that right after this signal), not
        # before: a ready mark is a promise that this worker is judging.
        app.add_future(mark_ready())

    rebuilds = [0]

    async def rebuild_watch(generation: int, owned: set[int]) -> None:
        # The kill watch from the owned partitions' states, in slices while the judge already runs: decoding
        # 100,000 restored states holds the loop for about a second, and the restart's first kills must not
        # wait for it. A kill judged meanwhile is tracked by the judge; tracking it twice is harmless.
        # Restored states stay bytes (the judge decodes one when its session is heard from, the sweep the
        # rest): decoded, 100,000 of them are millions of objects for the cycle collector to trace.
        watch, store = judge.watch, judge.store
        for looked, (_, value) in enumerate(store.entries(), 1):
            if rebuilds[0] != generation:
                return  # another rebalance began; its own rebuild takes over
            state = store.peek(value) if isinstance(value, bytes) else value
            if state.partition in owned:
                watch.track(state)
            if looked % 2_000 == 0:
                await asyncio.sleep(0)
        m.UNACKED.set(len(watch))
        log.info("kill watch rebuilt: %d kills awaiting acknowledgement", len(watch))

    async def mark_ready() -> None:
        # Faust sets `completed` after the recovery ended and the streams were seeked.
        await app.tables.recovery.completed.wait()  # type: ignore[attr-defined]
        for partition, offset in seam.read_offsets(app, topics.events).items():
            if partition in judge.owned and judge.judged.get(partition, -1) < offset:
                judge.judged[partition] = offset
        readiness.ready()
        try:
            await asyncio.wait_for(fence.mark_worker_ready(conf.app_id, wall_clock()), timeout=5.0)
        except (FenceError, OSError, TimeoutError) as exc:
            log.error("could not record readiness in Redis (%r); judging all the same", exc)
        log.info("tripwire worker %s is judging events (rebalance complete)", conf.app_id)

    readiness.start()
