"""The docs must not drift from the code: every setting, every CLI `--help`, every HTTP route, the reasons
vocabulary, the metric names and the README's two-command quick start.

When the CLI changes, regenerate the `--help` blocks of docs/cli.md with `python tests/test_docs.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import ADMIN_KEY, AUTH

from foryou import cli
from foryou.config import Settings, load_settings, setting_names

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HELP_COLUMNS = "100"  # the width docs/cli.md is generated with
HELP_BLOCK = re.compile(r"<!-- help: (?P<cmd>[^>]+?) -->\n```text\n(?P<body>.*?)```", re.S)
SETTING_ROW = re.compile(r"^\|\s*`(?P<name>[a-z_]+\.[a-z_]+)`\s*\|", re.M)
ROUTE_HEADING = re.compile(r"^#{2,4} (?P<method>GET|POST|PUT|PATCH|DELETE) (?P<path>/\S*)\s*$", re.M)
TYPE_NAMES = {str: "string", int: "integer", float: "float", tuple: "list of strings", bool: "boolean"}


def _read(path: Path) -> str:
    assert path.exists(), f"{path.relative_to(ROOT)} is missing"
    return path.read_text(encoding="utf-8")


# -- (a) settings <-> docs/configuration.md --


def _default(name: str) -> Any:
    section, key = name.split(".")
    return getattr(getattr(Settings(), section), key)


def _toml_literal(value: Any) -> str:
    """A default as the docs show it: in TOML syntax (which, for these values, is JSON's)."""
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _setting_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in _read(DOCS / "configuration.md").splitlines():
        match = SETTING_ROW.match(line)
        if match:
            assert match["name"] not in rows, f"setting {match['name']} is documented twice"
            rows[match["name"]] = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return rows


def test_every_setting_is_documented_and_nothing_else() -> None:
    documented = set(_setting_rows())
    actual = set(setting_names())
    missing, unknown = sorted(actual - documented), sorted(documented - actual)
    assert not missing, f"settings missing from docs/configuration.md: {missing}"
    assert not unknown, f"docs/configuration.md lists settings that don't exist: {unknown}"


@pytest.mark.parametrize("name", setting_names())
def test_setting_row_has_type_default_and_env_var(name: str) -> None:
    row = _setting_rows().get(name)
    assert row is not None, f"{name} is not in the settings tables of docs/configuration.md"
    assert len(row) == 5, f"{name}: expected | Setting | Type | Default | Environment variable | Meaning |"
    _, kind, default, env, meaning = row
    value = _default(name)
    env_var = "FORYOU_" + name.replace(".", "_").upper()
    assert env == f"`{env_var}`", f"{name}: environment variable should be `{env_var}`, the docs say {env}"
    assert default == f"`{_toml_literal(value)}`", f"{name}: default is {_toml_literal(value)}, the docs say {default}"
    assert kind == TYPE_NAMES[type(value)], f"{name}: type is {TYPE_NAMES[type(value)]}, the docs say {kind}"
    assert meaning, f"{name}: say what it means"


def test_env_var_names_in_docs_are_the_ones_the_loader_reads() -> None:
    for name in setting_names():
        section, key = name.split(".")
        value = _default(name)
        if isinstance(value, bool):
            other = "0" if value else "1"
        elif isinstance(value, int | float):
            # shares must stay within their range: half of a share, one more of anything else
            other = str(value / 2) if isinstance(value, float) and 0 < value < 1 else str(int(value) + 1)
        else:
            other = {"learning.trainer": "inline"}.get(name, "zz")  # settings with a closed set of values
        env = {"FORYOU_" + name.replace(".", "_").upper(): other}
        assert getattr(getattr(load_settings(env=env), section), key) != value, f"{name}: variable not read"


def test_example_toml_is_valid_and_complete(tmp_path: Path) -> None:
    text = _read(DOCS / "configuration.md")
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks, "docs/configuration.md should show an example TOML file"
    path = tmp_path / "foryou.toml"
    path.write_text(blocks[0])
    load_settings(path, env={})  # raises on an unknown setting or a wrong type
    table = tomllib.loads(blocks[0])
    shown = {f"{section}.{key}" for section, values in table.items() for key in values}
    assert not set(setting_names()) - shown, f"example TOML lacks {sorted(set(setting_names()) - shown)}"


# -- (b) CLI --help <-> docs/cli.md --


def help_texts(parser: argparse.ArgumentParser | None = None, command: str = "foryou") -> Iterator[tuple[str, str]]:
    """(command, its --help) for `foryou` and each subcommand, nested ones too; run with COLUMNS set."""
    parser = parser or cli.parser()
    yield command, parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from help_texts(sub, f"{command} {name}")


def _stable_width(env: Any) -> None:
    env.setenv("COLUMNS", HELP_COLUMNS)
    env.setenv("NO_COLOR", "1")  # argparse colours help on Python >= 3.14
    env.delenv("FORCE_COLOR", raising=False)


def test_cli_help_matches_docs(monkeypatch: pytest.MonkeyPatch) -> None:
    _stable_width(monkeypatch)
    blocks = {m["cmd"]: m["body"] for m in HELP_BLOCK.finditer(_read(DOCS / "cli.md"))}
    expected = dict(help_texts())
    assert set(blocks) == set(expected), (
        f"docs/cli.md has --help blocks for {sorted(blocks)}, the CLI has {sorted(expected)}; "
        "regenerate with `python tests/test_docs.py`"
    )
    for command, text in expected.items():
        assert blocks[command] == text, (
            f"`{command} --help` differs from docs/cli.md; regenerate with `python tests/test_docs.py`"
        )


# -- (c) HTTP routes, reasons and metrics <-> docs/api.md --


@pytest.fixture
def app(tmp_path: Path) -> Any:
    from foryou.engine import Engine
    from foryou.http import create_app
    from foryou.privacy.keys import KeyRing

    engine = Engine.open(load_settings(env={}, overrides={"server.data": str(tmp_path / "data")}))
    yield create_app(engine, KeyRing(tmp_path / "data", ADMIN_KEY))
    engine.close()


def _api_routes(app: Any) -> set[tuple[str, str]]:
    framework = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    routes = set()
    for route in app.routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path is None or methods is None or path in framework:
            continue
        routes |= {(method, path) for method in methods if method != "HEAD"}
    return routes


def test_every_route_is_documented(app: Any) -> None:
    documented = {(m["method"], m["path"]) for m in ROUTE_HEADING.finditer(_read(DOCS / "api.md"))}
    routes = _api_routes(app)
    assert routes, "found no routes"
    missing = sorted(f"{m} {p}" for m, p in routes - documented)
    assert not missing, f"routes without a `### METHOD /path` section in docs/api.md: {missing}"
    stale = sorted(f"{m} {p}" for m, p in documented - routes)
    assert not stale, f"docs/api.md documents routes the app doesn't have: {stale}"


def test_algorithm_card_example_is_the_live_card(app: Any) -> None:
    """The example response of `GET /v1/algorithm` is what a fresh server returns, default for default."""
    section = _read(DOCS / "api.md").split("### GET /v1/algorithm", 1)[1].split("\n### ", 1)[0]
    example = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    assert example == json.loads(json.dumps(app.state.engine.feeds.algorithm()))  # as the response carries it


def test_reasons_vocabulary_is_documented() -> None:
    from foryou.reasons import VOCABULARY

    text = _read(DOCS / "api.md")
    missing = [phrase for phrase in VOCABULARY if f"`{phrase}`" not in text]
    assert not missing, f"reasons missing from docs/api.md: {missing}"


async def _scrape(app: Any) -> str:
    """Exercise a few routes, then read /metrics (in process, through the ASGI interface)."""
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://docs",
                                 headers=AUTH) as client:
        await client.get("/healthz")
        await client.post("/v1/events", content=b'{"events": []}')
        await client.get("/v1/users/docs-user/feed", params={"n": 1})
        response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


def test_metric_names_are_documented(app: Any) -> None:
    exposition = asyncio.run(_scrape(app))
    names = set(re.findall(r"^# TYPE (\S+) ", exposition, re.M))
    assert names, "no metrics exposed"
    text = _read(DOCS / "api.md")
    missing = sorted(name for name in names if f"`{name}`" not in text)
    assert not missing, f"metrics missing from docs/api.md: {missing}"


# -- (d) the README's quick start --


def test_readme_quick_start_is_make_run_and_make_test() -> None:
    readme = _read(ROOT / "README.md")
    section = re.search(r"^## Quick start\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert section, "README.md has no '## Quick start' section"
    commands = [
        line.split("#")[0].strip()
        for block in re.findall(r"```[^\n]*\n(.*?)```", section[1], re.S)
        for line in block.splitlines()
    ]
    assert "make run" in commands, "the quick start should show `make run`"
    assert "make test" in commands, "the quick start should show `make test`"
    makefile = _read(ROOT / "Makefile")
    for target in ("run", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"the Makefile has no `{target}` target"


def test_readme_links_the_docs() -> None:
    readme = _read(ROOT / "README.md")
    for page in ("docs/api.md", "docs/cli.md", "docs/configuration.md"):
        assert page in readme, f"README.md should point to {page}"
        assert (ROOT / page).exists(), f"{page} is missing"


def write_cli_doc() -> None:
    """Rewrite the `--help` blocks of docs/cli.md from the CLI (the same width as the test)."""
    os.environ["COLUMNS"] = HELP_COLUMNS
    os.environ["NO_COLOR"] = "1"
    os.environ.pop("FORCE_COLOR", None)
    texts = dict(help_texts())
    path = DOCS / "cli.md"
    doc = path.read_text(encoding="utf-8")
    missing = set(texts) - {m["cmd"] for m in HELP_BLOCK.finditer(doc)}
    if missing:
        sys.exit(f"docs/cli.md needs a `<!-- help: CMD -->` block for: {', '.join(sorted(missing))}")

    def replace(match: re.Match[str]) -> str:
        body = texts.get(match["cmd"], match["body"])
        return f"<!-- help: {match['cmd']} -->\n```text\n{body}```"

    path.write_text(HELP_BLOCK.sub(replace, doc), encoding="utf-8")
    print(f"updated {path.relative_to(ROOT)}")


if __name__ == "__main__":
    write_cli_doc()


def test_tests_named_in_the_docs_exist() -> None:
    """privacy.md (and any page) names the tests behind its guarantees: each must exist."""
    defined = set(re.findall(r"^def (test_\w+)", "".join(p.read_text(encoding="utf-8")
                                                           for p in (ROOT / "tests").rglob("test_*.py")), re.M))
    for page in DOCS.glob("*.md"):
        named = set(re.findall(r"`(test_\w+)`", _read(page)))
        assert named <= defined, f"{page.name} names tests that do not exist: {sorted(named - defined)}"
