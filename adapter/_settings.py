"""Configuration: defaults < TOML file < secrets directory < environment < explicit arguments.

Environment variables use the ``CUSTOMEVENT_`` prefix and ``__`` between levels
(``CUSTOMEVENT_AMQP__URL``); lists and tables come as JSON. The TOML file is named by ``--config``
or ``CUSTOMEVENT_CONFIG``; the secrets directory (``CUSTOMEVENT_SECRETS_DIR``, default
``/run/secrets/customevent``) holds one file per key, named like ``amqp__url``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ._exceptions import ConfigurationError, InvalidEventName
from ._names import validate_pattern

__all__ = [
    "AmqpSettings",
    "AuthSettings",
    "HttpSettings",
    "LimitsSettings",
    "LogSettings",
    "MqttSettings",
    "Principal",
    "Settings",
    "load_settings",
]

DEFAULT_SECRETS_DIR = "/run/secrets/customevent"


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


def _check_patterns(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            validate_pattern(pattern)
        except InvalidEventName as exc:
            raise ValueError(str(exc)) from None
    return patterns


class AmqpSettings(_Section):
    url: str | None = Field(
        default=None, description="amqp:// or amqps:// URL of RabbitMQ; unset: the in-process bus"
    )
    exchange: str = Field(default="customevents", description="durable topic exchange for events")
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
    ca_file: Path | None = Field(default=None, description="CA bundle for amqps://")
    cert_file: Path | None = Field(default=None, description="client certificate (PEM)")
    key_file: Path | None = Field(default=None, description="client private key (PEM)")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _check_url(value, ("amqp", "amqps"), "amqp.url")


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
    max_wait: float = Field(default=3600.0, gt=0, description="longest HTTP wait, seconds")
    rate_limit: float = Field(
        default=200.0, ge=0, description="sends per second per principal; 0: unlimited"
    )
    rate_burst: int = Field(default=400, ge=1, description="burst allowed above rate_limit")
    drain_seconds: float = Field(
        default=10.0, ge=0, description="on SIGTERM, time given to in-flight requests, seconds"
    )
    tls_cert_file: Path | None = Field(default=None, description="serve HTTPS with this cert")
    tls_key_file: Path | None = Field(default=None, description="private key for tls_cert_file")


class Principal(_Section):
    name: str = Field(min_length=1, description="user name for HTTP Basic")
    password_hash: str | None = Field(default=None, description="from customevent hash-secret")
    token_hash: str | None = Field(default=None, description="bearer token hash")
    allow: list[str] = Field(default_factory=list, description="event name patterns allowed")

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        return _check_patterns(value)


class AuthSettings(_Section):
    anonymous: bool = Field(default=False, description="let anyone send external events")
    anonymous_allow: list[str] = Field(
        default_factory=lambda: ["#"], description="patterns anonymous callers may use"
    )
    principals: list[Principal] = Field(default_factory=list, description="who may call")

    @field_validator("anonymous_allow")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        return _check_patterns(value)


class LimitsSettings(_Section):
    max_bytes: int = Field(default=64 * 1024, ge=1, description="properties bytes per event")
    max_properties: int = Field(default=256, ge=1, description="properties per event")


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")
    format: Literal["json", "text"] = Field(default="json", description="log line format")


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


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(settings)"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


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
