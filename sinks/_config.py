"""Which sinks exist, what each receives, and how delivery behaves: the `sinks` section of the config.

Routing is by match: a sink receives an alert when every field of its `route` that is set lists the alert's
value (severity, failure class, detector, tenant); a sink without a route receives everything.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from sinks._alert import Alert, Severity
from sinks._services import OPSGENIE_URL, PAGERDUTY_URL

_Url = Annotated[str, Field(pattern=r"^https?://")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Route(_Frozen):
    severity: list[Severity] | None = None
    failure_class: list[str] | None = None
    detector: list[str] | None = None
    tenant: list[str] | None = None

    def matches(self, alert: Alert) -> bool:
        return (
            (self.severity is None or alert.severity in self.severity)
            and (self.failure_class is None or alert.failure_class in self.failure_class)
            and (self.detector is None or alert.detector in self.detector)
            and (self.tenant is None or alert.tenant_id in self.tenant)
        )


class _Target(_Frozen):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    route: Route = Route()


class StdoutTarget(_Target):
    type: Literal["stdout"]


class PagerDutyTarget(_Target):
    type: Literal["pagerduty"]
    routing_key: SecretStr
    url: _Url = PAGERDUTY_URL


class OpsgenieTarget(_Target):
    type: Literal["opsgenie"]
    api_key: SecretStr
    url: _Url = OPSGENIE_URL


class SlackTarget(_Target):
    type: Literal["slack"]
    webhook_url: SecretStr


class AlertmanagerTarget(_Target):
    type: Literal["alertmanager"]
    url: _Url


class WebhookTarget(_Target):
    type: Literal["webhook"]
    url: _Url
    secret: SecretStr


SinkTarget = Annotated[
    StdoutTarget | PagerDutyTarget | OpsgenieTarget | SlackTarget | AlertmanagerTarget | WebhookTarget,
    Field(discriminator="type"),
]


class DeliverySettings(_Frozen):
    base_backoff_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    max_backoff_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # null: retry transient failures until delivered (an outage delays alerts, loses none)
    max_attempts: Annotated[int, Field(ge=1)] | None = None
    breaker_failures: Annotated[int, Field(ge=1)] = 5
    breaker_cooldown_s: Annotated[float, Field(gt=0)] = 30.0
    max_pages_per_incident_per_hour: Annotated[int, Field(ge=1)] | None = 10
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0


class SinksSettings(_Frozen):
    targets: list[SinkTarget] = []
    delivery: DeliverySettings = DeliverySettings()
    # Run the sink runners inside the worker process instead of `tripwire sinks`.
    in_worker: bool = False
    # Prometheus endpoint of `tripwire sinks` (inside the worker, the worker's endpoint has the figures).
    metrics_port: Annotated[int, Field(ge=1, le=65_535)] | None = 9465

    @model_validator(mode="after")
    def _unique_names(self) -> SinksSettings:
        names = [t.name for t in self.targets]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"sink names must be unique; repeated: {', '.join(dupes)}")
        return self
