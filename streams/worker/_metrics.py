"""The worker's Prometheus metrics, in one place so the judge, the stages and the upkeep timers share them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from streams.worker._pipeline import DEAD_LETTER_CODES

EVENTS = Counter("tripwire_events_total", "Agent events judged by this worker", ["kind"])
DUPLICATES = Counter("tripwire_events_duplicate_total", "Replayed events dropped by the replay filter")
DEAD_LETTERS = Counter(
    "tripwire_dead_letters_total", "Records sent to the dead-letter topic, by the kind of fault", ["reason"]
)
CLAMPED = Counter(
    "tripwire_event_times_clamped_total", "Events whose time was not believed and was clamped", ["why"]
)
ACT_RETRIES = Counter(
    "tripwire_act_retries_total", "Failed writes of a batch's output to the broker (retried)"
)
TIMER_ERRORS = Counter("tripwire_timer_errors_total", "Timer runs that failed (the timer goes on)", ["timer"])
VERDICTS = Counter("tripwire_verdicts_total", "Detector verdicts", ["detector", "failure_class", "mode"])
STAGE_RECORDS = Counter("tripwire_stage_records_total", "Records judged by the keyed stages")
CIRCUITS = Counter("tripwire_tool_circuit_commands_total", "Tool circuit commands sent", ["circuit"])
RELOADS = Counter("tripwire_config_reloads_total", "Detector config reloads", ["result"])
KILLS = Counter("tripwire_kills_total", "Kill commands issued", ["detector"])
ACKS = Counter("tripwire_kill_acks_total", "Kills of this worker acknowledged by their agent")
ESCALATIONS = Counter("tripwire_kill_escalations_total", "Kills escalated because no agent acknowledged them")
UNACKED = Gauge("tripwire_kills_unacknowledged", "Kills issued and not yet acknowledged or escalated")
SESSIONS = Gauge("tripwire_sessions", "Session states this worker holds")
EVICTED = Counter("tripwire_sessions_evicted_total", "Session states evicted (ended, killed or idle)")
STAGE_KEYS = Gauge("tripwire_stage_keys", "Keyed-stage states this worker holds")
STAGE_KEYS_EXPIRED = Counter("tripwire_stage_keys_expired_total", "Keyed-stage states expired with windows")
_LATENCY_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
KILL_LATENCY = Histogram(
    "tripwire_kill_latency_seconds",
    "Breaching event sent -> kill received, as measured and reported by the agent SDK",
    buckets=_LATENCY_BUCKETS,
)
ACK_LATENCY = Histogram(
    "tripwire_kill_ack_latency_seconds",
    "Kill issued by the worker -> acknowledgement sent by the agent (wall clocks of both)",
    buckets=_LATENCY_BUCKETS,
)
LAG = Gauge("tripwire_consumer_lag", "Events on agent.events not yet judged, per partition", ["partition"])
CHECKPOINT_SECONDS = Histogram(
    "tripwire_checkpoint_seconds",
    "One checkpoint: session states written to the changelog, output confirmed, offsets committed",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CHECKPOINT_STATES = Counter("tripwire_checkpoint_states_total", "Session states written by checkpoints")
INTAKE = Gauge("tripwire_intake_records", "Records fetched and not yet judged")

for _code in DEAD_LETTER_CODES:
    DEAD_LETTERS.labels(_code)
for _why in ("future", "before_start", "too_old"):
    CLAMPED.labels(_why)
