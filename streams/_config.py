"""Tripwire's configuration: one frozen settings object, from a YAML or TOML file plus environment variables.

Environment variables override the file (`TRIPWIRE_KAFKA__BOOTSTRAP=...`, nested keys joined by `__`).
Every value is checked at start; a bad one stops the process with an error that names the key, the value
and what is allowed, instead of surfacing as a misbehaving detector hours later.
"""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agents_contract._commands import MIN_KEY_BYTES, CommandSigner
from agents_contract._provenance import EventAuth, RecordSigner
from agents_contract._redis import SENTINEL_SCHEMES, parse_sentinel_url
from agents_contract._security import KafkaSecurity
from detectors import DetectorSettings, KeyProblems
from sinks import SinksSettings


class ConfigError(ValueError):
    """Configuration that cannot run; the message lists every bad key."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    bootstrap: Annotated[str, Field(min_length=1)] = "127.0.0.1:9092"
    # Apache Kafka supports idempotent producers; the embedded Tansu broker (memory engine) rejects
    # InitProducerId, so the embedded set-up turns this off and relies on the worker's replay filter.
    idempotent_producer: bool = True
    client_id: str = "tripwire"
    # TLS and SASL for every Kafka client Tripwire builds (worker, sinks, CLI); the SDK takes the same.
    security: KafkaSecurity = KafkaSecurity()


class CommandSettings(_Section):
    # The workers' Ed25519 private key (`tripwire keygen`), URL-safe base64: commands signed with it are
    # believed by agents given the public key, and nothing an agent holds can sign one. Unset: HMAC only.
    private_key: SecretStr | None = None
    # While on, commands are also sent HMAC-signed with `signing_key` (agents not yet given the public key
    # obey them); off, workers send Ed25519 only. For one release, then off by default.
    hmac_compat: bool = True
    # How long an Ed25519-signed tool-circuit command is obeyed after it is issued (a kill: as long as the
    # fence keeps it, `redis.fence_ttl_s`). A captured command cannot be replayed past it.
    circuit_ttl_s: Annotated[int, Field(ge=60, le=7 * 24 * 3600)] = 3600

    @field_validator("private_key")
    @classmethod
    def _a_private_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            CommandSigner(private_key=value)  # ValueError names what is wrong, never the key
        return value


def _key_list(value: Any) -> Any:
    return [value] if isinstance(value, str | SecretStr) else value


class EventSigningSettings(_Section):
    # Tenants whose events must be signed, each with its keys (the SDK's `event_key`; the first is the
    # current one, any verifies, so a key is rotated by adding the new one first). Unsigned or wrongly
    # signed events of these tenants are dead-lettered; other tenants' events are judged as before.
    tenant_keys: dict[
        Annotated[str, Field(min_length=1, max_length=128)],
        Annotated[list[SecretStr], BeforeValidator(_key_list), Field(min_length=1)],
    ] = Field(default_factory=dict)

    @field_validator("tenant_keys")
    @classmethod
    def _keys_long_enough(cls, value: dict[str, list[SecretStr]]) -> dict[str, list[SecretStr]]:
        for tenant, keys in value.items():
            for key in keys:
                if len(key.get_secret_value().encode()) < MIN_KEY_BYTES:
                    raise ValueError(f"{tenant}: a key must be at least {MIN_KEY_BYTES} bytes")
        return value


class RedisSettings(_Section):
    # redis://, rediss://, unix://, or redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER[/DB] (rediss+sentinel).
    url: Annotated[str, Field(pattern=r"^(redis|rediss|unix|redis\+sentinel|rediss\+sentinel)://")] = (
        "redis://127.0.0.1:6379/0"
    )

    @field_validator("url")
    @classmethod
    def _sentinel_url(cls, value: str) -> str:
        if value.partition("://")[0] in SENTINEL_SCHEMES:
            parse_sentinel_url(value)  # ValueError says what is missing, never the credentials
        return value

    fence_ttl_s: Annotated[int, Field(ge=60)] = 7 * 24 * 3600


class TopicSettings(_Section):
    events: str = "agent.events"
    dlq: str = "agent.events.dlq"
    # Raw copies of bad records, only while `worker.dlq_raw` is on (debugging a producer); short retention.
    dlq_raw: str = "agent.events.dlq.raw"
    control: str = "agent.control"
    alerts: str = "guardrail.alerts"
    alerts_dlq: str = "guardrail.alerts.dlq"
    # Internal: records for the stages keyed by tenant, agent, tool and content, and the verdicts those
    # stages send back to the session's worker.
    stages: str = "tripwire.stages"
    verdicts: str = "tripwire.verdicts"
    partitions: Annotated[int, Field(ge=1, le=10_000)] = 8
    replication: Annotated[int, Field(ge=1, le=10)] = 1
    events_retention_ms: Annotated[int, Field(ge=60_000)] = 7 * 24 * 3600 * 1000
    control_retention_ms: Annotated[int, Field(ge=60_000)] = 7 * 24 * 3600 * 1000
    dlq_retention_ms: Annotated[int, Field(ge=60_000)] = 30 * 24 * 3600 * 1000
    alerts_retention_ms: Annotated[int, Field(ge=60_000)] = 30 * 24 * 3600 * 1000
    alerts_dlq_retention_ms: Annotated[int, Field(ge=60_000)] = 30 * 24 * 3600 * 1000
    stages_retention_ms: Annotated[int, Field(ge=60_000)] = 24 * 3600 * 1000
    dlq_raw_retention_ms: Annotated[int, Field(ge=60_000)] = 24 * 3600 * 1000


class WorkerSettings(_Section):
    app_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")] = "tripwire"
    # Most events judged before their kills go out: small enough that a kill never waits long behind its
    # batch; checkpoints, not batches, set how often state is written.
    batch_max: Annotated[int, Field(ge=1, le=100_000)] = 256
    batch_within_ms: Annotated[int, Field(ge=1, le=10_000)] = 5
    # State changes accumulate and are written to the changelog once per session per checkpoint, and the
    # offsets judged are committed only after that (kills never wait for it). Sooner when this many
    # sessions are pending. A crash judges again at most about one interval of events.
    checkpoint_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    checkpoint_max_sessions: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000
    # Records fetched and waiting to be judged, at most; a slower judge then slows the fetch.
    intake_max_records: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000
    # Static group membership (Kafka's group.instance.id): a worker restarted under the same id (a pod of a
    # StatefulSet, a systemd unit) takes its partitions back at once instead of after the dead member's
    # session timeout. Unique per worker process; `tripwire worker --processes N` suffixes it per process.
    # A stopped worker with an instance id does not leave the group: its partitions move after the timeout.
    # Where the keyed stages (tenant and agent budgets, memory fingerprints, fleet tool circuits) run:
    # in this worker, or in their own process (`tripwire stages`, a consumer group of its own).
    stages: Literal["in_worker", "own_process"] = "in_worker"
    instance_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,200}$")] | None = None
    # Bounds how long an idle fetch may wait at the broker; see streams/worker/_seam.py.
    fetch_max_wait_ms: Annotated[int, Field(ge=1, le=5_000)] = 20
    # A kill that no agent acknowledges within this time is escalated as its own critical alert.
    kill_ack_timeout_s: Annotated[float, Field(ge=0.5, le=86_400)] = 15.0
    # How often timed detectors (deadlines, stalls) look at quiet sessions, and the config file for changes.
    timer_interval_s: Annotated[float, Field(ge=0.1, le=60)] = 1.0
    # Re-read the config file while running and apply changes to `detectors` without a restart.
    reload_config: bool = True
    # Prometheus metrics over HTTP on this port (null: no endpoint).
    metrics_port: Annotated[int, Field(ge=1, le=65_535)] | None = 9464
    metrics_host: str = "0.0.0.0"
    rebalance_timeout_s: Annotated[float, Field(ge=1)] = 10.0
    # How long the group waits for a silent worker before its partitions move to the others: the bulk of a
    # failover's time (heartbeats go every third of it).
    session_timeout_s: Annotated[float, Field(ge=3)] = 10.0
    # A rebalance (partitions revoked, assigned, their state recovered) not finished within this time is
    # stuck: the worker says so and restarts itself in place.
    recovery_timeout_s: Annotated[float, Field(ge=10, le=3_600)] = 120.0
    # Dead letters keep metadata only (reason, source offset, size, digest, shape). On, the first
    # `dlq_raw_max_bytes` of each bad record also go to `topics.dlq_raw`; for debugging a producer.
    dlq_raw: bool = False
    dlq_raw_max_bytes: Annotated[int, Field(ge=1, le=900_000)] = 65_536
    # After a failed write to the broker (kills, alerts, dead letters) the worker retries with backoff up
    # to this long between tries, holding the batch (and its offsets) until the write succeeds.
    act_retry_max_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    # Sessions leave the worker's table (a tombstone on the changelog) once nothing more can happen to them:
    # ended ones after this grace (late events of theirs are still judged, as a new state), killed ones
    # once their kill was acknowledged or escalated and this long has passed, and sessions that went quiet
    # after `evict_idle_after_s`, which must outlast the stall and deadline windows.
    evict_ended_after_s: Annotated[float, Field(ge=0, le=30 * 86_400)] = 600.0
    evict_killed_after_s: Annotated[float, Field(ge=0, le=30 * 86_400)] = 3_600.0
    evict_idle_after_s: Annotated[float, Field(gt=0, le=366 * 86_400)] = 86_400.0
    log_level: str = "warning"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        allowed = {"debug", "info", "warning", "error"}
        if value.lower() not in allowed:
            raise ValueError(f"must be one of {sorted(allowed)}")
        return value.lower()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRIPWIRE_", env_nested_delimiter="__", frozen=True, extra="forbid", validate_default=True
    )

    signing_key: SecretStr
    kafka: KafkaSettings = KafkaSettings()
    commands: CommandSettings = CommandSettings()
    event_signing: EventSigningSettings = EventSigningSettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicSettings = TopicSettings()
    detectors: DetectorSettings = DetectorSettings()
    worker: WorkerSettings = WorkerSettings()
    sinks: SinksSettings = SinksSettings()

    @model_validator(mode="after")
    def _idle_outlasts_the_timed_detectors(self) -> Settings:
        d = self.detectors
        layers = [d, *(d.merged(o) for o in (*d.tenants.values(), *d.agents.values()))]
        needed = max(max(x.stall.quiet_s, x.session_deadline.max_duration_s) for x in layers)
        idle = self.worker.evict_idle_after_s
        if idle <= needed:
            raise ValueError(
                f"worker.evict_idle_after_s: {idle:g} is not allowed: a quiet session must stay until the "
                f"stall and deadline detectors have judged it (more than {needed:g} s)"
            )
        return self

    @field_validator("signing_key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().encode()) < MIN_KEY_BYTES:
            raise ValueError(f"must be at least {MIN_KEY_BYTES} bytes (use 32 random bytes, hex or base64)")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (passed as init arguments), so one file serves many deployments.
        return env_settings, init_settings


def read_config_file(path: Path) -> dict[str, Any]:
    """The raw mapping in a YAML (.yaml/.yml) or TOML (.toml) file; ConfigError when it cannot be read."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {exc}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `path` (if given), the environment and `overrides`; ConfigError names every bad key."""
    data = read_config_file(path) if path is not None else {}
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(explain(exc, source=str(path) if path else "environment")) from None


_SECRET_KEYS: Final = (
    "signing_key",
    "private_key",
    "password",
    "secret",
    "token",
    "api_key",
    "routing_key",
    "webhook_url",
    "tenant_keys",
)


def _shown(key: str, value: Any) -> str:
    """A bad value as an error message may show it: never a secret, never a URL's credentials."""
    # Any part of the path: a tenant's event key is `event_signing.tenant_keys.<tenant>.0`.
    if any(word in part for part in key.split(".") for word in _SECRET_KEYS):
        return "<secret>"
    if isinstance(value, str):
        return repr(redacted_url(value))
    if isinstance(value, dict | list):
        return f"<a {type(value).__name__}>"
    return repr(value)


def redacted_url(url: str) -> str:
    """A URL without its credentials (`scheme://***@host`), for logs, alerts and `config check`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    _creds, at, host = rest.rpartition("@")
    return f"{scheme}://***@{host}" if at else url


def explain(exc: ValidationError, *, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"])
        shown = _shown(key, err.get("input"))
        if not key:
            # A rule across keys: its message names them. The input here is the whole config, secrets
            # included, so it is never shown.
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
        elif err["type"] == "missing":
            lines.append(
                f"  {key}: required, not set (in the file or TRIPWIRE_{key.upper().replace('.', '__')})"
            )
        elif isinstance(problems := (err.get("ctx") or {}).get("error"), KeyProblems):
            lines.extend(f"  {key}.{problem}" for problem in problems.problems)
        elif err["type"] == "extra_forbidden":
            # Not the value: a secret put under a misspelt key is still a secret.
            lines.append(f"  {key}: unknown key; check the spelling against the README")
        else:
            lines.append(f"  {key}: {shown} is not allowed: {err['msg']}")
    return "\n".join(lines)


def command_signer(settings: Settings) -> CommandSigner:
    """How this deployment's workers and tools sign and verify commands (`commands`, `signing_key`)."""
    c = settings.commands
    return CommandSigner(
        settings.signing_key,
        private_key=c.private_key,
        accept_hmac=c.hmac_compat,
        kill_ttl_s=settings.redis.fence_ttl_s,
        circuit_ttl_s=c.circuit_ttl_s,
    )


def event_auth(settings: Settings) -> EventAuth | None:
    """The tenants whose events must be signed (`event_signing.tenant_keys`), or None when none must."""
    keys = settings.event_signing.tenant_keys
    return EventAuth(keys) if keys else None


def internal_signer(settings: Settings) -> RecordSigner:
    """What signs the records workers write to their own internal topics (keyed-stage records and their
    verdicts), so that a record anyone else wrote there is refused. Derived from the Ed25519 private key
    when there is one (no agent holds it), else from the shared `signing_key`."""
    secret = settings.commands.private_key or settings.signing_key
    material = hmac.new(
        secret.get_secret_value().encode(), b"tripwire internal records v1", hashlib.sha256
    ).digest()
    return RecordSigner([material], what="internal key")
