"""The local provider's listing: a container removed while runc lists them is listed again, anything else
fails the listing (never an empty one: the controller would delete every node)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from accordion.config import ClusterConfig
from accordion.providers import local
from accordion.providers.base import ProviderError
from accordion.sh import CommandError

CONFIG = ClusterConfig.model_validate({"name": "t", "nodesets": [{"name": "compute", "name_base": "n", "max_nodes": 2}]})


def runtime(tmp_path: Path, answers: list[CommandError | str], monkeypatch: pytest.MonkeyPatch) -> tuple[local.NodeRuntime, list[list[str]]]:
    calls: list[list[str]] = []

    def fake_run(cmd, **_):  # noqa: ANN001, ANN003, ANN202
        calls.append(list(cmd))
        answer = answers.pop(0)
        if isinstance(answer, CommandError):
            raise answer
        return subprocess.CompletedProcess(cmd, 0, answer, "")

    monkeypatch.setattr(local, "run", fake_run)
    rt = local.NodeRuntime(CONFIG, "t", tmp_path / "run", tmp_path / "logs")
    (rt.nodes / "n-0").mkdir(parents=True)
    (rt.nodes / "n-0" / "created").write_text("5\n")
    return rt, calls


RACE = CommandError(["runc", "list"], 1, 'level=error msg="stat /run/accordion/t/runc/n-1: no such file or directory"')
LISTING = '[{"id": "n-0", "status": "running"}]'


def test_a_container_removed_during_the_listing_is_listed_again(tmp_path, monkeypatch):
    rt, calls = runtime(tmp_path, [RACE, LISTING], monkeypatch)
    assert rt.list() == {"n-0": local.NodeInfo("n-0", True, 5.0)}
    assert len(calls) == 2


def test_a_listing_that_keeps_failing_or_fails_otherwise_is_an_error(tmp_path, monkeypatch):
    rt, calls = runtime(tmp_path, [RACE] * local.LIST_ATTEMPTS, monkeypatch)
    with pytest.raises(ProviderError, match="no such file"):
        rt.list()
    assert len(calls) == local.LIST_ATTEMPTS
    rt, calls = runtime(tmp_path / "b", [CommandError(["runc", "list"], 1, "permission denied")], monkeypatch)
    with pytest.raises(ProviderError, match="permission denied"):
        rt.list()
    assert len(calls) == 1
