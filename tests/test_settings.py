"""Settings: defaults, TOML file, secrets directory, environment, and errors naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from adapter import ConfigurationError, load_settings
from adapter._settings import section_models

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CUSTOMEVENT_"):
            monkeypatch.delenv(key)


def test_defaults_follow_the_contract() -> None:
    settings = load_settings()
    assert settings.amqp.url is None
    assert settings.amqp.exchange == "customevents"
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8280)
    assert settings.mqtt.prefix == "customevents"
    assert settings.auth.anonymous is False
    assert (settings.limits.max_bytes, settings.limits.max_properties) == (65536, 256)


def test_layers_toml_then_secrets_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[http]\nport = 9001\nhost = "0.0.0.0"\n[amqp]\nurl = "amqp://file/"\n')
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "amqp__url").write_text("amqp://u:p@from-secret:5672/")
    (secrets / "auth__principals").write_text('[{"name": "ops", "allow": ["vm.*"]}]')
    monkeypatch.setenv("CUSTOMEVENT_CONFIG", str(config))
    monkeypatch.setenv("CUSTOMEVENT_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("CUSTOMEVENT_HTTP__PORT", "9002")
    settings = load_settings()
    assert settings.http.port == 9002  # environment beats the file
    assert settings.http.host == "0.0.0.0"  # from the file
    assert settings.amqp.url == "amqp://u:p@from-secret:5672/"  # secret beats the file
    assert settings.auth.principals[0].allow == ["vm.*"]


def test_lists_and_tables_come_from_the_environment_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "CUSTOMEVENT_AUTH__PRINCIPALS", '[{"name": "ops", "token_hash": "h", "allow": ["#"]}]'
    )
    monkeypatch.setenv("CUSTOMEVENT_MQTT__EGRESS", '["alarm.#"]')
    settings = load_settings()
    assert settings.auth.principals[0].token_hash == "h"
    assert settings.mqtt.egress == ["alarm.#"]


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('[amqp]\nurl = "http://x"\n', "amqp.url"),
        ("[http]\nport = 70000\n", "http.port"),
        ("[http]\nbogus = 1\n", "http.bogus"),
        ('[[auth.principals]]\nname = "a"\nallow = ["a.b*"]\n', "auth.principals.0.allow"),
        ('[mqtt]\nprotocol = "4"\n', "mqtt.protocol"),
        ("[amqp\n", "cannot read settings"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, toml: str, words: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    with pytest.raises(ConfigurationError, match=words.replace(".", r"\.").replace("*", r"\*")):
        load_settings(config)


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMEVENT_HTTP__PORT", "eighty")
    with pytest.raises(ConfigurationError, match=r"http\.port"):
        load_settings()


def test_the_example_config_shows_every_key_and_loads() -> None:
    path = ROOT / "config" / "customevent.toml"
    data = tomllib.loads(path.read_text())
    text = path.read_text()
    settings = load_settings(path)
    assert settings is not None
    for section, (model, is_list) in section_models().items():
        if is_list:  # an array of tables, shown commented out: [[triggers]]
            assert f"# [[{section}]]" in text, f"[[{section}]] missing from {path.name}"
        else:
            assert section in data, f"[{section}] missing from {path.name}"
        for key in model.model_fields:
            assert f"{key} =" in text or f"# {key} =" in text, f"{section}.{key} not shown"
