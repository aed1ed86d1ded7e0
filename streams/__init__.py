"""The Faust worker and the operator's command line: topics, tables, the pipeline that feeds the detectors
and acts on their verdicts (fence, kill command, alert), the embedded servers and the demo.

Detection logic lives in `detectors`; this package only moves events and verdicts.
"""

from streams._config import ConfigError, Settings, load_settings
from streams._kafka import RecordProducer, TopicReader, TopicSpec, ensure_topics, topic_specs, wait_for_broker
from streams.lab._embedded import EmbeddedKafka, EmbeddedRedis, EmbeddedUnavailable, free_port
from streams.worker._app import build_app
from streams.worker._pipeline import BatchResult, DeadLetter, Pipeline, RawRecord

__all__ = [
    "BatchResult",
    "ConfigError",
    "DeadLetter",
    "EmbeddedKafka",
    "EmbeddedRedis",
    "EmbeddedUnavailable",
    "Pipeline",
    "RawRecord",
    "RecordProducer",
    "Settings",
    "TopicReader",
    "TopicSpec",
    "build_app",
    "ensure_topics",
    "free_port",
    "load_settings",
    "topic_specs",
    "wait_for_broker",
]
