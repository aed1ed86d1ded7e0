"""Configuration: files and environment, and errors that tell the operator which key is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams import ConfigError, load_settings
from streams.operator._cli import main
from tests._tls import make_pki

KEY = "0123456789abcdef0123456789abcdef"


def test_yaml_file_with_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tripwire.yaml"
    path.write_text(
        f"signing_key: {KEY}\ndetectors:\n  session_budget:\n    max_steps: 12\ntopics:\n  partitions: 3\n"
    )
    monkeypatch.setenv("TRIPWIRE_KAFKA__BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("TRIPWIRE_DETECTORS__SESSION_BUDGET__MAX_COST_USD", "2.5")
    monkeypatch.setenv("TRIPWIRE_DETECTORS__MONOLOGUE__MODE", "shadow")
    settings = load_settings(path)
    assert settings.detectors.session_budget.max_steps == 12
    assert settings.detectors.session_budget.max_cost_usd == 2.5
    assert settings.detectors.monologue.mode == "shadow"
    assert settings.topics.partitions == 3
    assert settings.kafka.bootstrap == "kafka-1:9092,kafka-2:9092"
    assert KEY not in repr(settings)


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "tripwire.toml"
    path.write_text(f'signing_key = "{KEY}"\n[detectors.session_budget]\nmax_tokens = 1000\n')
    assert load_settings(path).detectors.session_budget.max_tokens == 1000


def test_budget_keys_as_the_first_release_spelled_them_still_work(tmp_path: Path) -> None:
    path = tmp_path / "tripwire.yaml"
    path.write_text(f"signing_key: {KEY}\ndetectors:\n  max_steps: 12\n  max_cost_usd: null\n")
    budget = load_settings(path).detectors.session_budget
    assert (budget.max_steps, budget.max_tokens, budget.max_cost_usd) == (12, 2_000_000, None)
    path.write_text(f"signing_key: {KEY}\ndetectors:\n  max_steps: 12\n  session_budget: {{max_steps: 9}}\n")
    with pytest.raises(ConfigError, match=r"detectors\.max_steps: given twice"):
        load_settings(path)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "detectors:\n  session_budget:\n    max_steps: 0\n",
            "detectors.session_budget.max_steps: 0 is not allowed",
        ),
        ("detectors:\n  max_steps: 0\n", "detectors.session_budget.max_steps: 0 is not allowed"),
        (
            "detectors:\n  cyclic_pattern:\n    mode: loud\n",
            "detectors.cyclic_pattern.mode: 'loud' is not allowed",
        ),
        (
            "detectors:\n  tenants:\n    acme:\n      error_burst: {count: 1}\n",
            "detectors.tenants.acme.error_burst.count: 1 is not allowed",
        ),
        ("detectors:\n  max_stepz: 5\n", "detectors.max_stepz: unknown key"),
        ("topics:\n  partitions: many\n", "topics.partitions: 'many' is not allowed"),
        ("redis:\n  url: localhost:6379\n", "redis.url: 'localhost:6379' is not allowed"),
        ("worker:\n  log_level: loud\n", "worker.log_level: 'loud' is not allowed"),
    ],
)
def test_bad_values_name_the_key_and_the_value(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"signing_key: {KEY}\n{body}")
    with pytest.raises(ConfigError, match=expected):
        load_settings(path)


def test_missing_and_short_signing_keys_are_refused_without_echoing_them(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("detectors: {}\n")
    with pytest.raises(ConfigError, match="signing_key: required"):
        load_settings(path)
    path.write_text("signing_key: hunter2\n")
    with pytest.raises(ConfigError, match="signing_key: <secret> is not allowed") as caught:
        load_settings(path)
    assert "hunter2" not in str(caught.value)


def test_config_check_command_explains_and_exits_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(f"signing_key: {KEY}\n")
    bad.write_text(f"signing_key: {KEY}\ntopics:\n  replication: 0\n")
    assert main(["config", "check", str(good)]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["config", "check", str(bad)]) == 2
    assert "topics.replication: 0" in capsys.readouterr().err
    assert main(["config", "check", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_the_shipped_example_file_is_valid_and_states_the_defaults() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "tripwire.example.yaml"
    settings = load_settings(example)
    defaults = load_settings(signing_key=settings.signing_key.get_secret_value())
    # The example documents the defaults: if a default changes, the example (and the README) must too.
    assert settings == defaults


def test_the_compose_deployment_is_consistent(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Docker engine runs here, so check what can be checked: every file it mounts is valid, and the
    services it names are the ones the configuration and Prometheus point at."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "worker", "sinks", "alertmanager", "prometheus", "grafana"} <= set(services)
    for name in ("worker", "sinks"):
        (mount,) = services[name]["volumes"]
        assert (root / mount.split(":")[0]).is_file()
        assert services[name]["environment"]["TRIPWIRE_SIGNING_KEY"].startswith("${TRIPWIRE_SIGNING_KEY")
    monkeypatch.setenv("TRIPWIRE_SIGNING_KEY", KEY)
    settings = load_settings(root / "deploy" / "tripwire.yaml")
    assert settings.kafka.bootstrap.split(":")[0] in services
    assert settings.redis.url.split("//")[1].split(":")[0] in services
    am = settings.sinks.targets[0]
    assert getattr(am, "url", "").split("//")[1].split(":")[0] in services
    prometheus = yaml.safe_load((root / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"worker:{settings.worker.metrics_port}", f"sinks:{settings.sinks.metrics_port}"}


def test_the_dashboard_only_charts_metrics_that_exist() -> None:
    import json
    import re

    from prometheus_client import REGISTRY

    import sinks._delivery  # noqa: F401  (registers the sink metrics)
    import streams.worker._app  # noqa: F401  (registers the worker metrics)

    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "deploy" / "grafana" / "dashboards" / "tripwire.json").read_text())
    charted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"tripwire_[a-z_]+", target["expr"])
    }
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exported = {m.name + end for m in REGISTRY.collect() for end in suffixes.get(m.type, ("",))}
    assert charted - exported == set()
    assert len(charted) >= 12


def test_idle_eviction_must_outlast_the_stall_and_deadline_windows_and_never_shows_the_key() -> None:
    with pytest.raises(ConfigError) as bad:
        load_settings(
            signing_key="s3cr3t-" * 6,
            worker={"evict_idle_after_s": 600},
            detectors={"tenants": {"slow": {"session_deadline": {"max_duration_s": 7200}}}},
        )
    assert "worker.evict_idle_after_s: 600 is not allowed" in str(bad.value)
    assert "7200" in str(bad.value)
    assert "s3cr3t" not in str(bad.value)


def test_config_check_and_its_errors_never_show_a_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(f"signing_key: {KEY}\nredis: {{url: 'rediss://tripwire:hunter2@redis.example:6380/0'}}\n")
    bad.write_text(
        f"signing_key: {KEY}\nredis: {{url: 'http://tripwire:hunter2@redis.example/0'}}\n"
        "sinks: {slakc: {webhook_url: 'https://hooks.example/hunter2'}}\n"
    )
    assert main(["config", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "rediss://***@redis.example:6380/0" in out
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "redis.url: 'http://***@redis.example/0' is not allowed" in err
    assert "sinks.slakc: unknown key" in err
    assert "hunter2" not in out + err


PASSWORD = "kafka-pw-never-shown-91c2"


def test_kafka_security_from_file_and_environment_never_shows_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = make_pki(tmp_path / "tls").ca
    path = tmp_path / "tripwire.yaml"
    path.write_text(
        f"signing_key: {KEY}\nkafka:\n  bootstrap: b-1.example:9096\n  security:\n"
        f"    protocol: SASL_SSL\n    sasl_mechanism: SCRAM-SHA-512\n    username: tripwire\n"
        f"    ca_file: {ca}\n"
    )
    monkeypatch.setenv("TRIPWIRE_KAFKA__SECURITY__PASSWORD", PASSWORD)
    security = load_settings(path).kafka.security
    options = security.client_options()
    assert options["sasl_plain_password"] == PASSWORD  # handed to the client, and only there
    assert (options["security_protocol"], options["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert PASSWORD not in repr(security)
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "SASL_SSL, SASL SCRAM-SHA-512 as tripwire" in out
    assert PASSWORD not in out


@pytest.mark.parametrize(
    ("security", "named"),
    [
        ({"protocol": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "username": "u"}, "needs username and password"),
        ({"protocol": "PLAINTEXT", "username": "u", "password": PASSWORD}, "need protocol SASL_SSL"),
        ({"protocol": "SSL", "cert_file": "/nonexistent/client.pem"}, "go together"),
        ({"protocol": "SSL", "ca_file": "/nonexistent/ca.pem"}, "is not a readable file"),
        (
            {"protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "token_provider": "no_such_mod:make"},
            "cannot be imported",
        ),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}, "needs token_provider"),
        ({"protocol": "TLS"}, "kafka.security.protocol"),
        ({"protocol": "SSL", "ca_file": __file__}, "do not load"),
    ],
)
def test_bad_kafka_security_fails_at_start_naming_the_key(
    tmp_path: Path, security: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as bad:
        load_settings(signing_key=KEY, kafka={"security": security})
    assert "kafka.security" in str(bad.value)
    assert named in str(bad.value)
    assert PASSWORD not in str(bad.value)


def test_a_bad_command_private_key_fails_at_start_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as bad:
        load_settings(signing_key=KEY, commands={"private_key": "c2VjcmV0LWJ1dC1zaG9ydA"})
    assert "commands.private_key" in str(bad.value)
    assert "c2VjcmV0LWJ1dC1zaG9ydA" not in str(bad.value)
