"""Fixtures shared by the HTTP tests: engines behind the real app, closed at the end of each test."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():  # starlette's TestClient warns about its httpx dependency on import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from factories import ADMIN_KEY, AUTH

from foryou.config import load_settings
from foryou.engine import Engine
from foryou.http import create_app
from foryou.privacy.keys import KeyRing

MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[MakeClient]:
    """Opens an engine (on `data`, default a new dir under tmp_path) and wraps it in the app; the
    client sends the admin key (`ADMIN_KEY`) unless a request sets its own Authorization."""
    opened: list[tuple[TestClient, Engine]] = []

    def make(data: Path | None = None, clock: Callable[[], float] | None = None, **overrides: Any) -> TestClient:
        folder = data or tmp_path / f"data{len(opened)}"
        settings = load_settings(overrides={"server.data": str(folder), **overrides}, env={})
        engine = Engine.open(settings, clock=clock) if clock is not None else Engine.open(settings)
        keys = KeyRing(folder, admin_key=ADMIN_KEY)
        client = TestClient(create_app(engine, keys), raise_server_exceptions=False, headers=AUTH)
        opened.append((client, engine))
        return client

    yield make
    for client, engine in opened:
        client.close()
        with contextlib.suppress(Exception):  # already closed by a test that reopens the same data dir
            engine.close()
