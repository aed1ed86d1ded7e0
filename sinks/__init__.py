"""Delivery of Tripwire alerts to the places people get paged: each sink is one `deliver(alert)`.

Sinks know the alert record, not how it was detected. `Delivery` wraps a sink with retries, a circuit
breaker and the Redis ledger (dedupe, page budget per incident); all HTTP goes through one transport.
"""

from sinks._alert import Alert, Severity
from sinks._build import build_sink
from sinks._config import DeliverySettings, Route, SinksSettings, SinkTarget
from sinks._delivery import CircuitBreaker, Delivery, DeliveryLedger, Outcome, RetryPolicy, Sink
from sinks._http import (
    AiohttpTransport,
    DeliveryError,
    FunctionTransport,
    HttpResponse,
    HttpTransport,
    raise_for_status,
    retry_after,
)
from sinks._ledger import RedisLedger
from sinks._services import (
    AlertmanagerSink,
    OpsgenieSink,
    PagerDutySink,
    SlackSink,
    WebhookSink,
    alertmanager_alerts,
    opsgenie_alert,
    pagerduty_event,
    slack_message,
    webhook_signature,
)
from sinks._stdout import StdoutSink

__all__ = [
    "AiohttpTransport",
    "Alert",
    "AlertmanagerSink",
    "CircuitBreaker",
    "Delivery",
    "DeliveryError",
    "DeliveryLedger",
    "DeliverySettings",
    "FunctionTransport",
    "HttpResponse",
    "HttpTransport",
    "OpsgenieSink",
    "Outcome",
    "PagerDutySink",
    "RedisLedger",
    "RetryPolicy",
    "Route",
    "Severity",
    "Sink",
    "SinkTarget",
    "SinksSettings",
    "SlackSink",
    "StdoutSink",
    "WebhookSink",
    "alertmanager_alerts",
    "build_sink",
    "opsgenie_alert",
    "pagerduty_event",
    "raise_for_status",
    "retry_after",
    "slack_message",
    "webhook_signature",
]
