"""One vocabulary (paceline.contract): the statuses, the on_busy names and the settings' types.

The client needs only aiohttp and the contract; the queue, the settings and the client take
the on_busy names from it; every setting has a reader for its type.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from paceline import client, contract
from paceline.config import ConfigError, Settings
from paceline.queue import jobs, submit


def test_one_list_of_statuses_and_of_on_busy_values() -> None:
    assert tuple(jobs.Status) == contract.STATUS_VALUES
    assert {jobs.Status.SUCCESS, jobs.Status.FAILED, jobs.Status.CANCELLED} == client.FINISHED
    assert submit.OnBusy is contract.OnBusy
    assert tuple(submit.OnBusy) == contract.ON_BUSY_VALUES
    assert client.OnBusy is contract.OnBusyName


def test_the_client_needs_only_aiohttp_and_the_contract() -> None:
    # Everything else of paceline, and its other dependencies, is made unimportable.
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        ALLOWED = {"paceline", "paceline.client", "paceline.contract"}
        BLOCKED = {"msgspec", "orjson", "asyncpg", "sqlalchemy", "alembic", "jinja2"}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                top = name.partition(".")[0]
                if top in BLOCKED or (top == "paceline" and name not in ALLOWED):
                    raise ImportError(f"the client imported {name}")
                return None

        sys.meta_path.insert(0, Block())
        import paceline.client
        policies = ("queue", "coalesce", "reject", "replace", "append")
        assert paceline.client.OnBusy.__args__ == policies
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_every_setting_is_read_as_its_type() -> None:
    settings = Settings.from_env(
        {
            "PACELINE_JOB_TIMEOUT": "2.5",
            "PACELINE_DATA_DIR": "/tmp/x",
            "PACELINE_MAX_ATTEMPTS": "4",
            "PACELINE_ON_BUSY": "reject",
            "PACELINE_API_TOKEN": "t" * 16,
        }
    )
    assert settings.job_timeout == 2.5
    assert settings.data_dir == Path("/tmp/x")
    assert settings.max_attempts == 4
    assert settings.on_busy == "reject"
    with pytest.raises(ConfigError, match=r"^PACELINE_MAX_ATTEMPTS='x' is not a valid int$"):
        Settings.from_env({"PACELINE_MAX_ATTEMPTS": "x"})
    with pytest.raises(ConfigError, match=r"^PACELINE_JOB_TIMEOUT='x' is not a valid float$"):
        Settings.from_env({"PACELINE_JOB_TIMEOUT": "x"})
    with pytest.raises(
        ConfigError, match=r"^PACELINE_ON_BUSY must be queue, coalesce, reject, replace or append$"
    ):
        Settings.from_env({"PACELINE_ON_BUSY": "wait"})
