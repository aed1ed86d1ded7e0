"""How Tripwire's Kafka clients reach a secured cluster: TLS (a CA, client certificates) and SASL.

One model, `KafkaSecurity`, is what an operator configures once (the `kafka.security` section of the worker's
config, or the SDK's `kafka_security=` argument); every Kafka client Tripwire builds (the worker, its sinks,
every CLI command, the agent SDK) takes its settings from `client_options()`, so no client is left behind on
PLAINTEXT. Mechanisms: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (user and password), and OAUTHBEARER, whose
token comes from a provider the operator names (`token_provider: "module:callable"`, called once with no
arguments, returning an `aiokafka.abc.AbstractTokenProvider`): the hook for MSK IAM, Azure Event Hubs or
any OIDC issuer. Passwords are `SecretStr`: they never appear in a repr, a log line or `config check`.
"""

from __future__ import annotations

import functools
import importlib
import ssl
from pathlib import Path
from typing import Any, Literal

from aiokafka.abc import AbstractTokenProvider
from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


class KafkaSecurity(BaseModel):
    """TLS and SASL for the Kafka clients; the default is PLAINTEXT, as a broker on loopback is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocol: Protocol = "PLAINTEXT"
    # TLS (SSL and SASL_SSL): the CA that signed the brokers' certificates (the system's CAs when unset),
    # and a client certificate with its key when the brokers require one (mutual TLS).
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: SecretStr | None = None
    check_hostname: bool = True
    # SASL (SASL_PLAINTEXT and SASL_SSL).
    sasl_mechanism: Mechanism | None = None
    username: str | None = None
    password: SecretStr | None = None
    token_provider: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        tls = self.protocol in ("SSL", "SASL_SSL")
        sasl = self.protocol.startswith("SASL_")
        if not tls and (self.ca_file or self.cert_file or self.key_file or self.key_password):
            raise ValueError(
                f"ca_file, cert_file and key_file need protocol SSL or SASL_SSL, not {self.protocol}"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (a client certificate and its private key)")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {str(path)!r} is not a readable file")
        if tls:
            try:
                self.ssl_context()
            except (ssl.SSLError, OSError) as exc:
                # Which file is bad, never a key's password: the error names the PEM problem only.
                files = ", ".join(
                    f"{n} {getattr(self, n)}"
                    for n in ("ca_file", "cert_file", "key_file")
                    if getattr(self, n)
                )
                raise ValueError(f"the TLS files ({files or 'system CAs'}) do not load: {exc}") from None
        if not sasl:
            if self.sasl_mechanism or self.username or self.password or self.token_provider:
                raise ValueError(
                    f"sasl_mechanism, username, password and token_provider need protocol SASL_SSL or "
                    f"SASL_PLAINTEXT, not {self.protocol}"
                )
            return self
        if self.sasl_mechanism is None:
            raise ValueError(
                f"protocol {self.protocol} needs sasl_mechanism (PLAIN, SCRAM-SHA-256/512, OAUTHBEARER)"
            )
        if self.sasl_mechanism == "OAUTHBEARER":
            if not self.token_provider:
                raise ValueError("sasl_mechanism OAUTHBEARER needs token_provider ('module:callable')")
            if self.username or self.password:
                raise ValueError("sasl_mechanism OAUTHBEARER takes a token_provider, not username/password")
            _load_provider(self.token_provider)
        else:
            if not self.username or self.password is None or not self.password.get_secret_value():
                raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs username and password")
            if self.token_provider:
                raise ValueError(f"token_provider is for OAUTHBEARER, not {self.sasl_mechanism}")
        return self

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_mechanism == "OAUTHBEARER":
                assert self.token_provider is not None
                options["sasl_oauth_token_provider"] = _provider(self.token_provider)
            else:
                assert self.password is not None
                options["sasl_plain_username"] = self.username
                options["sasl_plain_password"] = self.password.get_secret_value()
        return options

    def ssl_context(self) -> ssl.SSLContext:
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(self.ca_file) if self.ca_file else None,
            certfile=str(self.cert_file) if self.cert_file else None,
            keyfile=str(self.key_file) if self.key_file else None,
            password=self.key_password.get_secret_value() if self.key_password else None,
        )
        context.check_hostname = self.check_hostname
        return context

    def describe(self) -> str:
        """One line for logs and `config check`: what is used, never a secret."""
        parts: list[str] = [self.protocol]
        if self.sasl_mechanism:
            who = f" as {self.username}" if self.username else f" (token from {self.token_provider})"
            parts.append(f"SASL {self.sasl_mechanism}{who}")
        if self.protocol in ("SSL", "SASL_SSL"):
            parts.append(f"CA {self.ca_file}" if self.ca_file else "system CAs")
            if self.cert_file:
                parts.append(f"client certificate {self.cert_file}")
        return ", ".join(parts)


PLAINTEXT = KafkaSecurity()


def _load_provider(path: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"token_provider {path!r} must be 'module:callable'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"token_provider {path!r} cannot be imported: {exc}") from None
    if not callable(factory):
        raise ValueError(f"token_provider {path!r} is not callable")
    return factory


@functools.cache
def _provider(path: str) -> AbstractTokenProvider:
    """One provider per process and path: it may cache its token, and every client shares it."""
    provider = _load_provider(path)()
    if not isinstance(provider, AbstractTokenProvider):
        raise TypeError(
            f"token_provider {path!r} returned {type(provider).__name__}, not an AbstractTokenProvider"
        )
    return provider
