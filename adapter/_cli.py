"""The ``customevent`` command: serve, send, wait, listen, group, dead, hash-secret.

Exit codes: 0 done; 2 ``wait`` reached its deadline with nothing received; 64 bad usage or input;
66 no such group, or no dead letter of the event named; 69 the bus or daemon is unavailable; 75
``group delete`` refused while consumers are attached (``--force``); 77 the broker or daemon
refused the credentials; 78 bad
configuration, or ``serve`` cannot listen on ``http.host:http.port`` (a port in use: choose
another with ``http.port`` or ``CUSTOMEVENT_HTTP__PORT``); 130 interrupted (Ctrl-C); 1 anything
else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

from opentelemetry import context as otel_context

from ._bus import Bus, check_wait_id
from ._bus._base import BROKER_SCHEMES, DAEMON_SCHEMES, scheme_of, seconds_until
from ._client import Client, make_bus
from ._cloudevents import to_structured_json
from ._event import Event
from ._exceptions import (
    AdapterError,
    BusUnavailable,
    ConfigurationError,
    InvalidInput,
    edge_of,
)
from ._filters import parse_filter_items
from ._groups import GroupInfo, check_group_name
from ._listen import listen
from ._match import parse_match_items
from ._names import validate_kind, validate_pattern
from ._properties import parse_properties
from ._secrets import hash_secret, hash_token
from ._settings import Settings, load_settings
from ._times import check_retain, parse_deadline_text, parse_duration_text
from ._trace_context import check_trace
from ._tracing import configure as configure_tracing
from ._tracing import remote_context
from ._version import __version__

__all__ = ["main", "parse_until", "shown_text", "subcommands"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DEADLINE = 2
EXIT_USAGE = 64
EXIT_NOINPUT = 66  # no such group, no such dead letter (NotFound)
EXIT_UNAVAILABLE = 69
EXIT_TEMPFAIL = 75  # group delete while consumers are attached (GroupInUse)
EXIT_NOPERM = 77
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130


def parse_until(text: str) -> datetime:
    """A deadline from ``--until``: a duration (``30s``, ``5m``, ``1h30m``) or an RFC 3339 time."""
    if text.strip().startswith("-"):
        raise InvalidInput(
            f"--until {text!r}: a deadline cannot be negative; give a duration from now "
            "(30s, 5m, 1h) or an RFC 3339 time (2026-01-02T15:04:05Z)"
        )
    return parse_deadline_text(text, "--until")


class _Parser(argparse.ArgumentParser):
    """A parser that exits 64 on a usage error and keeps its subcommands' action.

    argparse has no public way to find a parser's subcommands again; ``add_subparsers`` returns the
    action, whose ``choices`` (public) map each name to its parser, so the parser keeps it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        self.commands = action.choices
        return action

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="customevent",
        description="vRO-style custom events on RabbitMQ and MQTT: serve the bridge, "
        "send events, wait for them.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"customevent {__version__}",
        help="print the installed package's version and exit",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML settings file (default: $CUSTOMEVENT_CONFIG)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    serve = commands.add_parser(
        "serve",
        help="run the bridge daemon (HTTP, SOAP, MQTT -> bus)",
        description="Run the bridge daemon. Without amqp.url it runs on an in-process bus.",
    )
    serve.add_argument("--config", metavar="FILE", dest="sub_config", help="TOML settings file")

    def bus_options(command: argparse.ArgumentParser, *, kind: bool = True) -> None:
        command.add_argument(
            "--config", metavar="FILE", dest="sub_config", help="TOML settings file"
        )
        command.add_argument(
            "--url",
            help="amqp(s)://user:pass@host/ for RabbitMQ, or http(s)://[user:pass@]host:port "
            "for a bridge daemon (default: amqp.url from the settings, else the local daemon "
            "at http.host:http.port; a bearer token comes from $CUSTOMEVENT_TOKEN)",
        )
        if kind:
            command.add_argument(
                "--kind",
                choices=("internal", "external"),
                help="event kind (default: internal over AMQP; over HTTP always external)",
            )
        command.add_argument("--json", action="store_true", help="print JSON only")

    send = commands.add_parser(
        "send",
        help="send a custom event",
        description="Send a custom event; exit 0 once the bus confirmed it.",
    )
    send.add_argument("name", help="event name, e.g. vm.created")
    send.add_argument(
        "-p",
        "--property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a property (repeatable)",
    )
    send.add_argument(
        "--properties-file",
        metavar="FILE",
        help="serializedProperties text (name=value lines); '-' reads stdin",
    )
    send.add_argument("--event-id", help="your own event id (for de-duplication)")
    send.add_argument(
        "--retain",
        metavar="DURATION",
        help="keep the event this long (30s, 5m; at most amqp.max_retain) for waits that start "
        "later on its exact name",
    )
    bus_options(send)

    wait = commands.add_parser(
        "wait",
        help="wait for a custom event until a deadline",
        description="Wait for an event; print its properties as key=value lines and exit 0, "
        "or exit 2 at the deadline.",
    )
    wait.add_argument("name", help="event name, or a pattern with * and # words")
    wait.add_argument(
        "--until", required=True, help="deadline: a duration (30s, 5m, 1h) or RFC 3339 time"
    )
    wait.add_argument(
        "--wait-id", help="resumable wait: a restarted waiter with the same id gets what it missed"
    )
    wait.add_argument(
        "--match",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="answer only an event whose property KEY is VALUE (repeatable: all must hold); "
        "--json then says how many events on the name did not match (unmatched)",
    )
    wait.add_argument(
        "--cloudevent",
        action="store_true",
        help="print the event as one structured CloudEvent (JSON) instead",
    )
    bus_options(wait)

    listening = commands.add_parser(
        "listen",
        usage="customevent listen PATTERN --group GROUP [options] [-- COMMAND [ARGS ...]]",
        help="handle every event of a group: print it, or run a command per event",
        description="Join the group GROUP (created on first use, durable) and handle each event "
        "whose name matches PATTERN: print it (as wait does; JSON lines with --json) or run "
        "COMMAND with the event as JSON on stdin and CUSTOMEVENT_NAME, CUSTOMEVENT_EVENT_ID, "
        "CUSTOMEVENT_KIND in its environment. Exit 0 acknowledges the event, anything else "
        "retries it after a backoff. SIGTERM or Ctrl-C lets the running command finish, then "
        "stops. Needs RabbitMQ (amqp.url or --url amqp://...).",
    )
    listening.add_argument("pattern", help="event name, or a pattern with * and # words")
    listening.add_argument("--group", required=True, help="the group's name (its queue's)")
    listening.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="take only events whose KEY is VALUE (repeatable: all must hold); KEY is name, "
        "kind, source or a property (properties.KEY for a property called name, kind or "
        "source); the rest are acknowledged unhandled",
    )
    listening.add_argument(
        "--pass-env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass the listener's own environment variable NAME (a CUSTOMEVENT_* setting) to "
        "the command; by default none is passed, since they hold the AMQP password (repeatable)",
    )
    listening.add_argument(
        "--timeout",
        default="5m",
        help="stop a command still running after this long and retry its event (default 5m)",
    )
    bus_options(listening)

    dead = commands.add_parser(
        "dead",
        help="list or replay a group's dead letters",
        description="The events a group gave up on (after max_attempts, or dead-lettered by "
        "their handler), with the reason.",
    )
    dead_commands = dead.add_subparsers(dest="dead_command", metavar="ACTION", parser_class=_Parser)
    dead_commands.required = True
    dead_list = dead_commands.add_parser(
        "list",
        help="print the dead letters (JSON lines with --json); they stay where they are",
        description="Print the group's dead letters, oldest first: event id, kind, name, attempts "
        "and reason, or with --json one JSON object a line (the event, reason, attempts, first "
        "and last failure). They stay where they are.",
    )
    dead_list.add_argument("group", help="the group's name")
    bus_options(dead_list, kind=False)
    dead_replay = dead_commands.add_parser(
        "replay",
        help="deliver the dead letters to the group again, as first attempts",
        description="Give the group's dead letters (or only the one of --event-id) back to the "
        "group, as first attempts; print how many.",
    )
    dead_replay.add_argument("group", help="the group's name")
    dead_replay.add_argument("--event-id", help="replay only the dead letter of this event")
    bus_options(dead_replay, kind=False)
    dead_purge = dead_commands.add_parser(
        "purge",
        help="drop the group's dead letters",
        description="Drop every dead letter of the group; print how many.",
    )
    dead_purge.add_argument("group", help="the group's name")
    bus_options(dead_purge, kind=False)

    grouping = commands.add_parser(
        "group",
        help="list, purge or delete groups",
        description="The groups on the bus (durable queues that listen, the daemon's triggers "
        "and library subscribers share): list them, drop the events waiting in one, or delete "
        "one with its retries and dead letters. Needs RabbitMQ (amqp.url or --url amqp://...).",
    )
    group_commands = grouping.add_subparsers(
        dest="group_command", metavar="ACTION", parser_class=_Parser
    )
    group_commands.required = True
    group_list = group_commands.add_parser(
        "list",
        help="print each group: name, bindings, depth, consumers, dead letters",
        description="Print each group the bridge knows of (its registry of groups, and the "
        "triggers of the settings): name, bindings (kind.pattern), depth (events waiting), "
        "consumers attached and dead letters; with --json one JSON object a line.",
    )
    bus_options(group_list, kind=False)
    group_purge = group_commands.add_parser(
        "purge",
        help="drop the events waiting in a group",
        description="Drop the events waiting in the group, and those waiting for a retry; "
        "deliveries out with a consumer are not touched. Print how many.",
    )
    group_purge.add_argument("group", help="the group's name")
    bus_options(group_purge, kind=False)
    group_delete = group_commands.add_parser(
        "delete",
        help="delete a group with its retries and dead letters",
        description="Delete the group's queue, its retry queues and its dead letters. Refused "
        "(exit 75) while consumers are attached, unless --force, which cuts them off.",
    )
    group_delete.add_argument("group", help="the group's name")
    group_delete.add_argument(
        "--force", action="store_true", help="delete it even while consumers are attached"
    )
    bus_options(group_delete, kind=False)

    hashing = commands.add_parser(
        "hash-secret",
        help="hash a password or token read on stdin, for the config",
        description="Read a password (or, with --token, a bearer token) on stdin and print its "
        "hash for auth.principals: scrypt for a password_hash, a fast keyed hash for a "
        "token_hash.",
    )
    hashing.add_argument(
        "--token",
        action="store_true",
        help="hash a bearer token of at least 32 random characters (e.g. openssl rand -hex 32) "
        "for token_hash: checked in microseconds instead of scrypt's tens of milliseconds",
    )
    return parser


def _fail(message: str, code: int) -> int:
    print(f"customevent: error: {message}", file=sys.stderr)
    return code


def _exit_code(exc: AdapterError) -> int:
    return edge_of(exc).exit


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "sub_config", None) or args.config)


def _bus_for(args: argparse.Namespace, settings: Settings) -> tuple[Bus, str]:
    """The bus ``send`` and ``wait`` use (``--url``, else ``amqp.url``, else the local daemon),
    and what chose it, for the user."""
    if args.url:
        url, origin = args.url, "--url"
        schemes = (*BROKER_SCHEMES, *DAEMON_SCHEMES)
        if scheme_of(url) not in schemes:
            raise ConfigurationError(
                f"--url must be {', '.join(f'{scheme}://' for scheme in schemes)}, not {url!r}"
            )
    elif settings.amqp.url:
        url = settings.amqp.url
        origin = (
            "set by CUSTOMEVENT_AMQP__URL"
            if os.environ.get("CUSTOMEVENT_AMQP__URL")
            else "amqp.url in the settings"
        )
    else:
        host = settings.http.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        scheme = "https" if settings.http.tls_cert_file else "http"
        url, origin = f"{scheme}://{host}:{settings.http.port}", "no amqp.url is set"
    return make_bus(settings, url), origin


def _collect_properties(args: argparse.Namespace, settings: Settings) -> dict[str, str]:
    properties: dict[str, str] = {}
    if args.properties_file:
        if args.properties_file == "-":
            text = sys.stdin.read()
        else:
            try:
                with open(args.properties_file, encoding="utf-8") as handle:
                    text = handle.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidInput(f"cannot read --properties-file: {exc}") from None
        properties = parse_properties(
            text,
            max_bytes=settings.limits.max_bytes,
            max_properties=settings.limits.max_properties,
        )
    for item in args.property:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InvalidInput(f"-p {item!r}: expected KEY=VALUE")
        if name in properties:
            raise InvalidInput(f"-p {item!r}: property {name!r} is given twice")
        properties[name] = value
    return properties


async def _send(args: argparse.Namespace) -> int:
    settings = _settings(args)
    bus, _ = _bus_for(args, settings)
    properties = _collect_properties(args, settings)
    kind = args.kind or bus.default_kind
    client = Client(settings, bus=bus)
    # Validate before connecting: bad input should not wait for the broker's retries.
    event = client.prepare_event(
        args.name, properties, kind=kind, event_id=args.event_id, source="cli"
    )
    retain = None
    if args.retain is not None:
        retain = parse_duration_text(args.retain, "--retain")
        check_retain(retain, settings.amqp.max_retain)
    async with client:
        result = await client.send_event(event, retain=retain)
    sent = f"sent {kind} event {args.name!r} ({result.event_id})"
    if args.json:
        print(json.dumps(result.to_json()))
    elif retain is not None:
        bound = "a waiter was bound" if result.routed else "no waiter was bound yet"
        print(
            f"{sent}: {bound}; retained for {args.retain}, a wait on this name that starts "
            "within that time receives it"
        )
    elif result.routed:
        print(f"{sent}: a waiter was bound")
    else:
        print(f"{sent}: confirmed, but no waiter was bound, so nobody received it")
    return EXIT_OK


def _until_text(deadline: datetime) -> str:
    left = (deadline - datetime.now(UTC)).total_seconds()
    return f"up to {max(0, round(left))}s (until {deadline:%Y-%m-%dT%H:%M:%SZ})"


async def _countdown(name: str, deadline: datetime, stream: TextIO) -> None:
    try:
        while True:
            left = max(0, int((deadline - datetime.now(UTC)).total_seconds() + 0.999))
            stream.write(f"\rwaiting for {name!r}: {left}s left ")
            stream.flush()
            await asyncio.sleep(1)
    finally:
        stream.write("\r\033[K")
        stream.flush()


def _nothing_came(args: argparse.Namespace, kind: str) -> int:
    if not (args.json or args.cloudevent):
        print(f"customevent: no {kind} event {args.name!r} before the deadline", file=sys.stderr)
    return EXIT_DEADLINE


async def _wait(args: argparse.Namespace) -> int:
    settings = _settings(args)
    bus, origin = _bus_for(args, settings)
    kind = validate_kind(args.kind or bus.default_kind)
    validate_pattern(args.name)
    if args.cloudevent and args.json:
        raise InvalidInput("give --json or --cloudevent, not both")
    check_wait_id(args.wait_id)
    match = parse_match_items(args.match)
    deadline = parse_until(args.until)
    if not (args.json or args.cloudevent):
        # Which bus and kind: a wait on the wrong one (a leftover CUSTOMEVENT_AMQP__URL) would
        # otherwise look like an event that never came.
        what = "matching" if "*" in args.name or "#" in args.name else "named"
        print(
            f"customevent: waiting {_until_text(deadline)} for an {kind} event {what} "
            f"{args.name!r} on {bus.where} ({origin})",
            file=sys.stderr,
            flush=True,
        )
    show_countdown = (
        not (args.json or args.cloudevent) and sys.stdout.isatty() and sys.stderr.isatty()
    )
    async with contextlib.AsyncExitStack() as stack:
        if seconds_until(deadline) <= 0:
            return _nothing_came(args, kind)
        try:
            # The deadline bounds the connection attempts too: a wait is answered by then.
            async with asyncio.timeout(max(seconds_until(deadline), 0.0)):
                client = await stack.enter_async_context(Client(settings, bus=bus))
                waiter = await stack.enter_async_context(
                    client.expect(
                        kind, args.name, until=deadline, wait_id=args.wait_id, match=match
                    )
                )
        except TimeoutError:
            raise BusUnavailable(
                f"could not reach the bus before the deadline ({args.until}); nothing was waited "
                "for"
            ) from None
        ticker = (
            asyncio.create_task(_countdown(args.name, deadline, sys.stderr), name="countdown")
            if show_countdown
            else None
        )
        try:
            event = await waiter
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
    unmatched = {"unmatched": waiter.unmatched} if match is not None else {}
    if event is None:
        if args.json and unmatched:
            print(json.dumps({"event": None, **unmatched}), flush=True)
        return _nothing_came(args, kind)
    if args.cloudevent:
        print(to_structured_json(event).decode("utf-8"), flush=True)
    elif args.json:
        print(json.dumps({**event.to_json(), **unmatched}, ensure_ascii=False), flush=True)
    else:
        _print_event(event, False)
    return EXIT_OK


def _print_event(event: Event, as_json: bool) -> None:
    """An event on stdout: its properties as ``key=value`` lines, or one JSON object."""
    if as_json:
        print(json.dumps(event.to_json(), ensure_ascii=False), flush=True)
    else:
        for key, value in event.properties.items():
            print(f"{key}={value}")
        sys.stdout.flush()


async def _listen(args: argparse.Namespace) -> int:
    settings = _settings(args)
    bus, _ = _bus_for(args, settings)
    kind = validate_kind(args.kind or bus.default_kind)
    validate_pattern(args.pattern)
    check_group_name(args.group)
    filters = parse_filter_items(args.filter)
    timeout = parse_duration_text(args.timeout, "--timeout").total_seconds()
    if timeout <= 0:
        raise InvalidInput("--timeout must be longer than 0s")
    command: list[str] = args.run
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def show(event: Event) -> None:
        _print_event(event, args.json)
        if not args.json:
            print(flush=True)  # a blank line between events

    async with Client(settings, bus=bus) as client:
        if not args.json:
            what = f"running {' '.join(command)!r}" if command else "printing"
            print(
                f"customevent: listening as group {args.group!r} for {kind} events matching "
                f"{args.pattern!r} on {bus.where}, {what} each; Ctrl-C stops",
                file=sys.stderr,
                flush=True,
            )
        await listen(
            client,
            args.pattern,
            group=args.group,
            kind=kind,
            command=command or None,
            command_timeout=timeout,
            show=show,
            stop=stop,
            pass_env=args.pass_env,
            filters=filters,
        )
    return EXIT_OK


async def _dead(args: argparse.Namespace) -> int:
    settings = _settings(args)
    bus, _ = _bus_for(args, settings)
    group = check_group_name(args.group)
    async with Client(settings, bus=bus) as client:
        if args.dead_command == "purge":
            dropped = await client.purge_dead_letters(group)
            _say(args, {"purged": dropped}, f"dropped {dropped} dead letter(s) of group {group!r}")
            return EXIT_OK
        if args.dead_command == "list":
            for letter in await client.dead_letters(group):
                if args.json:
                    print(json.dumps(letter.to_json(), ensure_ascii=False))
                else:
                    event = letter.event
                    print(
                        f"{event.event_id}  {event.kind} {event.name}  attempts={letter.attempts}"
                        f"  reason={shown_text(letter.reason)}"
                    )
            return EXIT_OK
        replayed = await client.replay(group, event_id=args.event_id)
    if args.json:
        print(json.dumps({"replayed": replayed}))
    else:
        print(f"replayed {replayed} dead letter(s) of group {group!r}")
    return EXIT_OK


def _say(args: argparse.Namespace, result: dict[str, object], text: str) -> None:
    print(json.dumps(result) if args.json else text)


def _group_line(info: GroupInfo) -> str:
    bindings = ",".join(info.bindings) or "-"
    return (
        f"{info.name}  {bindings}  depth={info.depth}  consumers={info.consumers}"
        f"  dead_letters={info.dead_letters}"
    )


async def _group(args: argparse.Namespace) -> int:
    settings = _settings(args)
    bus, _ = _bus_for(args, settings)
    group = check_group_name(args.group) if args.group_command != "list" else ""
    async with Client(settings, bus=bus) as client:
        if args.group_command == "list":
            found = await client.groups()
            for info in found:
                print(json.dumps(info.to_json()) if args.json else _group_line(info))
            if not found and not args.json:
                print(f"customevent: no groups on {bus.where}", file=sys.stderr)
        elif args.group_command == "purge":
            dropped = await client.purge_group(group)
            _say(args, {"purged": dropped}, f"dropped {dropped} event(s) waiting in {group!r}")
        else:
            info = await client.delete_group(group, force=args.force)
            _say(
                args,
                {"deleted": info.to_json()},
                f"deleted group {group!r} ({info.depth} event(s) waiting, "
                f"{info.dead_letters} dead letter(s), {info.consumers} consumer(s) cut off)",
            )
    return EXIT_OK


def shown_text(text: str) -> str:
    """Text from elsewhere (a receiver's answer, a command's failure) made safe for one line of a
    terminal: line breaks, escapes and every other control character written as ``\\xNN``,
    ``\\uNNNN``, so that it can neither start a line of its own nor move the cursor."""
    return "".join(
        char
        if char.isprintable() or char == " "
        else f"\\x{ord(char):02x}"
        if ord(char) < 0x100
        else f"\\u{ord(char):04x}"
        for char in text
    )


def _hash_secret(args: argparse.Namespace) -> int:
    what = "token" if args.token else "password"
    if sys.stdin.isatty():
        secret = getpass.getpass(f"{what}: ")
        if getpass.getpass("again: ") != secret:
            return _fail("the two entries differ", EXIT_USAGE)
    else:
        secret = sys.stdin.read()
        secret = secret.removesuffix("\n").removesuffix("\r")
    if not secret:
        return _fail(f"nothing to hash: give the {what} on stdin", EXIT_USAGE)
    try:
        print(hash_token(secret) if args.token else hash_secret(secret))
    except ConfigurationError as exc:
        return _fail(str(exc), EXIT_USAGE)
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from ._daemon import serve

    code: int = serve(_settings(args))
    return code


class _OwnRecords(logging.Filter):
    """Lets through only this package's log records: aio-pika, aiormq, httpx and asyncio log
    what the CLI already says in its own words (each failed connection attempt, a lost
    transport), and their lines would only confuse a terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "adapter" or record.name.startswith("adapter.")


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("customevent: %(message)s"))
    handler.addFilter(_OwnRecords())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def _option_values_first(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--until -5s`` as ``--until=-5s``: argparse reads a value that starts with ``-`` as an
    option ("expected one argument"); joined, the value reaches the command's own check."""
    commands = [parser, *subcommands(parser).values()]
    known = {flag for command in commands for flag in command._option_string_actions}
    takes_value = {
        flag
        for command in commands
        for action in command._actions
        if action.nargs is None
        for flag in action.option_strings
    }
    joined: list[str] = []
    for position, item in enumerate(argv):
        if item == "--":
            return joined + argv[position:]
        previous = joined[-1] if joined else None
        if previous in takes_value and item.startswith("-") and item not in known:
            joined[-1] = f"{previous}={item}"
        else:
            joined.append(item)
    return joined


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name (also read by the docs' CLI reference)."""
    return dict(parser.commands) if isinstance(parser, _Parser) else {}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``customevent`` command."""
    parser = _build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    # listen's COMMAND follows '--': everything after it is the command's, never options.
    run: list[str] = []
    if "--" in given and "listen" in given[: given.index("--")]:
        cut = given.index("--")
        given, run = given[:cut], given[cut + 1 :]
    args = parser.parse_args(_option_values_first(parser, given))
    args.run = run
    _configure_logging()
    provider = None
    try:
        if args.command == "hash-secret":
            return _hash_secret(args)
        provider = configure_tracing()
        if args.command == "serve":
            return _serve(args)
        runners = {
            "send": _send,
            "wait": _wait,
            "listen": _listen,
            "dead": _dead,
            "group": _group,
        }
        with _environment_trace() if args.command == "send" else contextlib.nullcontext():
            return asyncio.run(runners[args.command](args))
    except AdapterError as exc:
        return _fail(str(exc), _exit_code(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if provider is not None:
            provider.shutdown()  # exports what is left before the process ends


@contextlib.contextmanager
def _environment_trace() -> Iterator[None]:
    """Run in the trace of ``TRACEPARENT`` (and ``TRACESTATE``) from the environment, when it
    is a valid one: what ``listen`` gives its command, so a ``customevent send`` that the
    command runs continues the event's trace."""
    traceparent, tracestate = check_trace(
        os.environ.get("TRACEPARENT"), os.environ.get("TRACESTATE")
    )
    if traceparent is None:
        yield
        return
    token = otel_context.attach(remote_context(traceparent, tracestate))
    try:
        yield
    finally:
        otel_context.detach(token)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
