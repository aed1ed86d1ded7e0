"""From a configured target to a live sink (all HTTP through one transport)."""

from __future__ import annotations

from sinks._config import (
    AlertmanagerTarget,
    OpsgenieTarget,
    PagerDutyTarget,
    SinkTarget,
    SlackTarget,
    StdoutTarget,
    WebhookTarget,
)
from sinks._delivery import Sink
from sinks._http import HttpTransport
from sinks._services import AlertmanagerSink, OpsgenieSink, PagerDutySink, SlackSink, WebhookSink
from sinks._stdout import StdoutSink


def build_sink(target: SinkTarget, transport: HttpTransport) -> Sink:
    match target:
        case StdoutTarget():
            return StdoutSink(name=target.name)
        case PagerDutyTarget():
            return PagerDutySink(target.name, transport, target.routing_key.get_secret_value(), target.url)
        case OpsgenieTarget():
            return OpsgenieSink(target.name, transport, target.api_key.get_secret_value(), target.url)
        case SlackTarget():
            return SlackSink(target.name, transport, target.webhook_url.get_secret_value())
        case AlertmanagerTarget():
            return AlertmanagerSink(target.name, transport, target.url)
        case WebhookTarget():
            return WebhookSink(target.name, transport, target.url, target.secret.get_secret_value())
