"""Configuration: defaults < TOML file < secrets directory < environment < explicit arguments.

Environment variables use the ``CUSTOMEVENT_`` prefix and ``__`` between levels
(``CUSTOMEVENT_AMQP__URL``); lists and tables come as JSON. The TOML file is named by ``--config``
or ``CUSTOMEVENT_CONFIG``; the secrets directory (``CUSTOMEVENT_SECRETS_DIR``, default
``/run/secrets/customevent``) holds one file per key, named like ``amqp__url``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

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
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ._exceptions import ConfigurationError, InvalidEventName, InvalidInput
from ._filters import parse_filters
from ._groups import check_group_name
from ._names import validate_pattern
from ._nodes import split_nodes

__all__ = [
    "AmqpSettings",
    "AuthSettings",
    "GroupSettings",
    "HttpSettings",
    "LimitsSettings",
    "LogSettings",
    "MqttSettings",
    "Principal",
    "Settings",
    "Trigger",
    "load_settings",
    "section_models",
]

DEFAULT_SECRETS_DIR = "/run/secrets/customevent"
_EXCHANGE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# vRO's ids: UUIDs for workflows made in the client, 60-odd hex digits for the library's own.
_WORKFLOW_ID = re.compile(r"[A-Za-z0-9-]{1,128}")
_USERNAME = re.compile(r"[^\x00-\x1f\x7f:]{1,1024}")
_PASSWORD = re.compile(r"[^\x00-\x1f\x7f]{1,1024}")
_TOKEN = re.compile(r"[\x21-\x7e]{1,16384}")
_VRO_ONLY = (
    "workflow_id",
    "username",
    "password",
    "password_file",
    "token",
    "token_file",
    "event_parameters",
)
_SECRET_FILE_BYTES = 64 * 1024
_PARAMETER = re.compile(r"[^\x00-\x1f\x7f=]{1,200}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_url(value: str | None, schemes: tuple[str, ...], what: str) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(
            f"{what} must look like {schemes[0]}://user:password@host:port/..., "
            f"one of the schemes {', '.join(schemes)}"
        )
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_patterns(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            validate_pattern(pattern)
        except InvalidEventName as exc:
            raise ValueError(str(exc)) from None
    return patterns


def _join_nodes(value: Any) -> Any:
    # A TOML (or JSON) list of node URLs is the same as the comma-separated form.
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    return value


class AmqpSettings(_Section):
    url: Annotated[str | None, BeforeValidator(_join_nodes)] = Field(
        default=None,
        description=(
            "amqp:// or amqps:// URL of RabbitMQ, or of each node of a RabbitMQ cluster (a list, "
            "or separated by commas); unset: the in-process bus"
        ),
    )
    username: str | None = Field(
        default=None,
        min_length=1,
        description="user for every URL in amqp.url, instead of the user written in them",
    )
    password: SecretStr | None = Field(
        default=None,
        description="password for every URL in amqp.url, instead of the one written in them",
    )
    exchange: str = Field(
        default="customevents",
        description="durable topic exchange for events; every durable queue the bridge declares "
        "is named after it (customevent/<exchange>/...), so deployments with other exchanges on "
        "one virtual host never share one",
    )
    trusted_publishers: list[str] = Field(
        default_factory=list,
        description="AMQP users (besides this process's own) whose messages' principal "
        "(x-event-principal) is believed: the accounts of the bridge daemons, when consumers use "
        "other accounts; a principal from any other publisher is dropped",
    )
    connection_name: str = Field(
        default="customevent-bridge",
        min_length=1,
        description="name of the connection as RabbitMQ shows it (management UI, rabbitmqctl)",
    )
    connect_attempts: int = Field(default=6, ge=1, description="first-connection attempts")
    connect_backoff_max: float = Field(
        default=8.0, gt=0, description="longest pause between first-connection attempts, seconds"
    )
    reconnect_interval: float = Field(
        default=1.0, gt=0, description="pause between reconnection attempts after a loss, seconds"
    )
    publish_timeout: float = Field(default=10.0, gt=0, description="wait for a confirm, seconds")
    heartbeat: int = Field(default=30, ge=0, description="AMQP heartbeat, seconds")
    channels: int = Field(default=8, ge=1, le=64, description="channels used to bind waits")
    wait_grace: float = Field(
        default=5.0, ge=0, description="a wait queue outlives its deadline by this, seconds"
    )
    max_retain: float = Field(
        default=3600.0, gt=0, description="longest a send may retain its event, seconds"
    )
    max_retained_names: int = Field(
        default=10000, ge=1, description="event names retained at once; past it: 429"
    )
    ca_file: Path | None = Field(default=None, description="CA bundle for amqps://")
    cert_file: Path | None = Field(default=None, description="client certificate (PEM)")
    key_file: Path | None = Field(default=None, description="client private key (PEM)")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        split_nodes(value)
        return value

    @field_validator("exchange")
    @classmethod
    def _exchange(cls, value: str) -> str:
        # AMQP's rule for exchange names, shortened so that the queue names built from it
        # (customevent/<exchange>/group/<group>/retry/<ms>) stay within RabbitMQ's 255 bytes.
        if not _EXCHANGE.fullmatch(value) or value.startswith("amq."):
            raise ValueError(
                f"{value!r} must be 1 to 64 of A-Z a-z 0-9 - _ . : and not start with 'amq.'"
            )
        return value

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        anonymous = self.url and any(urlsplit(n).username is None for n in split_nodes(self.url))
        if self.password is not None and self.username is None and anonymous:
            raise ValueError(
                "amqp.password needs a user: set amqp.username, or write the user in amqp.url"
            )
        return self


class MqttSettings(_Section):
    url: str | None = Field(
        default=None, description="mqtt:// or mqtts:// URL of the MQTT broker; unset: no MQTT"
    )
    prefix: str = Field(default="customevents", description="topic prefix")
    client_id: str = Field(default="customevent-bridge", description="MQTT client id")
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version")
    session_expiry: int = Field(
        default=86400, ge=0, description="persistent session lifetime, seconds (MQTT v5)"
    )
    shared_group: str | None = Field(
        default=None, description="shared-subscription group; set when several replicas run"
    )
    max_inflight: int = Field(
        default=256, ge=1, description="messages held before being confirmed (backpressure)"
    )
    max_inflight_qos0: int = Field(
        default=1024,
        ge=0,
        description="QoS 0 messages held before being confirmed; past it, new QoS 0 messages are "
        "dropped and counted (customevent_mqtt_qos0_dropped_total)",
    )
    keepalive: int = Field(default=30, ge=5, description="keepalive, seconds")
    egress: list[str] = Field(
        default_factory=list, description="patterns of event names republished to <prefix>/out/"
    )
    ca_file: Path | None = Field(default=None, description="CA bundle for mqtts://")
    cert_file: Path | None = Field(default=None, description="client certificate (PEM)")
    key_file: Path | None = Field(default=None, description="client private key (PEM)")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _check_url(value, ("mqtt", "mqtts"), "mqtt.url")

    @field_validator("egress")
    @classmethod
    def _egress(cls, value: list[str]) -> list[str]:
        return _check_patterns(value)


class HttpSettings(_Section):
    host: str = Field(default="127.0.0.1", description="address the daemon listens on")
    port: int = Field(default=8280, ge=0, le=65535, description="HTTP port")
    public_url: str | None = Field(
        default=None, description="external base URL written into the WSDL; unset: from request"
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="request body limit")
    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, description="request line and headers of a request, bytes"
    )
    header_timeout: float = Field(
        default=10.0, gt=0, description="time a client has to send a request's head, seconds"
    )
    body_timeout: float = Field(
        default=10.0,
        gt=0,
        description="time a client has, from the end of a request's head, to send its whole "
        "body, seconds; past it: 408 and closed",
    )
    max_connections: int = Field(default=1024, ge=1, description="HTTP connections open at once")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or CIDRs of the reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed (behind an ingress: its controller's pod CIDR); "
        "default none: the client address is the socket's",
    )
    max_wait: float = Field(default=3600.0, gt=0, description="longest HTTP wait, seconds")
    max_batch: int = Field(
        default=100, ge=1, description="CloudEvents in one batch request; past it: 413"
    )
    max_waits: int = Field(default=1000, ge=1, description="HTTP waits open at once, in all")
    max_waits_per_caller: int = Field(
        default=100, ge=1, description="HTTP waits open at once per principal (anonymous: address)"
    )
    max_resumable_waits_per_caller: int = Field(
        default=32,
        ge=1,
        description="resumable waits alive at once per principal (anonymous: address), of "
        "limits.max_resumable_waits in all; counted per replica",
    )
    max_retained_names_per_caller: int = Field(
        default=1000,
        ge=1,
        description="event names one principal (anonymous: address) retains at once, of "
        "amqp.max_retained_names in all; counted per replica",
    )
    rate_limit: float = Field(
        default=200.0, ge=0, description="sends per second per principal; 0: unlimited"
    )
    rate_burst: int = Field(default=400, ge=1, description="burst allowed above rate_limit")
    drain_seconds: float = Field(
        default=10.0, ge=0, description="on SIGTERM, time given to in-flight requests, seconds"
    )
    tls_cert_file: Path | None = Field(default=None, description="serve HTTPS with this cert")
    tls_key_file: Path | None = Field(default=None, description="private key for tls_cert_file")

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                # uvicorn would also take "*" or a host name: trusting every peer is the very
                # hole this setting closes, and a name cannot be matched to a peer address.
                raise ValueError(
                    f"{entry!r} is not an IP address or CIDR (such as 10.0.0.0/8)"
                ) from None
        return value


class Principal(_Section):
    name: str = Field(min_length=1, description="user name for HTTP Basic")
    password_hash: str | None = Field(default=None, description="from customevent hash-secret")
    token_hash: str | None = Field(default=None, description="bearer token hash")
    allow: list[str] = Field(
        default_factory=list, description="external event names it may send and wait on (patterns)"
    )
    read_internal: list[str] = Field(
        default_factory=list, description="internal event names it may wait on (patterns)"
    )

    @field_validator("allow", "read_internal")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        return _check_patterns(value)

    @field_validator("password_hash")
    @classmethod
    def _password_hash(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("scrypt$"):
            # A fast hash would let a guessable password be tried millions of times a second.
            raise ValueError(
                "password_hash must be a scrypt hash from 'customevent hash-secret' (the fast "
                "--token hash is for bearer tokens only)"
            )
        return value


class AuthSettings(_Section):
    anonymous: bool = Field(default=False, description="let anyone send external events")
    anonymous_allow: list[str] = Field(
        default_factory=lambda: ["#"], description="patterns anonymous callers may use"
    )
    principals: list[Principal] = Field(default_factory=list, description="who may call")
    hash_workers: int = Field(
        default=2, ge=1, le=64, description="threads that check passwords (scrypt)"
    )
    max_pending_checks: int = Field(
        default=64, ge=1, description="password checks waiting for a thread; past it: 503"
    )
    failure_rate: float = Field(
        default=1.0, gt=0, description="failed authentications forgiven per second per address"
    )
    failure_burst: int = Field(
        default=20, ge=1, description="failed authentications per address before 429"
    )

    @field_validator("anonymous_allow")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        return _check_patterns(value)

    @field_validator("principals")
    @classmethod
    def _distinct(cls, principals: list[Principal]) -> list[Principal]:
        # A token or name given twice would authenticate as whichever comes first, silently.
        names: set[str] = set()
        tokens: dict[str, str] = {}
        for principal in principals:
            if principal.name in names:
                raise ValueError(f"principal {principal.name!r} is listed twice")
            names.add(principal.name)
            token = principal.token_hash
            if token is not None:
                if token in tokens:
                    raise ValueError(
                        f"principals {tokens[token]!r} and {principal.name!r} have the same "
                        "token_hash: each token must be its own"
                    )
                tokens[token] = principal.name
        return principals


class LimitsSettings(_Section):
    max_bytes: int = Field(default=64 * 1024, ge=1, description="properties bytes per event")
    max_properties: int = Field(default=256, ge=1, description="properties per event")
    max_resumable_waits: int = Field(
        default=256,
        ge=1,
        description="resumable waits open at once in one process (each holds an AMQP channel)",
    )
    max_resumable_events: int = Field(
        default=100,
        ge=1,
        description="events a resumable wait keeps while nobody listens; the oldest go first",
    )


class GroupSettings(_Section):
    prefetch: int = Field(
        default=16, ge=1, le=10_000, description="deliveries a group consumer holds at once"
    )
    max_attempts: int = Field(
        default=8, ge=1, description="attempts before a retried delivery is dead-lettered"
    )
    dedup_window: float = Field(
        default=600.0,
        ge=0,
        description="seconds an acknowledged event id is remembered; 0: no de-duplication, "
        "consumers compete",
    )
    dedup_max: int = Field(default=100_000, ge=1, description="event ids remembered at most")
    retry_initial: float = Field(default=1.0, gt=0, description="first retry delay, seconds")
    retry_max: float = Field(default=300.0, gt=0, description="longest retry delay, seconds")
    max_length: int = Field(
        default=100_000, ge=1, description="events a group holds; past it sends are refused"
    )


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")
    format: Literal["json", "text"] = Field(default="json", description="log line format")


class Trigger(_Section):
    """A trigger: every event of the group ``name`` is POSTed to ``url``, as a CloudEvent signed
    per Standard Webhooks (target ``webhook``), or as the input parameters of a vRO workflow
    execution (target ``vro``: ``{url}/vco/api/workflows/{workflow_id}/executions``)."""

    #: Attributes of an event that a vro target can pass as extra workflow parameters.
    EVENT_ATTRIBUTES: ClassVar[tuple[str, ...]] = (
        "id",
        "name",
        "kind",
        "source",
        "principal",
        "time",
    )

    #: Secrets are Standard Webhooks' ``whsec_<base64 of the key>``; a key this short or shorter
    #: is refused (the spec asks for 24 to 64 bytes; 16 was this setting's old minimum).
    MIN_KEY_BYTES: ClassVar[int] = 16

    name: str = Field(description="the trigger's name, also its group's")
    pattern: str = Field(description="event names it delivers (a name or a topic pattern)")
    kind: Literal["internal", "external"] = Field(default="internal", description="event kind")
    target: Literal["webhook", "vro"] = Field(
        default="webhook",
        description="webhook (a signed CloudEvent) or vro (starts the vRO workflow workflow_id)",
    )
    url: str = Field(
        description="webhook: the http(s):// URL the events are POSTed to; vro: the "
        "Orchestrator's https:// address, such as https://vro.example.com:8281"
    )
    workflow_id: str | None = Field(
        default=None, description="vro: the id of the workflow each event starts"
    )
    username: str | None = Field(default=None, description="vro: user name for HTTP Basic")
    password: SecretStr | None = Field(default=None, description="vro: its password")
    password_file: Path | None = Field(
        default=None, description="vro: a file holding the password (one line)"
    )
    token: SecretStr | None = Field(
        default=None, description="vro: a bearer token, instead of username and password"
    )
    token_file: Path | None = Field(default=None, description="vro: a file holding the token")
    event_parameters: dict[str, str] = Field(
        default_factory=dict,
        description="vro: event attributes (id, name, kind, source, principal, time) passed as "
        "extra string parameters, each to the parameter name given",
    )
    secret: str | list[str] | None = Field(
        default=None,
        description="Standard Webhooks signing secret whsec_<base64>, or a list of them "
        "(key rotation: each signs every delivery)",
    )
    secret_file: Path | None = Field(
        default=None, description="a file holding the secret(s), one whsec_ secret a line"
    )
    mode: Literal["binary", "structured"] = Field(
        default="structured",
        description="CloudEvents HTTP mode: structured (every attribute in the signed body) or "
        "binary (the ce-* headers bound into webhook-id)",
    )
    timeout: float = Field(
        default=10.0,
        gt=0,
        description="seconds for the whole exchange: connect, send, the answer and its "
        "bounded body",
    )
    max_attempts: int | None = Field(
        default=None, ge=1, description="attempts before a dead letter; default groups.*"
    )
    max_in_flight: int = Field(
        default=16, ge=1, le=1000, description="deliveries under way at once"
    )
    filters: list[dict[str, Any]] = Field(
        default_factory=list,
        description="CloudEvents Subscriptions API filters (exact, prefix, suffix, all, any, "
        "not) over name, kind, source and properties; all of the list must hold, the rest are "
        "acknowledged undelivered",
    )

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            parse_filters(value, "triggers.filters")
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return check_group_name(value)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return _check_patterns([value])[0]

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        checked = _check_url(value, ("https", "http"), "triggers.url")
        if checked is None:
            raise ValueError("triggers.url is required")
        return checked

    @model_validator(mode="after")
    def _one_secret(self) -> Trigger:
        if self.target == "vro":
            self._check_vro()
            return self
        vro_only = [key for key in _VRO_ONLY if key in self.model_fields_set]
        if vro_only:
            raise ValueError(
                f'trigger {self.name!r}: {", ".join(vro_only)} only go with target = "vro"'
            )
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError(
                f"trigger {self.name!r}: give its signing secret as secret or as secret_file "
                "(one of them)"
            )
        if self.secret is not None:
            try:
                self._keys([self.secret] if isinstance(self.secret, str) else self.secret)
            except ConfigurationError as exc:
                raise ValueError(str(exc)) from None
        return self

    def _check_vro(self) -> None:
        who = f"trigger {self.name!r} (target vro)"
        for key in ("secret", "secret_file", "mode"):
            if key in self.model_fields_set:
                raise ValueError(
                    f"{who}: vRO verifies no webhook signature, so {key} has no use; it "
                    "authenticates with username and password, or a token"
                )
        parts = urlsplit(self.url)
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{who}: give the credentials as username and password, not in url")
        if parts.query or parts.fragment or "/vco/" in parts.path + "/":
            raise ValueError(
                f"{who}: url is the Orchestrator's address, such as "
                "https://vro.example.com:8281 (no /vco/... path, query or fragment): the "
                "bridge adds /vco/api/workflows/{workflow_id}/executions"
            )
        if parts.scheme != "https" and not _is_loopback(parts.hostname or ""):
            raise ValueError(
                f"{who}: url must be https:// (the credentials would cross the network in "
                "clear); http:// only to a loopback address"
            )
        if self.workflow_id is None:
            raise ValueError(f"{who}: workflow_id is required (the id of the workflow to start)")
        if not _WORKFLOW_ID.fullmatch(self.workflow_id):
            raise ValueError(
                f"{who}: workflow_id {self.workflow_id[:80]!r} is not a vRO workflow id: "
                "1 to 128 letters, digits and '-', such as c0278910-9ae2-46c5-bb45-2292fe88e3ab"
            )
        basic = self.password is not None or self.password_file is not None
        bearer = self.token is not None or self.token_file is not None
        if (self.password is not None and self.password_file is not None) or (
            self.token is not None and self.token_file is not None
        ):
            raise ValueError(f"{who}: give the password (or token) inline or as a file, not both")
        if basic == bearer:
            raise ValueError(
                f"{who}: give username with password (or password_file), or a token (or "
                "token_file): one of them"
            )
        if basic and not self.username:
            raise ValueError(f"{who}: a password needs its username")
        if bearer and self.username is not None:
            raise ValueError(f"{who}: username goes with a password, not with a token")
        if self.username is not None and not _USERNAME.fullmatch(self.username):
            raise ValueError(
                f"{who}: username must be printable text without ':' (HTTP Basic cannot carry it)"
            )
        try:
            self.authorization(read_files=False)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        names: set[str] = set()
        for attribute, parameter in self.event_parameters.items():
            if attribute not in self.EVENT_ATTRIBUTES:
                raise ValueError(
                    f"{who}: event_parameters has {attribute[:40]!r}, not an event attribute "
                    f"(one of {', '.join(self.EVENT_ATTRIBUTES)})"
                )
            if not _PARAMETER.fullmatch(parameter) or parameter in names:
                raise ValueError(
                    f"{who}: event_parameters.{attribute} must name a parameter of its own "
                    "(1 to 200 printable characters, no '=')"
                )
            names.add(parameter)

    def _secret_file(self, path: Path, what: str) -> str:
        try:
            with path.open("rb") as file:
                data = file.read(_SECRET_FILE_BYTES + 1)
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"trigger {self.name!r}: cannot read {what} {str(path)!r}: {exc}"
            ) from None
        if len(data) > _SECRET_FILE_BYTES:
            raise ConfigurationError(
                f"trigger {self.name!r}: {what} {str(path)!r} is larger than "
                f"{_SECRET_FILE_BYTES // 1024} KiB: not a password or token"
            )
        return text.removesuffix("\n").removesuffix("\r")

    def authorization(self, *, read_files: bool = True) -> str | None:
        """A vro target's ``Authorization`` header value (``Basic`` or ``Bearer``), from the
        inline credentials or their files (``password_file``, ``token_file``: the file's text
        without its final line break); None for a webhook. ``ConfigurationError`` if a file
        cannot be read or a credential is empty or holds what a header cannot carry.
        ``read_files=False`` checks the inline credentials only (and answers None for a file)."""
        if self.target != "vro":
            return None
        who = f"trigger {self.name!r} (target vro)"
        if self.token is not None or self.token_file is not None:
            if self.token is not None:
                token = self.token.get_secret_value()
            elif not read_files:
                return None
            else:
                assert self.token_file is not None
                token = self._secret_file(self.token_file, "token_file").strip()
            if not _TOKEN.fullmatch(token):
                raise ConfigurationError(
                    f"{who}: the token is empty or holds spaces or control characters"
                )
            return f"Bearer {token}"
        if self.password is not None:
            password = self.password.get_secret_value()
        elif not read_files:
            return None
        else:
            assert self.password_file is not None
            password = self._secret_file(self.password_file, "password_file")
        if not _PASSWORD.fullmatch(password):
            raise ConfigurationError(f"{who}: the password is empty or holds control characters")
        pair = f"{self.username}:{password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def _keys(self, secrets: list[str], where: str = "secret") -> list[bytes]:
        """The HMAC keys of ``whsec_`` secrets; ``ConfigurationError`` naming the trigger and the
        first that is not one (the secret itself is never shown)."""
        if not secrets:
            raise ConfigurationError(f"trigger {self.name!r}: {where} holds no secret")
        keys = []
        for number, text in enumerate(secrets, 1):
            which = f"{where} (secret {number})" if len(secrets) > 1 else where
            encoded = text.strip()
            if not encoded.startswith("whsec_"):
                raise ConfigurationError(
                    f"trigger {self.name!r}: {which} is not a Standard Webhooks secret "
                    'whsec_<base64>; make one with `python -c "import base64, secrets; '
                    "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\"`"
                )
            body = encoded.removeprefix("whsec_")
            try:
                key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
            except binascii.Error:
                raise ConfigurationError(
                    f"trigger {self.name!r}: {which} is not base64 after whsec_"
                ) from None
            if len(key) < self.MIN_KEY_BYTES:
                raise ConfigurationError(
                    f"trigger {self.name!r}: {which} is a key of {len(key)} bytes, fewer than "
                    f"{self.MIN_KEY_BYTES}"
                )
            keys.append(key)
        return keys

    def signing_keys(self) -> list[bytes]:
        """The HMAC keys that sign each delivery, from ``secret`` or ``secret_file`` (one
        ``whsec_`` secret a line; blank lines and ``#`` comments skipped); ``ConfigurationError``
        if the file cannot be read or holds anything else."""
        if self.secret is not None:
            return self._keys([self.secret] if isinstance(self.secret, str) else self.secret)
        assert self.secret_file is not None
        where = f"secret_file {str(self.secret_file)!r}"
        try:
            text = self.secret_file.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"trigger {self.name!r}: cannot read {where}: {exc}") from None
        lines = [line.strip() for line in text.splitlines()]
        return self._keys([line for line in lines if line and not line.startswith("#")], where)


class Settings(BaseSettings):
    """All configuration of the library, the CLI and the daemon."""

    model_config = SettingsConfigDict(
        env_prefix="CUSTOMEVENT_",
        env_nested_delimiter="__",
        extra="forbid",
    )
    config_file: ClassVar[Path | None] = None
    secrets_dir: ClassVar[Path | None] = None

    amqp: AmqpSettings = Field(default_factory=AmqpSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    groups: GroupSettings = Field(default_factory=GroupSettings)
    triggers: list[Trigger] = Field(
        default_factory=list, description="webhooks: groups delivered to HTTP services"
    )
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.secrets_dir is not None:
            sources.append(
                NestedSecretsSettingsSource(
                    settings_cls,  # type: ignore[arg-type]
                    secrets_dir=cls.secrets_dir,
                    secrets_dir_missing="ok",
                    secrets_prefix="",
                    secrets_nested_delimiter="__",
                )
            )
        if cls.config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.config_file))
        return tuple(sources)


def section_models() -> dict[str, tuple[type[BaseModel], bool]]:
    """Each settings section's model, and whether the section is a list of them (a TOML array
    of tables, like ``[[triggers]]``): what the references and the chart's schema describe."""
    sections: dict[str, tuple[type[BaseModel], bool]] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        is_list = typing.get_origin(annotation) is list
        model = typing.get_args(annotation)[0] if is_list else annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), name
        sections[name] = (model, is_list)
    return sections


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(settings)"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


class _Defaults(Settings):
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def default_settings() -> Settings:
    """The settings with every key at its default, read from no environment, file or secret."""
    return _Defaults()


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    secrets_dir: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read the settings from a TOML file, the secrets directory and the environment.

    ``config_file`` defaults to ``$CUSTOMEVENT_CONFIG``; ``secrets_dir`` to
    ``$CUSTOMEVENT_SECRETS_DIR`` or ``/run/secrets/customevent`` when that exists. Raises
    ``ConfigurationError`` naming each bad key.
    """
    path = config_file or os.environ.get("CUSTOMEVENT_CONFIG") or None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigurationError(f"config file {str(path)!r} does not exist or is not a file")
    secrets = secrets_dir or os.environ.get("CUSTOMEVENT_SECRETS_DIR") or None
    if secrets is None and Path(DEFAULT_SECRETS_DIR).is_dir():
        secrets = DEFAULT_SECRETS_DIR
    if secrets is not None and not Path(secrets).is_dir():
        raise ConfigurationError(f"secrets directory {str(secrets)!r} is not a directory")
    bound = type(
        "Settings",
        (Settings,),
        {
            "config_file": path,
            "secrets_dir": Path(secrets) if secrets is not None else None,
            "__module__": __name__,
        },
    )
    try:
        settings: Settings = bound(**overrides)
        return settings
    except ValidationError as exc:
        source = f" (config file {str(path)!r})" if path else ""
        raise ConfigurationError(f"bad settings{source}: {_describe(exc)}") from None
    except ValueError as exc:  # a TOML syntax error, or JSON in an environment variable
        source = f"config file {str(path)!r}" if path else "the environment"
        raise ConfigurationError(f"cannot read settings from {source}: {exc}") from None
