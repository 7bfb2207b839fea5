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


_VRO = {
    "name": "start",
    "pattern": "vm.requested",
    "target": "vro",
    "url": "https://vro.example.com:8281",
    "workflow_id": "c0278910-9ae2-46c5-bb45-2292fe88e3ab",
    "username": "bridge@vsphere.local",
    "password": "secret: with a colon",
}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"workflow_id": None}, "workflow_id is required"),
        ({"workflow_id": "../../users"}, "workflow_id '../../users' is not a vRO workflow id"),
        ({"workflow_id": "x" * 129}, "is not a vRO workflow id"),
        ({"url": "http://vro.example.com"}, "url must be https://"),
        ({"url": "ftp://vro.example.com"}, r"triggers\.url must look like"),
        ({"url": "https://vro.example.com/vco/api"}, "no /vco/... path"),
        ({"url": "https://vro.example.com/?a=1"}, "no /vco/... path, query"),
        ({"url": "https://u:p@vro.example.com"}, "not in url"),
        ({"password": None}, "give username with password .* or a token"),
        ({"token": "t" * 40}, r"or a token \(or token_file\): one of them"),
        ({"password": None, "token": "t" * 40}, "username goes with a password, not with a token"),
        ({"password_file": "/x"}, "inline or as a file, not both"),
        ({"username": None}, "a password needs its username"),
        ({"username": "a:b"}, "username must be printable text without ':'"),
        ({"password": "line\nbreak"}, "the password is empty or holds control characters"),
        ({"username": None, "password": None, "token": "two words"}, "token is empty or holds"),
        ({"secret": "whsec_x"}, "vRO verifies no webhook signature, so secret has no use"),
        ({"mode": "binary"}, "so mode has no use"),
        ({"event_parameters": {"owner": "o"}}, "'owner', not an event attribute"),
        ({"event_parameters": {"id": "p", "name": "p"}}, r"event_parameters\.name must name a"),
        ({"event_parameters": {"id": "a=b"}}, r"event_parameters\.id must name a parameter"),
        ({"target": "soap"}, "target"),
    ],
)
def test_a_vro_trigger_is_checked_at_load(change: dict[str, object], words: str) -> None:
    trigger = {key: value for key, value in {**_VRO, **change}.items() if value is not None}
    with pytest.raises(ConfigurationError, match=words):
        load_settings(triggers=[trigger])


def test_a_vro_trigger_loads_and_reads_its_credentials(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("from a file\n")
    (tmp_path / "token").write_text("  bearer-token-0123456789  \n")
    basic = {**_VRO, "password": None, "password_file": str(tmp_path / "password")}
    token = {**_VRO, "username": None, "password": None, "token_file": str(tmp_path / "token")}
    loopback = {**_VRO, "url": "http://127.0.0.1:8281/prefix/", "workflow_id": "BD80" * 16}
    local = {**_VRO, "url": "http://localhost:8281"}
    settings = load_settings(
        triggers=[
            {k: v for k, v in t.items() if v is not None} | {"name": f"t{n}"}
            for n, t in enumerate([_VRO, basic, token, loopback, local])
        ]
    )
    inline, from_file, bearer, *_ = settings.triggers
    assert (
        inline.authorization() == "Basic YnJpZGdlQHZzcGhlcmUubG9jYWw6c2VjcmV0OiB3aXRoIGEgY29sb24="
    )
    assert from_file.authorization() == "Basic YnJpZGdlQHZzcGhlcmUubG9jYWw6ZnJvbSBhIGZpbGU="
    assert bearer.authorization() == "Bearer bearer-token-0123456789"
    assert "secret: with a colon" not in repr(settings)  # secrets never shown
    (tmp_path / "token").write_text("t" * (64 * 1024 + 1))
    with pytest.raises(ConfigurationError, match="is larger than 64 KiB"):
        bearer.authorization()
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ConfigurationError, match="token is empty"):
        bearer.authorization()
    (tmp_path / "password").unlink()
    with pytest.raises(ConfigurationError, match="trigger 't1': cannot read password_file"):
        from_file.authorization()


def test_vro_keys_on_a_webhook_trigger_are_refused() -> None:
    webhook = {"name": "w", "pattern": "vm.*", "url": "https://hook.example.com/"}
    webhook["secret"] = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFB"
    with pytest.raises(
        ConfigurationError, match='workflow_id, username only go with target = "vro"'
    ):
        load_settings(triggers=[{**webhook, "workflow_id": "abc", "username": "u"}])
    assert load_settings(triggers=[webhook]).triggers[0].authorization() is None
