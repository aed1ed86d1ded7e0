"""`tripwire`: the command line for operators and first-time users.

tripwire demo [--json] [--bootstrap HOST:PORT --redis URL]   the whole loop on embedded servers
tripwire worker --config FILE [--processes N]               run a worker (creates topics first)
tripwire stages --config FILE                               the keyed stages in a process of their own
tripwire topics create --config FILE                        create every topic, idempotently
tripwire config check FILE                                  validate a config file, explain errors
tripwire sinks --config FILE                                deliver alerts to the configured sinks
tripwire kill SESSION --reason TEXT [--config FILE]         kill a session by hand (signed, fenced, alerted)
tripwire incidents list [--json] | show ID [--markdown]     incidents from the alert log
tripwire release SESSION [--config FILE]                    clear a session's fence
tripwire tail control|alerts|dlq [--config FILE] [-f]       print a topic as JSON lines
tripwire replay FILE.jsonl [--config FILE] [--json]         the detectors over recorded events, offline
                 [--expect LABELS.json]                     ... scored against labels: recall, false kills
tripwire calibrate FILE.jsonl                               per-agent ceilings proposed from healthy runs
tripwire scenarios DIR [--variant N]                        the scenario library as a recording and labels
tripwire inventory [--config FILE] [--markdown]              which failure categories the config would catch
tripwire schema                                             the wire contract as JSON Schema
tripwire keygen                                             an Ed25519 key pair for signing commands
tripwire bench [--bootstrap ... --redis ...] [--json]       throughput and kill latency
tripwire up [--foreground] | down                           a local stack to develop against
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import orjson

from agents_contract import contract_json_schema
from agents_contract._commands import generate_keypair
from detectors import FailureClass
from streams._config import ConfigError, Settings, load_settings, redacted_url
from streams._kafka import ensure_topics, topic_specs, wait_for_broker


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tripwire", description="Runtime guardrail for multi-agent LLM systems."
    )
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("schema", help="print the wire contract as JSON Schema")
    p.set_defaults(run=_schema)

    p = sub.add_parser("keygen", help="a new Ed25519 key pair for signing commands")
    p.set_defaults(run=_keygen)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(metavar="ACTION")
    c = csub.add_parser("check", help="validate a config file and explain every error by key")
    c.add_argument("file", type=Path)
    c.set_defaults(run=_config_check)

    p = sub.add_parser("topics", help="topic administration")
    tsub = p.add_subparsers(metavar="ACTION")
    t = tsub.add_parser("create", help="create every Tripwire topic that does not exist")
    t.add_argument("--config", type=Path)
    t.set_defaults(run=_topics_create)

    p = sub.add_parser("replay", help="run the detectors over recorded events (one JSON event per line)")
    p.add_argument("file", type=Path)
    p.add_argument("--config", type=Path, help="a worker config file; only its `detectors` section is read")
    p.add_argument("--json", action="store_true", help="one JSON verdict per line, then a summary line")
    p.add_argument(
        "--horizon-s",
        type=float,
        default=0.0,
        help="let the clock run this long past the last event, so quiet sessions meet their timers",
    )
    p.add_argument(
        "--expect",
        type=Path,
        help='a JSON object of session id -> "kill" or "none": score the config (recall, false kills)',
    )
    p.set_defaults(run=_replay)

    p = sub.add_parser("calibrate", help="propose per-agent ceilings from recorded healthy runs")
    p.add_argument("file", type=Path, help="recorded events of healthy sessions, one JSON event per line")
    p.add_argument("--min-sessions", type=int, default=20, help="fewer sessions of an agent: no proposal")
    p.set_defaults(run=_calibrate)

    p = sub.add_parser("inventory", help="which failure categories this config would catch, and which not")
    p.add_argument(
        "--config", type=Path, default=None, help="a worker config file; only its `detectors` section is read"
    )
    p.add_argument("--markdown", action="store_true", help="a Markdown checklist instead of text")
    p.set_defaults(run=_inventory)

    p = sub.add_parser("scenarios", help="write the scenario library as a recording, its labels and config")
    p.add_argument("directory", type=Path)
    p.add_argument("--variant", type=int, default=None, help="another seeded variant of the patterns")
    p.set_defaults(run=_scenarios)

    p = sub.add_parser("worker", help="run a stream worker")
    p.add_argument("--config", type=Path)
    p.add_argument(
        "--processes", type=int, default=1, help="worker processes of one group on this host (one core each)"
    )
    # Set by `--processes` for each process it starts.
    p.add_argument("--process", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(run=_worker)

    p = sub.add_parser("stages", help="run the keyed stages in a process of their own")
    p.add_argument("--config", type=Path)
    p.set_defaults(run=_stages)

    p = sub.add_parser("sinks", help="deliver alerts to the configured paging sinks")
    p.add_argument("--config", type=Path)
    p.set_defaults(run=_sinks)

    p = sub.add_parser("kill", help="kill a session by hand, through the same signed path as the detectors")
    p.add_argument("session", help="the session_id to kill")
    p.add_argument("--reason", required=True, help="why; the agent and the alert carry it")
    p.add_argument(
        "--failure-class",
        choices=[c.value for c in FailureClass],
        default=FailureClass.RUNAWAY_EXECUTION.value,
        help="the incident's class in the failure taxonomy",
    )
    p.add_argument("--config", type=Path)
    p.set_defaults(run=_kill)

    p = sub.add_parser("incidents", help="incidents from the alert log")
    isub = p.add_subparsers(metavar="ACTION")
    i = isub.add_parser("list", help="every incident, oldest first")
    i.add_argument("--config", type=Path)
    i.add_argument("--json", action="store_true", help="one JSON object per line")
    i.set_defaults(run=_incidents_list)
    i = isub.add_parser("show", help="one incident with its timeline")
    i.add_argument("incident_id")
    i.add_argument("--config", type=Path)
    i.add_argument("--markdown", action="store_true", help="a postmortem draft to paste")
    i.set_defaults(run=_incidents_show)

    p = sub.add_parser("release", help="clear a session's fence so an agent may attach to it again")
    p.add_argument("session")
    p.add_argument("--config", type=Path)
    p.set_defaults(run=_release)

    p = sub.add_parser("tail", help="print a Tripwire topic as JSON lines (from the beginning)")
    p.add_argument("topic", choices=["control", "alerts", "dlq"])
    p.add_argument("--config", type=Path)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    p.set_defaults(run=_tail)

    p = sub.add_parser("demo", help="run simulated agents against a worker, on embedded servers by default")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object with the results")
    p.add_argument("--bootstrap", help="use this Kafka instead of the embedded broker")
    p.add_argument("--redis", help="use this Redis URL instead of the embedded Valkey")
    p.set_defaults(run=_demo)

    p = sub.add_parser(
        "up", help="start a local stack (embedded broker, Valkey, a worker) and keep it running"
    )
    p.add_argument("--foreground", action="store_true", help="run in this terminal until Ctrl-C")
    p.set_defaults(run=lambda args: _up().run_up(foreground=args.foreground))
    p = sub.add_parser("down", help="stop the local stack `tripwire up` started")
    p.set_defaults(run=lambda args: _up().run_down())

    p = sub.add_parser("bench", help="measure throughput and kill latency")
    p.add_argument("--bootstrap", help="use this Kafka instead of the embedded broker")
    p.add_argument("--redis", help="use this Redis URL instead of the embedded Valkey")
    p.add_argument("--events", type=int, default=100_000, help="events in the throughput run")
    p.add_argument("--kills", type=int, default=200, help="kills timed under background load")
    p.add_argument(
        "--background-rate", type=int, default=10_000, help="background events/s during kill timing"
    )
    p.add_argument("--flood", type=int, default=100_000, help="malformed records in the flood round")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_bench)
    return parser


def _up() -> Any:
    from streams.operator import _up

    return _up


def _schema(args: argparse.Namespace) -> int:
    sys.stdout.write(orjson.dumps(contract_json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    private, public = generate_keypair()
    print(f"TRIPWIRE_COMMANDS__PRIVATE_KEY={private}   # workers only (commands.private_key)")
    print(f"verify_key={public}   # agents: AgentGuard(verify_key=...); public, safe to ship")
    return 0


def _config_check(args: argparse.Namespace) -> int:
    settings = load_settings(args.file)
    d, t = settings.detectors, settings.topics
    print(f"{args.file}: valid")
    print(
        f"  kafka {settings.kafka.bootstrap} ({settings.kafka.security.describe()}), "
        f"redis {redacted_url(settings.redis.url)}"
    )
    print(
        f"  topics {t.events} / {t.control} / {t.alerts} / {t.dlq}: "
        f"{t.partitions} partitions, replication {t.replication}"
    )
    b = d.session_budget
    print(
        f"  session budget ({b.mode}): steps {b.max_steps}, tokens {b.max_tokens}, cost USD {b.max_cost_usd}"
    )
    sections = [
        name
        for name in type(d).model_fields
        if name not in ("allowed_lateness_ms", "intake", "tenants", "agents")
    ]
    modes = {name: getattr(d, name).mode for name in sections if getattr(d, name).enabled}
    off = [name for name in sections if not getattr(d, name).enabled]
    print("  detectors: " + ", ".join(f"{name} ({mode})" for name, mode in modes.items()))
    if off:
        print("  switched off: " + ", ".join(off))
    if d.tenants or d.agents:
        print(f"  overrides: tenants {sorted(d.tenants)}, agents {sorted(d.agents)}")
    return 0


def _topics_create(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    outcomes = asyncio.run(_create(settings))
    for o in outcomes:
        state = "created" if o.created else "exists"
        print(f"{o.spec.name}: {state}, {o.partitions} partitions")
    return 0


async def _create(settings: Settings) -> list:  # type: ignore[type-arg]
    await wait_for_broker(settings.kafka.bootstrap, security=settings.kafka.security)
    return await ensure_topics(
        settings.kafka.bootstrap, topic_specs(settings), security=settings.kafka.security
    )


def _worker(args: argparse.Namespace) -> int:
    from streams.worker._run import run_worker

    if args.processes < 1:
        raise ConfigError(f"--processes: {args.processes} is not allowed; at least 1")
    return run_worker(
        load_settings(args.config), config_path=args.config, processes=args.processes, process=args.process
    )


def _stages(args: argparse.Namespace) -> int:
    from streams.worker._run import run_stages

    return run_stages(load_settings(args.config))


def _sinks(args: argparse.Namespace) -> int:
    from streams.operator._sinks import run_sinks
    from streams.worker._run import prepare, serve_metrics

    settings = load_settings(args.config)
    logging.basicConfig(
        level=settings.worker.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(prepare(settings))
    serve_metrics(settings, port=settings.sinks.metrics_port, key="sinks.metrics_port")
    asyncio.run(run_sinks(settings))
    return 0


def _kill(args: argparse.Namespace) -> int:
    from streams.operator._operator import manual_kill

    settings = load_settings(args.config)
    command, issued = asyncio.run(
        manual_kill(settings, args.session, args.reason, FailureClass(args.failure_class))
    )
    if issued:
        print(f"killed session {args.session}: {command.command_id} published on {settings.topics.control}")
    else:
        print(
            f"session {args.session} was already killed by {command.detector} ({command.reason}); "
            f"that kill ({command.command_id}) was published again"
        )
    return 0


def _incidents_list(args: argparse.Namespace) -> int:
    from streams.operator._incidents import read_incidents

    incidents = asyncio.run(read_incidents(load_settings(args.config)))
    rows = [i.summary() for i in incidents]
    if args.json:
        for row in rows:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return 0
    print(f"{'incident':<38} {'opened (UTC)':<23} {'session':<28} {'detector':<20} {'severity':<9} status")
    for r in rows:
        print(
            f"{r['incident_id']:<38} {r['opened']:<23} {r['session_id'][:28]:<28} {r['detector'][:20]:<20} "
            f"{r['severity']:<9} {r['status']}"
        )
    return 0


def _incidents_show(args: argparse.Namespace) -> int:
    from streams.operator._incidents import read_incidents, render_markdown, session_timeline

    settings = load_settings(args.config)

    async def find() -> tuple[Any, list[Any]] | None:
        for incident in await read_incidents(settings):
            if incident.incident_id == args.incident_id:
                return incident, await session_timeline(settings, incident)
        return None

    found = asyncio.run(find())
    if found is None:
        print(f"no incident {args.incident_id} in {settings.topics.alerts}", file=sys.stderr)
        return 1
    incident, timeline = found
    if args.markdown:
        sys.stdout.write(render_markdown(incident, timeline))
    else:
        body = {
            **incident.summary(),
            "alerts": [a.model_dump() for a in incident.alerts],
            "timeline": [e.model_dump(by_alias=True) for e in timeline],
        }
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _release(args: argparse.Namespace) -> int:
    from streams.operator._operator import release

    held = asyncio.run(release(load_settings(args.config), args.session))
    if held is None:
        print(f"session {args.session} was not fenced; nothing to release")
        return 1
    print(f"released session {args.session} (it was killed by {held.detector}: {held.reason})")
    return 0


def _tail(args: argparse.Namespace) -> int:
    from streams.operator._operator import tail

    settings = load_settings(args.config)

    async def run() -> None:
        async for row in tail(settings, args.topic, follow=args.follow):
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
            sys.stdout.flush()

    asyncio.run(run())
    return 0


def _replay(args: argparse.Namespace) -> int:
    from streams.operator._replay import (
        detector_settings,
        read_expectations,
        read_lines,
        render,
        render_score,
        replay_lines,
        score,
    )

    settings = detector_settings(args.config)
    expected = read_expectations(args.expect) if args.expect is not None else None
    report = replay_lines(read_lines(args.file), settings, horizon_ms=int(args.horizon_s * 1000))
    print(render(report, json_output=args.json))
    if expected is not None:
        result = score(report, expected)
        print(orjson.dumps({"score": result.describe()}).decode() if args.json else render_score(result))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from streams.operator._calibrate import calibrate, render_proposal
    from streams.operator._replay import read_lines

    print(render_proposal(calibrate(read_lines(args.file)), min_sessions=args.min_sessions))
    return 0


def _inventory(args: argparse.Namespace) -> int:
    from streams.operator._inventory import inventory, render, render_markdown
    from streams.operator._replay import detector_settings

    source = str(args.config) if args.config else "the default configuration"
    entries = inventory(detector_settings(args.config))
    print((render_markdown if args.markdown else render)(entries, source=source), end="\n")
    return 0


def _scenarios(args: argparse.Namespace) -> int:
    from streams.lab._scenarios import write_library

    written = write_library(args.directory, variant=args.variant)
    for path in written:
        print(path)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from streams.lab._demo import run_demo

    return run_demo(json_output=args.json, bootstrap=args.bootstrap, redis_url=args.redis)


def _bench(args: argparse.Namespace) -> int:
    from streams.lab._bench import run_bench

    return run_bench(
        bootstrap=args.bootstrap,
        redis_url=args.redis,
        events=args.events,
        kills=args.kills,
        background_rate=args.background_rate,
        json_output=args.json,
        flood=args.flood,
    )
