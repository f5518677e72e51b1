"""Settings: defaults <- TOML file <- FORYOU_* environment <- explicit overrides; strict names and types."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from foryou.config import ConfigError, Settings, SourceBudgets, load_settings, setting_names
from foryou.errors import ForYouError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "foryou.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = load_settings(env={})
    assert s == Settings()
    assert s.server.port == 8000
    assert s.server.host == "127.0.0.1"
    assert s.server.regions == ("us",)
    assert s.server.data == "./foryou-data"
    assert (s.weights.complete, s.weights.like, s.weights.comment, s.weights.share, s.weights.follow) == (
        1.0, 2.0, 3.0, 4.0, 6.0)
    assert s.store.checkpoint_interval_s == 5.0
    assert s.signals.event_id_ttl_days == 7.0


def test_setting_names_cover_every_field() -> None:
    names = setting_names()
    expected = [f"{sec.name}.{f.name}" for sec in fields(Settings()) for f in fields(getattr(Settings(), sec.name))]
    assert names == expected
    assert {"server.port", "weights.follow", "budgets.fallback", "signals.fresh_max_views",
            "store.user_cache"} <= set(names)
    assert len(names) == len(set(names))


def test_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
[server]
port = 9000
regions = ["us", "eu-west"]
data = "/srv/foryou"

[weights]
like = 5          # an integer is fine for a float setting
share = 0.5

[budgets]
interest = 10
""")
    s = load_settings(path, env={})
    assert s.server.port == 9000
    assert s.server.regions == ("us", "eu-west")
    assert s.server.data == "/srv/foryou"
    assert s.weights.like == 5.0 and isinstance(s.weights.like, float)
    assert s.weights.share == 0.5
    assert s.budgets.interest == 10
    # untouched settings keep their defaults
    assert s.server.host == "127.0.0.1"
    assert s.weights.follow == 6.0
    assert s.budgets.trending == SourceBudgets().trending


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 9000\nhost = "0.0.0.0"\n[weights]\nlike = 5.0\n')
    env = {"FORYOU_SERVER_PORT": "9100", "FORYOU_SERVER_REGIONS": "eu, us", "FORYOU_WEIGHTS_LIKE": "2.5",
           "FORYOU_SIGNALS_FRESH_WINDOW_H": "12", "FORYOU_STORE_USER_CACHE": "77",
           "SERVER_PORT": "1", "OTHER_FORYOU_SERVER_PORT": "2"}
    s = load_settings(path, env=env)
    assert s.server.port == 9100
    assert s.server.regions == ("eu", "us")
    assert s.server.host == "0.0.0.0"  # from the file, not overridden
    assert s.weights.like == 2.5
    assert s.signals.fresh_window_h == 12.0
    assert s.store.user_cache == 77


@pytest.mark.parametrize("var", ["FORYOU_SERVER_PROT", "FORYOU_PORT", "FORYOU_WEIGHTS", "FORYOU_NOPE_X"])
def test_unknown_foryou_variable(var: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={var: "1"})
    assert info.value.errors[0].field == var


def test_variables_that_are_not_settings_are_ignored() -> None:
    s = load_settings(env={"FORYOU_ADMIN_KEY": "secret", "PATH": "/bin", "FORYOUX_SERVER_PORT": "1",
                           "foryou_server_port": "2"})
    assert s == Settings()


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORYOU_SERVER_PORT", "8123")
    assert load_settings().server.port == 8123
    assert load_settings(env={}).server.port == 8000


def test_overrides_beat_env_and_none_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n")
    s = load_settings(path, env={"FORYOU_SERVER_PORT": "9100"},
                      overrides={"server.port": 9200, "server.host": None, "server.regions": "eu,us"})
    assert s.server.port == 9200
    assert s.server.host == "127.0.0.1"
    assert s.server.regions == ("eu", "us")


@pytest.mark.parametrize("text", [
    "[server]\nnope = 1\n",
    "[nope]\nport = 1\n",
    "[weights]\nlikes = 1.0\n",
    "port = 8000\n",  # a top-level key is not a section
])
def test_unknown_setting_in_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, text), env={})


def test_unknown_override() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, overrides={"server.nope": 1})
    assert info.value.errors[0].field == "server.nope"


@pytest.mark.parametrize(("text", "name"), [
    ('[server]\nport = "abc"\n', "server.port"),
    ("[server]\nport = 80.5\n", "server.port"),
    ("[server]\nport = true\n", "server.port"),
    ("[budgets]\ninterest = [1, 2]\n", "budgets.interest"),
    ('[weights]\nlike = "much"\n', "weights.like"),
    ("[weights]\nlike = true\n", "weights.like"),
    ("[weights]\nlike = [1.0]\n", "weights.like"),
    ("[server]\nregions = 5\n", "server.regions"),
    ("[server]\nhost = 8000\n", "server.host"),
    ("[server]\nmax_body_mb = {a = 1}\n", "server.max_body_mb"),
])
def test_bad_type_in_file(tmp_path: Path, text: str, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env={})
    assert info.value.errors[0].field == name


@pytest.mark.parametrize(("var", "value"), [
    ("FORYOU_SERVER_PORT", "abc"),
    ("FORYOU_SERVER_PORT", "80.5"),
    ("FORYOU_WEIGHTS_LIKE", "lots"),
    ("FORYOU_BUDGETS_FALLBACK", ""),
])
def test_bad_type_in_env(var: str, value: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(env={var: value})


def test_config_error_is_a_foryou_error_with_a_field() -> None:
    with pytest.raises(ForYouError) as info:
        load_settings(env={"FORYOU_SERVER_PORT": "x"})
    assert isinstance(info.value, ConfigError)
    assert info.value.errors[0].field == "server.port"
    assert "server.port" in str(info.value)


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, "[server\nport = 1\n"), env={})


@pytest.mark.parametrize("regions", ["US", "us,EU", "1us", "u_s", "us eu", "-us", "a" * 17, "", " , "])
def test_bad_region_codes(regions: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"FORYOU_SERVER_REGIONS": regions})
    assert info.value.errors[0].field == "server.regions"


@pytest.mark.parametrize("regions", ["us", "eu-west-1", "a" * 16, "x9"])
def test_good_region_codes(regions: str) -> None:
    assert load_settings(env={"FORYOU_SERVER_REGIONS": regions}).server.regions == (regions,)


def test_bad_region_code_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, '[server]\nregions = ["us", "Europe"]\n'), env={})
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, "[server]\nregions = []\n"), env={})


@pytest.mark.parametrize("name, value", [("topic_run_cap", 0), ("explore_share", 1.5), ("pool_count", 0),
                                         ("pool_share", 0.6), ("promote_quantile", -0.1), ("mmr_lambda", -1.0)])
def test_policy_settings_out_of_range_are_refused(name: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"policy.{name}"):
        load_settings(env={}, overrides={f"policy.{name}": value})
