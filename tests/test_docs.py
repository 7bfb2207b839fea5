"""The documentation: its examples run (the library's on both buses, every shell and Python block
of README.md and docs/ against the daemon `make serve` starts), its commands parse, and it builds
strictly.

A fenced block may be preceded by a marker that says how the tests treat it:

- ``<!-- docs-test: while sending NAME -->``: run it while a second shell keeps sending the
  external event NAME (property ``sent-by=docs-test``) to the daemon; it must print that property;
- ``<!-- docs-test: excerpt of docs/examples/FILE.py -->``: a fragment whose lines appear, in order,
  in that example, which the tests run;
- ``<!-- docs-test: see TEST -->``: a test of that name runs it in a way of its own;
- ``<!-- docs-test: skip: REASON -->``: not run here, for the reason given.

Every other ``sh`` and ``python`` block runs as written, against the quick-start daemon on a free
port (``127.0.0.1:8280`` in the text becomes that port), and must exit 0.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapter import Event, load_settings
from adapter._bus.amqp._queues import group_queue
from adapter._cli import _build_parser
from adapter._secrets import verify_secret
from adapter._settings import section_models
from adapter.testing import BridgeDaemon
from tests.support.docs import docs_hooks, load_module
from tests.support.site import build_site

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
VENV_BIN = Path(sys.executable).parent
# Examples that need more than the bus CUSTOMEVENT_AMQP__URL names, and the test that runs each.
SPECIAL_EXAMPLES = {
    "wait_through_the_daemon": "test_the_daemon_example_runs_against_the_quickstart_daemon",
    "publish_with_any_amqp_client": "test_any_amqp_client_is_a_sender",
    "test_my_service": "test_the_fixtures_work_in_a_project_of_its_own",
    "webhook_receiver": "test_the_webhook_receiver_example_checks_what_a_trigger_sends",
}
ALL_EXAMPLES = sorted((DOCS / "examples").glob("*.py"))
EXAMPLES = [path for path in ALL_EXAMPLES if path.stem not in SPECIAL_EXAMPLES]
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^"]+)"$', re.MULTILINE)
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|console)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
OPERATORS = {"&&", "||", "|", ";", "&"}
# What each example's main() returns, beyond "an event arrived".
EXPECTED: dict[str, Any] = {
    "send_and_wait": {"answer": "42"},
    "wait_from_service": {"approved": "yes", "approver": "ops"},
    "sync_script": {"status": "ok", "size": "12GiB"},
    "resumable_wait": {"status": "ok"},
    "provision_vm": {"ip": "10.0.0.42"},
    "group_worker": ["web-1", "web-2"],
    "correlate": {"matched": "web-01", "filtered": "web-04"},
}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMEVENT_")}


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
    main = load_module(path).main
    # Examples that name their events take a unique name, so runs never see each other's events.
    args = [unique_name] if inspect.signature(main).parameters else []
    try:
        result = asyncio.run(main(*args)) if inspect.iscoroutinefunction(main) else main(*args)
    finally:
        if example_bus == "rabbitmq":
            _delete_example_groups()
    assert result, f"{path.name} returned {result!r}"
    if isinstance(result, Event) and path.stem in EXPECTED:
        assert result.properties == EXPECTED[path.stem]
    elif path.stem in EXPECTED:
        assert result == EXPECTED[path.stem]


def _delete_example_groups() -> None:
    """The durable queues the group examples made (``example-*`` groups)."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True, timeout=60
    )
    for queue in listing.stdout.split():
        if queue.startswith(group_queue("customevents", "example-")):
            subprocess.run(["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True)


def test_examples_are_in_the_docs_and_snippets_exist() -> None:
    included = {m["path"] for page in PAGES for m in SNIPPET.finditer(page.read_text())}
    for path in included:
        assert (ROOT / path).is_file(), f"a page includes {path}, which does not exist"
    shown = included | {block.argument for block in BLOCKS if block.verb == "excerpt of "}
    for path in ALL_EXAMPLES:
        assert f"docs/examples/{path.name}" in shown, f"no page includes or quotes {path.name}"
    test_names = _test_names()
    for stem, test in SPECIAL_EXAMPLES.items():
        assert (DOCS / "examples" / f"{stem}.py").is_file(), stem
        assert test in test_names, f"no test {test} runs docs/examples/{stem}.py"


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


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_page_uses_real_cli_options(page: Path) -> None:
    for argv in customevent_commands(page):
        if "--" in argv and argv[0] == "listen":
            argv = argv[: argv.index("--")]  # listen's COMMAND: not the CLI's to parse
        try:
            _build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{page.name}: `customevent {shlex.join(argv)}` does not parse ({exc})")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quickstart_command(verb: str, page: Path = DOCS / "quickstart.md") -> list[str]:
    for argv in customevent_commands(page):
        if argv[0] == verb:
            return argv
    raise AssertionError(f"{page.name} has no `customevent {verb}`")


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


# -- the daemon `make serve` starts ---------------------------------------------------------------


@dataclass
class QuickstartDaemon:
    """``make serve``'s daemon, on a free port: ``env`` is a shell of the quick start."""

    port: int
    process: subprocess.Popen[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**_clean_env(), "PATH": path, "CUSTOMEVENT_HTTP__PORT": str(self.port)}

    def send(self, name: str, properties: str = "sent-by%3Ddocs-test") -> None:
        url = f"{self.url}/vco/api/customevent/{name}?properties={properties}"
        assert httpx.post(url, timeout=10).status_code == 200


def _make_serve() -> list[str]:
    """The command of the Makefile's ``serve`` recipe."""
    makefile = (ROOT / "Makefile").read_text()
    serve = re.search(r"^serve:.*\n\t(?P<recipe>.+)$", makefile, re.MULTILINE)
    assert serve is not None, "the Makefile has no serve recipe"
    return shlex.split(serve["recipe"].replace("$(VENV)/bin/", f"{VENV_BIN}/"))


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuickstartDaemon]:
    port = _free_port()
    log = tmp_path_factory.mktemp("quickstart") / "daemon.log"
    with log.open("w") as sink:  # a file, not a pipe that a chatty daemon could fill
        process = subprocess.Popen(
            _make_serve(),
            cwd=ROOT,
            env={**_clean_env(), "CUSTOMEVENT_HTTP__PORT": str(port)},
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    daemon = QuickstartDaemon(port, process)
    try:
        for _ in range(300):
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{daemon.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield daemon
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0, log.read_text()


def test_the_quickstart_daemon(quickstart: QuickstartDaemon) -> None:
    """`make serve` runs what the pages say, with the demo principal they document."""
    assert _make_serve()[1:] == ["serve", "--config", "config/quickstart.toml"]
    for page in (ROOT / "README.md", DOCS / "quickstart.md"):
        assert "make serve" in page.read_text()
        assert "customevent serve --config config/quickstart.toml" in page.read_text(), page
    settings = load_settings(ROOT / "config" / "quickstart.toml")
    assert settings.amqp.url is None and settings.auth.anonymous
    [ops] = settings.auth.principals
    assert ops.name == "ops" and ops.allow == ["#"]
    assert ops.password_hash and verify_secret("s3cret", ops.password_hash)
    token = "ops-demo-token-printed-in-the-docs-0001"
    assert ops.token_hash and verify_secret(token, ops.token_hash)
    events = f"{quickstart.url}/api/v1/events/vm.created"
    assert httpx.post(events, json={}, auth=("ops", "s3cret")).status_code == 202
    assert httpx.post(events, json={}, auth=("ops", "wrong")).status_code == 401
    bearer = {"Authorization": "Bearer ops-demo-token-printed-in-the-docs-0001"}
    assert httpx.post(events, json={}, headers=bearer).status_code == 202


def test_quickstart_daemon_curl_and_wait(quickstart: QuickstartDaemon) -> None:
    """The quick start's waiter and curl, as README.md repeats them: the waiter says where it
    waits, as the page shows, then prints what curl sent."""
    wait = _quickstart_command("wait")
    assert _quickstart_command("wait", ROOT / "README.md") == wait
    curl = next(
        argv
        for line in _shell_lines(DOCS / "quickstart.md")
        for argv in _commands(line)
        if argv[0] == "curl"
    )
    assert shlex.join(curl) in (ROOT / "README.md").read_text()
    waiter = _customevent(wait, quickstart.env)
    try:
        script = shlex.join(curl).replace("127.0.0.1:8280", f"127.0.0.1:{quickstart.port}")
        # The waiter binds on its own time; send (as curl does) until it has its event.
        for _ in range(300):
            if waiter.poll() is not None:
                break
            subprocess.run(["bash", "-c", script], check=True, capture_output=True, timeout=30)
            time.sleep(0.1)
        out, err = waiter.communicate(timeout=30)
    finally:
        _stop(waiter)
    assert waiter.returncode == 0, err
    assert out == "answer=42\n"
    sample = re.search(r"^customevent: waiting .*$", (DOCS / "quickstart.md").read_text(), re.M)
    assert sample is not None
    before, _, rest = sample[0].replace("8280", str(quickstart.port)).partition(" (until ")
    shown = re.escape(before) + r" \(until [0-9T:Z-]+\)" + re.escape(rest.partition(")")[2])
    assert re.fullmatch(shown, err.splitlines()[0]), (sample[0], err)


def test_the_daemon_example_runs_against_the_quickstart_daemon(
    quickstart: QuickstartDaemon, unique_name: str
) -> None:
    main = load_module(DOCS / "examples" / "wait_through_the_daemon.py").main
    default = inspect.signature(main).parameters["daemon_url"].default
    assert default == "http://ops:s3cret@127.0.0.1:8280"
    event = asyncio.run(main(unique_name, default.replace("8280", str(quickstart.port))))
    assert event is not None
    assert (event.properties, event.kind, event.principal) == ({"vm": "web-01"}, "external", "ops")


@pytest.mark.rabbitmq
def test_any_amqp_client_is_a_sender(
    amqp_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUSTOMEVENT_AMQP__URL", amqp_url)
    event = asyncio.run(
        load_module(DOCS / "examples" / "publish_with_any_amqp_client.py").main(unique_name)
    )
    assert event is not None
    assert (event.name, event.kind, event.properties) == (unique_name, "internal", {"vm": "web-01"})
    assert event.source == "amqp"


# -- every example block of the pages -------------------------------------------------------------

FENCE = re.compile(
    r"^(?:<!-- docs-test: (?P<marker>.+?) -->\n)?```(?P<info>[^\n]*)\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
VERBS = ("skip:", "see ", "while sending ", "excerpt of ")


@dataclass(frozen=True)
class Block:
    """A shell or Python block of a page, with what its marker says."""

    page: Path
    line: int
    language: str
    body: str
    verb: str | None
    argument: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            language = {"sh": "shell", "bash": "shell", "console": "shell"}.get(
                match["info"].strip(), match["info"].strip()
            )
            if language not in ("shell", "python"):
                continue  # text, TOML, YAML...; `--8<--` includes are run as examples above
            verb, argument = None, ""
            marker = match["marker"]
            if marker is not None:
                marker = marker.strip()
                verb = next((v for v in VERBS if marker.startswith(v)), marker)
                argument = marker[len(verb) :].strip()
            line = text.count("\n", 0, match.start("info")) + 1
            found.append(Block(page, line, language, match["body"], verb, argument))
    return found


BLOCKS = _blocks()
RUN = [block for block in BLOCKS if block.verb in (None, "while sending ")]


def _test_names() -> set[str]:
    return {
        match[1]
        for path in (ROOT / "tests").glob("test_*.py")
        for match in re.finditer(r"^(?:async )?def (test_\w+)\(", path.read_text(), re.MULTILINE)
    }


def test_every_block_is_run_or_says_why_not() -> None:
    assert len(RUN) >= 10, [block.id for block in RUN]
    tests = _test_names()
    for block in BLOCKS:
        assert block.verb in (None, *VERBS), f"{block.id}: unknown marker {block.verb!r}"
        if block.verb == "skip:":
            assert len(block.argument) > 10, f"{block.id}: say why it is not run"
        elif block.verb == "see ":
            assert block.argument in tests, f"{block.id}: no test {block.argument}"
        elif block.verb == "excerpt of ":
            _assert_excerpt(block)


def _assert_excerpt(block: Block) -> None:
    source = ROOT / block.argument
    assert source.is_file(), f"{block.id}: {block.argument} does not exist"
    assert source.parent == DOCS / "examples", f"{block.id}: excerpts come from docs/examples/"
    lines = iter(line.strip() for line in source.read_text().splitlines())
    for wanted in (line.strip() for line in block.body.splitlines() if line.strip()):
        assert wanted in lines, f"{block.id}: {wanted!r} is not in {block.argument} (in order)"


def _as_written(block: Block, daemon: QuickstartDaemon) -> str:
    # The daemon listens on a free port, not on 8280, which a user's own `make serve` may hold.
    body = block.body.replace("127.0.0.1:8280", f"127.0.0.1:{daemon.port}")
    return body.replace(".venv/bin/", f"{VENV_BIN}/")


@pytest.mark.parametrize("block", RUN, ids=[block.id for block in RUN])
def test_the_block_runs_against_the_quickstart_daemon(
    block: Block, quickstart: QuickstartDaemon, tmp_path: Path
) -> None:
    script = _as_written(block, quickstart)
    if block.language == "python":
        # The zeep example builds a client from "a vCO WSDL you already have": here is one.
        shutil.copy(ROOT / "tests" / "fixtures" / "vco-webcontrol.wsdl", tmp_path / "vmo.wsdl")
        (tmp_path / "example.py").write_text(script)
        argv, cwd = [sys.executable, "example.py"], tmp_path
    else:
        argv, cwd = ["bash", "-euo", "pipefail", "-c", script], ROOT
    process = subprocess.Popen(
        argv, cwd=cwd, env=quickstart.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        if block.verb == "while sending ":
            # A second shell: send until the block, whose wait binds on its own time, is done.
            for _ in range(600):
                if process.poll() is not None:
                    break
                quickstart.send(block.argument)
                time.sleep(0.1)
        out, err = process.communicate(timeout=120)
    finally:
        _stop(process)
    assert process.returncode == 0, f"{block.id} failed:\n{script}\n{out}\n{err}"
    if block.verb == "while sending ":
        assert "docs-test" in out, f"{block.id} did not print the event it waited for:\n{out}"


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


def test_metrics_reference_matches_what_a_daemon_serves() -> None:
    documented = {name for name, *_ in docs_hooks().metrics()}
    with BridgeDaemon() as daemon:
        text = httpx.get(f"{daemon.url}/metrics", timeout=10).text
    # Every family is described even before its first sample; prometheus_client adds a
    # ``_created`` gauge beside each counter and histogram, which is not a metric of ours.
    served = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(text)
        if family.name.startswith("customevent_") and not family.name.endswith("_created")
    }
    assert documented == served
    assert "\npython_info{" in text and "\nprocess_" in text  # the process's own, as documented


def test_settings_reference_names_every_key() -> None:
    hooks = docs_hooks()
    text = hooks.settings_reference()
    lists = {section for section, (_, is_list) in section_models().items() if is_list}
    for section, key, _ in hooks.settings_fields():
        if section in lists:  # a list of tables is given whole: one variable, one file
            assert f"## `[[{section}]]`" in text and f"| `{key}` |" in text
            assert f"`CUSTOMEVENT_{section.upper()}='[" in text
            continue
        assert f"`CUSTOMEVENT_{section.upper()}__{key.upper()}`" in text
        assert f"`{section}__{key}`" in text


def test_cli_reference_lists_every_option() -> None:
    text = docs_hooks().cli_reference()
    for command in ("serve", "send", "wait", "hash-secret"):
        assert f"## `customevent {command}`" in text
    for option in ("--until", "--wait-id", "--properties-file", "--event-id", "--kind", "--url"):
        assert option in text
    assert "| `2` |" in text and "| `69` |" in text


def test_http_reference_fails_loudly_without_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = docs_hooks()
    monkeypatch.setattr(hooks, "APP_FACTORIES", (("adapter._no_such_module", "create_app"),))
    with pytest.raises(hooks.GenerationError, match="no FastAPI app factory"):
        hooks.http_reference()
    assert "/api/v1/events/{name}/wait" in docs_hooks().http_reference()


def test_performance_page_shows_each_recorded_chart_with_when_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = docs_hooks()
    text = hooks.performance()
    run = json.loads((DOCS / "performance" / "run.json").read_text())
    assert {"core", "groups", "retain"} <= set(run["topics"])
    for entry in run["topics"].values():
        assert (DOCS / "performance" / entry["chart"]).is_file()
        assert f"](performance/{entry['chart']})" in text
        machine = entry["machine"]
        assert f"on {machine['cores']} cores and {machine['memory_gib']:g} GiB of memory" in text
        assert f"`{entry['command']}`" in text
    assert text.count("brokers and every process of the benchmark share") == len(run["topics"])
    assert "<!-- generate: performance -->" in (DOCS / "performance.md").read_text()
    monkeypatch.setattr(hooks, "PERFORMANCE", tmp_path)
    with pytest.raises(hooks.GenerationError, match="no recorded benchmark run"):
        hooks.performance()


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    build = build_site(tmp_path / "site")
    assert build.returncode == 0, build.stdout + build.stderr
    assert (tmp_path / "site" / "reference" / "http-api" / "index.html").is_file()
