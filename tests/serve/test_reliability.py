"""The short load drill (benchmarks/reliability.py --short, about 90 s): soak at 80 % of the measured capacity,
overload at 3x, recovery, on a real ``plantdx serve`` process.

Bounds here are generous, for a shared 2-core machine: they catch errors, hangs, leaks and shedding that is not
fast, not a few percent of latency. The exact targets, and the full 5-minute soak, are ``make reliability``'s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
DEADLINE_MS = 2000  # serve.request_timeout_ms: past it a queued request is shed; nothing should come near it


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("reliability") / "reliability.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "reliability.py"), "--short", "--no-fail", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def test_soak_at_80_percent_serves_everything(drill: dict[str, Any]) -> None:
    assert drill["capacity_rps"] > 20, "the service barely serves"
    soak = drill["phases"]["soak"]
    assert soak["unexpected"] == 0, soak["statuses"]  # no 5xx but deliberate 503s, no timeouts, no resets
    assert soak["statuses"].get("200", 0) >= 0.95 * sum(soak["statuses"].values())
    assert soak["ok_rps"] >= 0.6 * soak["offered_rps"], "the soak did not get the load it asked for"
    assert soak["p99_ms"] < DEADLINE_MS


def test_memory_is_flat_and_no_descriptor_leaks(drill: dict[str, Any]) -> None:
    memory = drill["memory"]
    assert memory["soak_rss_growth"] <= 0.10, memory
    # thousands of requests and hundreds of connections have come and gone: a leak would show in the hundreds
    assert memory["end_tcp_sockets"] == memory["warm_tcp_sockets"], memory
    assert memory["end_fds"] <= memory["warm_fds"] + 4, memory  # a second pooled SQLite connection at most


def test_overload_sheds_fast_with_503_and_recovers(drill: dict[str, Any]) -> None:
    over = drill["phases"]["overload"]
    assert over["unexpected"] == 0, over["statuses"]  # refused with 503, never timed out or reset
    assert over["statuses"].get("503", 0) > 0.2 * sum(over["statuses"].values()), "3x capacity must be shed"
    assert over["statuses"].get("200", 0) > 0, "the service must keep serving what it admits"
    assert over["server_side"]["shed_p99_ms"] < 50, "a refusal costs the server next to nothing"
    assert over["probe"]["shed_p99_ms"] < DEADLINE_MS / 2, "a refused client hears so fast, not at the deadline"
    assert over["server_side"]["ok_p99_ms"] < DEADLINE_MS, "what is admitted is served before its deadline"
    recovered = over["recovery"]["recovered_after_s"]
    assert recovered is not None and recovered <= 10, over["recovery"]
    after = drill["phases"]["after"]
    assert after["unexpected"] == 0 and after["statuses"].get("503", 0) == 0, after["statuses"]
