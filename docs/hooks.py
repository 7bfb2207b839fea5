"""MkDocs hook: writes the reference pages from the code at build time.

A page asks for a generated section with a marker line ``<!-- generate: NAME -->``; NAME is one of
``GENERATORS``. Every generator reads the source of truth (the argparse parser, the pydantic
settings model, the FastAPI app's OpenAPI document, the Prometheus metric objects, the recorded
benchmark run in ``docs/performance/run.json``) and raises when it cannot: a reference page is
never built half empty.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

MARKER = re.compile(r"^<!-- generate: (?P<name>[a-z-]+) -->$", re.MULTILINE)

# Where the daemon's FastAPI app factory may live, first match wins.
APP_FACTORIES = (("adapter._http", "create_app"), ("adapter._http._app", "create_app"))
# The daemon's modules, which must import for the metrics page; then every module of the package
# is searched for Prometheus metric objects.
# The benchmark run the Performance page shows: `bench/run.py --plot docs/performance` writes it.
PERFORMANCE = Path(__file__).resolve().parent / "performance"


class GenerationError(RuntimeError):
    """A reference page cannot be generated from the code."""


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: Sequence[tuple[object, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- CLI ------------------------------------------------------------------------------------------


def _metavar(action: argparse.Action) -> str:
    metavar = action.metavar or action.dest.upper()
    return " ".join(metavar) if isinstance(metavar, tuple) else metavar


def _option_rows(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            flags = ", ".join(action.option_strings)
            if action.nargs != 0:
                flags += " " + _metavar(action)
        else:
            flags = _metavar(action)
        notes = []
        if action.choices:
            notes.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
        if action.required and action.option_strings:
            notes.append("required")
        if isinstance(action, argparse._AppendAction) and "repeatable" not in (action.help or ""):
            notes.append("repeatable")
        help_text = (action.help or "") + ("; " + "; ".join(notes) if notes else "")
        rows.append((f"`{flags}`", help_text))
    return rows


def exit_codes() -> list[tuple[int, str]]:
    """The exit codes from the CLI module's docstring (``Exit codes: 0 done; 2 ...``)."""
    from adapter import _cli

    doc = " ".join((_cli.__doc__ or "").split())
    _, found, text = doc.partition("Exit codes:")
    if not found:
        raise GenerationError("adapter/_cli.py's docstring has no 'Exit codes:' paragraph")
    codes = []
    for item in text.rstrip(".").split(";"):
        number, _, meaning = item.strip().partition(" ")
        if not number.isdigit() or not meaning:
            raise GenerationError(f"cannot read the exit code {item.strip()!r} in adapter/_cli.py")
        codes.append((int(number), meaning.strip()))
    return codes


def cli_reference() -> str:
    from adapter._cli import _build_parser, subcommands

    parser = _build_parser()
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
    parts = [
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
        parser.description or "",
        "",
        _table(("Option", "Description"), _option_rows(parser)),
    ]
    commands = subcommands(parser)
    if not commands:
        raise GenerationError("the customevent parser has no subcommands")
    # A command with subcommands of its own (``dead list``, ``dead replay``) is shown as those.
    stack = [(f"customevent {name}", command) for name, command in commands.items()]
    while stack:
        title, command = stack.pop(0)
        nested = subcommands(command)
        command.formatter_class = parser.formatter_class
        parts += ["", f"## `{title}`", "", command.description or "", ""]
        parts += ["```text", command.format_usage().strip(), "```", ""]
        if nested:
            parts.append("Actions: " + ", ".join(f"`{title} {sub}`" for sub in nested) + ".")
            stack[:0] = [(f"{title} {sub}", cmd) for sub, cmd in nested.items()]
            continue
        rows = _option_rows(command)
        parts.append(_table(("Argument", "Description"), rows) if rows else "No options.")
    parts += ["", "## Exit codes", ""]
    parts.append(_table(("Code", "Meaning"), [(f"`{c}`", m) for c, m in exit_codes()]))
    return "\n".join(parts)


# -- settings -------------------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " or ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (", optional" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    plain = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if annotation in plain:
        return plain[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]`"
    return f"`{value}`"


def _constraints(field: FieldInfo) -> str:
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥"}
    found = []
    for item in field.metadata:
        for attr, symbol in symbols.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{symbol} {value}")
    return ", ".join(found)


def settings_fields() -> Iterator[tuple[str, str, FieldInfo]]:
    """Every (section, key, field) of the settings model, in declaration order."""
    from adapter._settings import section_models

    for section, (model, _) in section_models().items():
        for key, field in model.model_fields.items():
            yield section, key, field


def _field_rows(fields: list[tuple[str, FieldInfo]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for key, field in fields:
        description = field.description or ""
        limits = _constraints(field)
        if limits:
            description += f" ({limits})" if description else limits
        rows.append((f"`{key}`", _type_name(field.annotation), _default(field), description))
    return rows


def settings_reference() -> str:
    from adapter._settings import Principal, section_models

    parts = []
    for section, (_, is_list) in section_models().items():
        fields = [(key, field) for s, key, field in settings_fields() if s == section]
        if is_list:
            # An array of tables: one entry per item, given whole (JSON) in the environment.
            parts += [f"## `[[{section}]]`", ""]
            parts.append(_table(("Key", "Type", "Default", "Description"), _field_rows(fields)))
            parts += [
                "",
                f"Each `[[{section}]]` table is one entry. In the environment the whole list is "
                f"one JSON value: `CUSTOMEVENT_{section.upper()}='[{{...}}, ...]'`; as a secrets "
                f"file, `{section}`.",
                "",
            ]
            continue
        parts += [f"## `[{section}]`", ""]
        parts.append(_table(("Key", "Type", "Default", "Description"), _field_rows(fields)))
        parts += ["", "| Key | Environment variable | Secrets file |", "| --- | --- | --- |"]
        for key, _ in fields:
            parts.append(
                f"| `{section}.{key}` | `CUSTOMEVENT_{section.upper()}__{key.upper()}` "
                f"| `{section}__{key}` |"
            )
        parts.append("")
        if section == "auth":
            parts += ["### `[[auth.principals]]`", "", "Each entry of `auth.principals`:", ""]
            rows = _field_rows(list(Principal.model_fields.items()))
            parts += [_table(("Key", "Type", "Default", "Description"), rows), ""]
    return "\n".join(parts)


# -- HTTP API -------------------------------------------------------------------------------------


def _app_factory() -> Callable[..., Any]:
    errors = []
    for module_name, attribute in APP_FACTORIES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{module_name}: {exc}")
            continue
        factory = getattr(module, attribute, None)
        if callable(factory):
            return typing.cast(Callable[..., Any], factory)
        errors.append(f"{module_name} has no {attribute}")
    raise GenerationError(
        "cannot build the HTTP API reference: no FastAPI app factory found ("
        + "; ".join(errors)
        + ")"
    )


def openapi_document() -> dict[str, Any]:
    """The daemon's OpenAPI document, from its app built on default settings."""
    from adapter import Client, load_settings

    settings = load_settings(amqp={"url": None})
    app = _app_factory()(settings, Client(settings))
    document = app.openapi()
    if not document.get("paths"):
        raise GenerationError("the daemon's OpenAPI document has no paths")
    return typing.cast(dict[str, Any], document)


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not method.startswith("x-") and method != "parameters":
                yield method.upper(), path, operation


def http_reference() -> str:
    document = openapi_document()
    info = document.get("info", {})
    rows = [
        (
            f"`{method}`",
            f"[`{path}`](#{method.lower()}-{_slug(path)})",
            operation.get("summary", ""),
            ", ".join(f"`{code}`" for code in operation.get("responses", {})),
        )
        for method, path, operation in _operations(document)
    ]
    parts = [
        f"OpenAPI {document.get('openapi', '')}, *{info.get('title', '')}* {info.get('version')}.",
        "",
        _table(("Method", "Path", "What", "Responses"), rows),
    ]
    for method, path, operation in _operations(document):
        parts += ["", f"### `{method} {path}` {{#{method.lower()}-{_slug(path)}}}", ""]
        parts += [operation.get("summary", ""), ""]
        if operation.get("description"):
            parts += [operation["description"].strip(), ""]
        params = [
            (
                f"`{p['name']}`",
                p.get("in", ""),
                "yes" if p.get("required") else "no",
                p.get("description") or p.get("schema", {}).get("description", ""),
            )
            for p in operation.get("parameters", [])
        ]
        if params:
            parts += [_table(("Parameter", "In", "Required", "Description"), params), ""]
        responses = [
            (f"`{code}`", answer.get("description", ""))
            for code, answer in operation.get("responses", {}).items()
        ]
        parts.append(_table(("Status", "Meaning"), responses))
    return "\n".join(parts)


def _slug(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


# -- metrics --------------------------------------------------------------------------------------


def metrics() -> list[tuple[str, str, str, tuple[str, ...], str]]:
    """(scraped name, type, help, labels, module) of every metric the package defines: those
    of a fresh ``Metrics``, the object a daemon serves ``/metrics`` from."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    try:
        from adapter._metrics import Metrics
    except ImportError as exc:
        raise GenerationError(f"cannot import adapter._metrics for its metrics: {exc}") from exc
    found: dict[str, tuple[str, str, str, tuple[str, ...], str]] = {}
    for value in vars(Metrics(CollectorRegistry())).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        family = next(iter(value.describe()))
        scraped = family.name + ("_total" if family.type == "counter" else "")
        labels = tuple(getattr(value, "_labelnames", ()))
        found[family.name] = (
            scraped,
            family.type,
            family.documentation,
            labels,
            Metrics.__module__,
        )
    if not found:
        raise GenerationError("no Prometheus metrics found in the adapter package")
    return sorted(found.values())


def metrics_reference() -> str:
    suffix = {"histogram": " (`_bucket`, `_sum`, `_count`)", "summary": " (`_sum`, `_count`)"}
    rows = [
        (
            f"`{name}`" + suffix.get(kind, ""),
            kind,
            ", ".join(f"`{label}`" for label in labels),
            help_text,
        )
        for name, kind, help_text, labels, _ in metrics()
    ]
    return _table(("Metric", "Type", "Labels", "Description"), rows)


# -- performance ----------------------------------------------------------------------------------


def _recorded_run() -> dict[str, Any]:
    record = PERFORMANCE / "run.json"
    if not record.is_file():
        raise GenerationError(
            f"no recorded benchmark run in {record}: "
            "python bench/run.py core groups retain mqtt latency --plot docs/performance"
        )
    run: dict[str, Any] = json.loads(record.read_text())
    if not run.get("topics"):
        raise GenerationError(f"{record} records no benchmark")
    return run


def _caption(entry: dict[str, Any]) -> str:
    machine = entry["machine"]
    when = datetime.fromisoformat(entry["recorded"]).strftime("%Y-%m-%d %H:%M UTC")
    before, after = machine["load_average"]
    return (
        f"Recorded {when} on {machine['cores']} cores and {machine['memory_gib']:g} GiB of memory "
        f"({machine['cpu']}; {machine['system']}; Python {machine['python']}), cores that the "
        f"brokers and every process of the benchmark share: load average {before:g} when it "
        f"started, {after:g} when it ended. `{entry['command']}`, {entry['seconds']:g} s."
    )


def performance() -> str:
    """Each recorded benchmark: its chart, when and on what it ran, and its figures."""
    sections = []
    for topic, entry in _recorded_run()["topics"].items():
        chart = PERFORMANCE / entry["chart"]
        if not chart.is_file():
            raise GenerationError(f"{chart} is missing: run.json names it for {topic!r}")
        rows = []
        for figure in entry["figures"]:
            shown = figure["shown"]
            reference = shown["reference"]
            if reference and figure["reference_name"]:
                reference += f" ({figure['reference_name']})"
            target = f"{shown['target']}: {shown['verdict']}" if shown["target"] else ""
            better = shown.get("better", "")
            rows.append((figure["name"], shown["value"], reference, shown["ratio"], target, better))
        notes = [
            f"- {figure['name']}: {figure['note']}" for figure in entry["figures"] if figure["note"]
        ]
        sections.append(
            "\n\n".join(
                [
                    f"## `{topic}`",
                    f"![The figures of bench/bench_{topic}.py](performance/{entry['chart']})",
                    _caption(entry),
                    _table(("figure", "measured", "reference", "ratio", "target", "better"), rows),
                    *(["\n".join(notes)] if notes else []),
                ]
            )
        )
    return "\n\n".join(sections)


# -- the contract's AsyncAPI document ---------------------------------------------------------


def _prose(text: str) -> str:
    """Text of the document shown as Markdown: ``<kind>.<name>`` is no HTML tag."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def asyncapi_reference() -> str:
    """The AsyncAPI document on default settings: its channels, operations and headers as
    tables, then the whole document."""
    from adapter import load_settings
    from adapter._asyncapi import asyncapi_document

    document = asyncapi_document(load_settings(amqp={"url": None}))
    channels = document.get("channels") or {}
    if not channels:
        raise GenerationError("the AsyncAPI document has no channels")
    servers = document["servers"]
    rows = [
        (
            f"`{name}`",
            f"`{channel['address']}`",
            ", ".join(
                servers[ref["$ref"].rsplit("/", 1)[1]]["protocol"] for ref in channel["servers"]
            ),
            _prose(channel.get("description", "")),
        )
        for name, channel in channels.items()
    ]
    operations = [
        (
            f"`{name}`",
            operation["action"],
            f"`{operation['channel']['$ref'].rsplit('/', 1)[1]}`",
            _prose(operation.get("summary", "")),
        )
        for name, operation in document["operations"].items()
    ]
    parts = [
        f"AsyncAPI {document['asyncapi']}, *{document['info']['title']}* "
        f"{document['info']['version']}; exchange and prefix as the default settings name them.",
        "",
        "### Channels",
        "",
        _table(("Channel", "Address", "Protocol", "What"), rows),
        "",
        "### Operations (the bridge's side)",
        "",
        _table(("Operation", "Action", "Channel", "What"), operations),
    ]
    for name, message in document["components"]["messages"].items():
        headers = message.get("headers", {})
        required = set(headers.get("required", []))
        header_rows = [
            (
                f"`{header}`",
                "yes" if header in required else "no",
                _prose(schema.get("description", ""))
                or ", ".join(f"`{v}`" for v in schema.get("enum", [schema.get("const", "")])),
            )
            for header, schema in headers.get("properties", {}).items()
        ]
        parts += [
            "",
            f"### Message `{name}`",
            "",
            _prose(message.get("summary", message.get("title", ""))),
        ]
        parts += ["", f"Content type `{message['contentType']}`.", ""]
        if header_rows:
            parts.append(_table(("Header", "Always", "Meaning"), header_rows))
    parts += [
        "",
        "### The document",
        "",
        '??? note "asyncapi.json (default settings)"',
        "",
        "    ```json",
        *("    " + line for line in json.dumps(document, indent=2).splitlines()),
        "    ```",
    ]
    return "\n".join(parts)


# -- operating it: the chart's dashboard and alerts ------------------------------------------------

CHART = Path(__file__).resolve().parent.parent / "charts" / "customevent-bridge"


def _chart_render(values: dict[str, Any]) -> list[dict[str, Any]]:
    import helm_python
    import yaml

    with helm_python.Chart.load(CHART) as chart:
        files = chart.render(values, name="customevent-bridge", namespace="events")
    return [
        doc
        for path, text in files.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def alerts() -> str:
    """The chart's PrometheusRule, as Helm renders it with the default thresholds."""
    docs = _chart_render({"prometheusRule": {"enabled": True}})
    rules = [
        rule
        for doc in docs
        if doc["kind"] == "PrometheusRule"
        for group in doc["spec"]["groups"]
        for rule in group["rules"]
    ]
    if not rules:
        raise GenerationError("the chart renders no alert with prometheusRule.enabled")
    rows = [
        (
            f"`{rule['alert']}`",
            rule["labels"]["severity"],
            rule.get("for", "at once"),
            rule["annotations"]["description"],
            f"`{rule['expr']}`",
        )
        for rule in rules
    ]
    return _table(("Alert", "Severity", "For", "What it means", "Expression"), rows)


def _html(text: object) -> str:
    import html

    return html.escape(str(text), quote=True)


def _sample_scrape() -> dict[str, list[tuple[str, float]]]:
    """What a daemon on the in-process bus reports on ``/metrics`` after a few sends (two
    edges, one refused) and a wait that reaches its deadline: sample name -> (labels, value)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from adapter.testing import BridgeDaemon

    with BridgeDaemon() as daemon, httpx.Client(base_url=daemon.url, timeout=10) as http:
        for number in range(3):
            http.post("/api/v1/events/docs.sample", json={"properties": {"n": str(number)}})
        http.post("/vco/api/customevent/docs.sample", params={"properties": "n=3"})
        http.post("/api/v1/events/docs.sample", json={"properties": {"a=b": "forged"}})
        http.get("/api/v1/events/docs.sample/wait", params={"timeout": "0.2s"})
        text = http.get("/metrics").text
    samples: dict[str, list[tuple[str, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            samples.setdefault(sample.name, []).append((labels, sample.value))
    return samples


def _panel_values(panel: dict[str, Any], samples: dict[str, list[tuple[str, float]]]) -> str:
    """The sampled values of the series a panel's queries select (their label matchers applied,
    but those on dashboard variables), a histogram by its ``_count``."""
    selectors: list[tuple[str, list[tuple[str, str, str]]]] = []
    for target in panel["targets"]:
        for name, matchers in re.findall(
            r"\b((?:customevent|rabbitmq)_[a-z0-9_]+)(?:\{([^}]*)\})?", target["expr"]
        ):
            wanted = [
                m for m in re.findall(r'(\w+)\s*(=~|=)\s*"([^"]*)"', matchers) if "$" not in m[2]
            ]
            shown = (re.sub(r"_bucket$", "_count", name), wanted)
            if shown not in selectors:
                selectors.append(shown)
    lines = []
    for name, wanted in selectors:
        if name.startswith("rabbitmq_"):
            lines.append(f"{name}: from RabbitMQ, not in this build")
            continue
        found = [
            (labels, value)
            for labels, value in samples.get(name, [])
            if all(
                re.search(
                    rf'(^|,){key}="({pattern})"'
                    if op == "=~"
                    else rf'(^|,){key}="{re.escape(pattern)}"',
                    labels,
                )
                for key, op, pattern in wanted
            )
        ]
        for labels, value in found[:4] or [("", 0.0)]:
            lines.append(f"{name}{{{labels}}} {value:g}" if labels else f"{name} {value:g}")
    return "".join(f"<li>{_html(line)}</li>" for line in lines)


def dashboard() -> str:
    """The chart's Grafana dashboard drawn as a figure: each panel where Grafana puts it (its
    gridPos on Grafana's 24 columns), with its title, description and queries."""
    source = CHART / "dashboards" / "customevent-bridge.json"
    board = json.loads(source.read_text())
    panels = board.get("panels") or []
    if not panels:
        raise GenerationError(f"{source} has no panels")
    samples = _sample_scrape()
    cells = []
    for panel in panels:
        grid = panel["gridPos"]
        queries = "".join(
            f"<li><code>{_html(target['expr'])}</code></li>" for target in panel["targets"]
        )
        cells.append(
            f'<div class="ce-panel" style="grid-column: {grid["x"] + 1} / span {grid["w"]}; '
            f'grid-row: {grid["y"] + 1} / span {grid["h"]};">'
            f'<div class="ce-panel-title">{_html(panel["title"])}</div>'
            f'<div class="ce-panel-text">{_html(panel.get("description", ""))}</div>'
            f'<ul class="ce-panel-queries">{queries}</ul>'
            f'<ul class="ce-panel-values">{_panel_values(panel, samples)}</ul></div>'
        )
    style = (
        "<style>"
        ".ce-dashboard{display:grid;grid-template-columns:repeat(24,1fr);"
        "grid-auto-rows:minmax(1.6rem,auto);gap:6px;padding:8px;background:#111217;border-radius:4px;"
        "font-size:.62rem;line-height:1.3;text-align:left}"
        ".ce-panel{background:#181b1f;border:1px solid #2c3235;border-radius:3px;padding:6px 8px;"
        "overflow:hidden;color:#ccccdc}"
        ".ce-panel-title{font-weight:600;font-size:.75rem;color:#fff;margin-bottom:4px}"
        ".ce-panel-text{color:#8e8e9e;margin-bottom:4px}"
        ".ce-panel-queries{margin:0;padding-left:1em}"
        ".ce-panel-queries code{background:none;color:#73bf69;font-size:.6rem;"
        "word-break:break-all}"
        ".ce-panel-values{margin:4px 0 0;padding:4px 0 0 1em;border-top:1px solid #2c3235;"
        "color:#fade2a;font-family:monospace;font-size:.58rem;word-break:break-all}"
        "</style>"
    )
    title = _html(board["title"])
    return (
        f'{style}<figure id="dashboard-figure">'
        f'<div class="ce-dashboard" role="img" aria-label="the {title} dashboard\'s panels">'
        + "".join(cells)
        + "</div><figcaption>The panels of the chart's dashboard "
        "(<code>charts/customevent-bridge/dashboards/customevent-bridge.json</code>), drawn "
        "from that file when the docs are built, each where Grafana places it, with its "
        "queries; in yellow, the values of the daemon's series they read, as a daemon that the "
        "docs build starts (in-process bus) reported them on <code>/metrics</code> after four "
        "sends, one refused send and one wait that reached its deadline. Not a Grafana "
        "screenshot: the docs build runs no Grafana and no RabbitMQ.</figcaption>"
        "</figure>"
    )


# -- Retries ---------------------------------------------------------------------------------------


def retries() -> str:
    """The table of every retry policy, from ``adapter._retry``."""
    from adapter._retry import POLICIES

    if not POLICIES:
        raise GenerationError("adapter._retry.POLICIES is empty")
    rows = [(row.use, row.retried, row.pauses, row.stop) for row in POLICIES]
    return _table(("Retried", "On", "Pauses", "Gives up"), rows)


GENERATORS: dict[str, Callable[[], str]] = {
    "asyncapi": asyncapi_reference,
    "alerts": alerts,
    "dashboard": dashboard,
    "cli": cli_reference,
    "settings": settings_reference,
    "http-api": http_reference,
    "metrics": metrics_reference,
    "performance": performance,
    "retries": retries,
}


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace each ``<!-- generate: NAME -->`` line with the generated Markdown."""
    from mkdocs.exceptions import PluginError

    def generate(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in GENERATORS:
            raise PluginError(f"unknown generated section {name!r}; one of {sorted(GENERATORS)}")
        try:
            return GENERATORS[name]()
        except GenerationError as exc:
            raise PluginError(str(exc)) from exc

    return MARKER.sub(generate, markdown)
