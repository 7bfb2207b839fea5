"""The documentation: its examples run on both buses, its commands parse, and it builds strictly."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from adapter import Event
from adapter._cli import _build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^"]+)"$', re.MULTILINE)
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|console)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
OPERATORS = {"&&", "||", "|", ";", "&"}
# What each example's main() returns, beyond "an event arrived".
EXPECTED: dict[str, Any] = {
    "send_and_wait": {"answer": "42"},
    "wait_from_service": {"approved": "yes", "approver": "ops"},
    "sync_script": {"status": "ok", "size": "12GiB"},
    "resumable_wait": {"status": "ok"},
}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMEVENT_")}


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}_{uuid.uuid4().hex}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hooks() -> ModuleType:
    return _load(DOCS / "hooks.py")


# -- examples -------------------------------------------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def example_bus(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs an example on the in-process bus, or on RabbitMQ through CUSTOMEVENT_AMQP__URL."""
    for key in list(os.environ):
        if key.startswith("CUSTOMEVENT_"):
            monkeypatch.delenv(key)
    if request.param == "rabbitmq":
        monkeypatch.setenv("CUSTOMEVENT_AMQP__URL", request.getfixturevalue("amqp_url"))
    return str(request.param)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: Path, example_bus: str, unique_name: str) -> None:
    main = _load(path).main
    # Examples that name their events take a unique name, so runs never see each other's events.
    args = [unique_name] if inspect.signature(main).parameters else []
    result = asyncio.run(main(*args)) if inspect.iscoroutinefunction(main) else main(*args)
    assert result, f"{path.name} returned {result!r}"
    if isinstance(result, Event) and path.stem in EXPECTED:
        assert result.properties == EXPECTED[path.stem]


def test_examples_are_in_the_docs_and_snippets_exist() -> None:
    included = {
        m["path"] for page in DOCS.rglob("*.md") for m in SNIPPET.finditer(page.read_text())
    }
    for path in included:
        assert (ROOT / path).is_file(), f"a page includes {path}, which does not exist"
    for path in EXAMPLES:
        assert f"docs/examples/{path.name}" in included, f"no page includes {path.name}"


# -- shell commands in the pages ------------------------------------------------------------------


def _shell_lines(page: Path) -> Iterator[str]:
    for block in SHELL_BLOCK.finditer(page.read_text()):
        yield from block["body"].replace("\\\n", " ").splitlines()


def _commands(line: str) -> Iterator[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    command: list[str] = []
    for token in [*lexer, ";"]:
        if token in OPERATORS:
            while command and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", command[0]):
                command.pop(0)  # VAR=value before the command
            if command:
                yield command
            command = []
        else:
            command.append(token)


def customevent_commands(page: Path) -> list[list[str]]:
    """Every ``customevent ...`` command in the page's shell blocks, as argv without the program."""
    return [
        argv[1:]
        for line in _shell_lines(page)
        for argv in _commands(line)
        if Path(argv[0]).name == "customevent"
    ]


def test_quickstart_commands_parse() -> None:
    commands = customevent_commands(DOCS / "quickstart.md")
    assert {c[0] for c in commands} >= {"send", "wait"}
    for argv in commands:
        try:
            _build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"quickstart.md: `customevent {shlex.join(argv)}` does not parse ({exc})")


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_every_page_uses_real_cli_options(page: Path) -> None:
    for argv in customevent_commands(page):
        try:
            _build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{page.name}: `customevent {shlex.join(argv)}` does not parse ({exc})")


def test_make_serve_is_what_the_quickstart_says() -> None:
    makefile = (ROOT / "Makefile").read_text()
    serve = re.search(r"^serve:.*\n\t(?P<recipe>.+)$", makefile, re.MULTILINE)
    assert serve is not None
    assert serve["recipe"].endswith("customevent serve --config config/quickstart.toml")
    assert (
        "customevent serve --config config/quickstart.toml" in (DOCS / "quickstart.md").read_text()
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quickstart_command(verb: str) -> list[str]:
    for argv in customevent_commands(DOCS / "quickstart.md"):
        if argv[0] == verb:
            return argv
    raise AssertionError(f"quickstart.md has no `customevent {verb}`")


def _customevent(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "adapter._cli", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_quickstart_daemon_curl_and_wait() -> None:
    """`make serve`, then `customevent wait` and the curl of the quick start, on a free port."""
    port = _free_port()
    env = {**_clean_env(), "CUSTOMEVENT_HTTP__PORT": str(port)}
    curl = next(
        argv
        for line in _shell_lines(DOCS / "quickstart.md")
        for argv in _commands(line)
        if argv[0] == "curl"
    )
    url = urlsplit(next(arg for arg in curl if arg.startswith("http://")))
    assert url.port == 8280
    send_url = urlunsplit(url._replace(netloc=f"127.0.0.1:{port}"))
    daemon = _customevent(["serve", "--config", "config/quickstart.toml"], env)
    waiter: subprocess.Popen[str] | None = None
    try:
        with httpx.Client(timeout=5) as http:
            for _ in range(200):
                assert daemon.poll() is None, daemon.communicate()[1]
                try:
                    if http.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            waiter = _customevent(_quickstart_command("wait"), env)
            # The waiter binds on its own time; send (as curl does) until it has its event.
            for _ in range(300):
                if waiter.poll() is not None:
                    break
                assert http.post(send_url).status_code == 200
                time.sleep(0.1)
            out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err
        assert out == "answer=42\n"
    finally:
        if waiter is not None:
            _stop(waiter)
        _stop(daemon)


@pytest.mark.rabbitmq
def test_quickstart_cli_on_rabbitmq(amqp_url: str, unique_name: str) -> None:
    env = {**_clean_env(), "CUSTOMEVENT_AMQP__URL": amqp_url}
    wait = [unique_name if a == "demo.hello" else a for a in _quickstart_command("wait")]
    send = [unique_name if a == "demo.hello" else a for a in _quickstart_command("send")]
    waiter = _customevent(wait, env)
    try:
        for _ in range(300):
            sent = subprocess.run(
                [sys.executable, "-m", "adapter._cli", *send],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert sent.returncode == 0, sent.stderr
            if "a waiter was bound" in sent.stdout:
                break
            time.sleep(0.1)
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err
        assert out == "answer=42\n"
    finally:
        _stop(waiter)


# -- generated reference --------------------------------------------------------------------------


def test_metrics_reference_matches_the_registry() -> None:
    from prometheus_client import REGISTRY

    documented = {name for name, *_ in _hooks().metrics()}
    importlib.import_module("adapter._daemon")
    registered = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in REGISTRY.collect()
        if family.name.startswith("customevent_")
    }
    assert documented == registered


def test_settings_reference_names_every_key() -> None:
    hooks = _hooks()
    text = hooks.settings_reference()
    for section, key, _ in hooks.settings_fields():
        assert f"`CUSTOMEVENT_{section.upper()}__{key.upper()}`" in text
        assert f"`{section}__{key}`" in text


def test_cli_reference_lists_every_option() -> None:
    text = _hooks().cli_reference()
    for command in ("serve", "send", "wait", "hash-secret"):
        assert f"## `customevent {command}`" in text
    for option in ("--until", "--wait-id", "--properties-file", "--event-id", "--kind", "--url"):
        assert option in text
    assert "| `2` |" in text and "| `69` |" in text


def test_http_reference_fails_loudly_without_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = _hooks()
    monkeypatch.setattr(hooks, "APP_FACTORIES", (("adapter._no_such_module", "create_app"),))
    with pytest.raises(hooks.GenerationError, match="no FastAPI app factory"):
        hooks.http_reference()
    assert "/api/v1/events/{name}/wait" in _hooks().http_reference()


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    config, site = str(ROOT / "mkdocs.yml"), str(tmp_path / "site")
    build = subprocess.run(
        # Not -q: it silences the warnings that --strict counts, and the build "passes".
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config, "-d", site],
        cwd=ROOT,
        env={**_clean_env(), "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert (tmp_path / "site" / "reference" / "http-api" / "index.html").is_file()
