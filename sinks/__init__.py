"""Delivery of Tripwire alerts to the places people get paged: each sink is one `deliver(alert)`.

Sinks know the alert record, not how it was detected.
"""

from sinks._alert import Alert, Severity
from sinks._stdout import StdoutSink

__all__ = ["Alert", "Severity", "StdoutSink"]
