"""Settings come from the documented variables and flags, and bad values are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from paceline.cli import main
from paceline.config import ConfigError, Settings
from paceline.queue.handlers import noop, resolve_handler
from tests.handlers import record
from tests.support import ROOT


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


def test_scoped_tokens_merge_with_the_api_token() -> None:
    settings = Settings.from_env(
        {
            "PACELINE_TOKENS": " submit:s-0123456789abcdef , read:r-0123456789abcdef,"
            "admin:a-0123456789abcdef,admin:b-0123456789abcdef,",
            "PACELINE_API_TOKEN": "api-0123456789abcdef",
        }
    )
    assert settings.scoped_tokens() == {
        "api-0123456789abcdef": "admin",
        "s-0123456789abcdef": "submit",
        "r-0123456789abcdef": "read",
        # Two admin tokens at once: the old one goes on working while clients move over.
        "a-0123456789abcdef": "admin",
        "b-0123456789abcdef": "admin",
    }
    assert Settings.from_env({}).scoped_tokens() == {}
    # Neither is shown by the settings' repr (it reaches logs and tracebacks).
    assert "0123456789abcdef" not in repr(settings)


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ("read:short-token", r"the read token of entry 1 is 11 characters; .* at least 16"),
        ("read:r-0123456789abcdef,admin:tiny", "the admin token of entry 2 is 4 characters"),
        ("writer:w-0123456789abcdef", "entry 1 is not scope:token with a scope of submit, read"),
        ("w-0123456789abcdef", "entry 1 is not scope:token"),
        (
            "read:r-0123456789abcdef,admin:r-0123456789abcdef",
            r"the token of entry 2 \(admin\) is also given as read",
        ),
    ],
)
def test_bad_tokens_are_refused_without_showing_them(tokens: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        Settings.from_env({"PACELINE_TOKENS": tokens})
    assert "0123456789abcdef" not in str(refused.value)
    assert "short-token" not in str(refused.value)


def test_a_short_token_stops_serve_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PACELINE_TOKENS", "admin:0123456789")
    assert main(["serve"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("paceline: PACELINE_TOKENS: the admin token of entry 1 is 10 ")
    assert "0123456789" not in error.replace("is 10 characters", "")


def test_the_session_lifetime_is_a_setting() -> None:
    assert Settings.from_env({}).session_seconds == 12 * 3600
    assert Settings.from_env({"PACELINE_SESSION_SECONDS": "2.5"}).session_seconds == 2.5
    with pytest.raises(ConfigError, match="PACELINE_SESSION_SECONDS must be a positive"):
        Settings.from_env({"PACELINE_SESSION_SECONDS": "0"})


def test_compose_publishes_its_tokenless_replicas_on_loopback_only() -> None:
    # compose.yaml sets no token: what it publishes must not be reachable from other hosts.
    lines = (ROOT / "compose.yaml").read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    assert "PACELINE_TOKENS" not in text
    assert "PACELINE_API_TOKEN" not in text
    published = re.findall(r'^\s+- "([^"]*:8080)"\s*$', text, flags=re.MULTILINE)
    assert published == ["127.0.0.1:8080:8080", "127.0.0.1:8081:8080"]
