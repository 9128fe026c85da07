"""Settings come from the documented variables and flags, and bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from paceline.config import ConfigError, Settings
from paceline.queue.handlers import noop, resolve_handler
from tests.handlers import record


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.data_dir == Path(".paceline")
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.rate_window == 300
    assert settings.concurrency == 8
    assert settings.handler == "sleep"
    assert settings.sleep_seconds == 1


def test_environment_is_read_and_flags_win() -> None:
    env = {
        "DATABASE_URL": "postgresql://db/paceline",
        "PACELINE_DATA_DIR": "/var/lib/paceline",
        "PACELINE_HOST": "0.0.0.0",
        "PACELINE_PORT": "9000",
        "PACELINE_RATE_WINDOW": "0.25",
        "PACELINE_CONCURRENCY": "3",
        "PACELINE_HANDLER": "noop",
        "PACELINE_SLEEP_SECONDS": "2.5",
    }
    settings = Settings.from_env(env, port=9100, concurrency=None)
    assert settings.database_url == "postgresql://db/paceline"
    assert settings.data_dir == Path("/var/lib/paceline")
    assert settings.host == "0.0.0.0"
    assert settings.port == 9100  # the flag
    assert settings.rate_window == 0.25
    assert settings.concurrency == 3  # no flag given: the environment
    assert (settings.handler, settings.sleep_seconds) == ("noop", 2.5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PACELINE_RATE_WINDOW": "0"}, "PACELINE_RATE_WINDOW must be a positive"),
        ({"PACELINE_RATE_WINDOW": "five"}, "PACELINE_RATE_WINDOW='five'"),
        ({"PACELINE_CONCURRENCY": "-1"}, "PACELINE_CONCURRENCY must be 0 or more"),
        ({"PACELINE_PORT": "70000"}, "PACELINE_PORT must be between"),
    ],
)
def test_bad_values_name_their_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_handlers_resolve_by_name_and_import_path() -> None:
    assert resolve_handler(Settings(handler="noop")) is noop
    assert resolve_handler(Settings(handler="sleep")) is not None
    assert resolve_handler(Settings(handler="tests.handlers:record")) is record


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        ("teleport", "is unknown"),
        ("tests.nowhere:run", "cannot import"),
        ("tests.handlers:missing", "has no missing"),
        ("tests.handlers:not_async", "must be an async function"),
    ],
)
def test_bad_handlers_are_refused_at_start(handler: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_handler(Settings(handler=handler))
