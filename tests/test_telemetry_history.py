"""The device's last hour of telemetry (agent/link/telemetry.py TelemetryHistory) and `get_telemetry`, which
answers it through the real dispatcher: thinned, bounded in points and bytes, open to anyone like get_status."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.commands.dispatcher import CommandDispatcher
from agent.identity import utc_iso
from agent.link.outbox import OutboxStats
from agent.link.telemetry import FrameFigures, StageLatency, Telemetry, TelemetryHistory
from agent.vision.pipeline import FacePipeline
from agent.wire import TelemetryDocument, encode
from tests.support.commands import Device, data, error, make_device

START = datetime(2026, 12, 6, 11, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def document(fps: float, at: datetime, *, note: str = "") -> TelemetryDocument:
    """A telemetry document as the agent builds it, stamped `at`; `note` lengthens it (a long storage error)."""
    figures = FrameFigures(fps=fps, latency_ms={"total": StageLatency(40.0, 60.0)}, dropped_frames=0)
    built = Telemetry("dev1", "1.0", {"detector": "d", "embedder": "e"}).telemetry(figures, OutboxStats(3, 0, 9, 0))
    built["at"] = utc_iso(at)
    built["device"] = "dev1" + note
    return built


def feed(history: TelemetryHistory, clock: FakeClock, gaps: list[float]) -> list[TelemetryDocument]:
    """A document after each gap (seconds, on the history's clock and in `at`); every document offered."""
    offered = []
    for number, gap in enumerate(gaps):
        clock.now += gap
        offered.append(document(float(number), START + timedelta(seconds=clock.now - 1000.0)))
        history.add(offered[-1])
    return offered


# ------------------------------------------------------------------------------------ the history


def test_a_document_a_second_for_two_hours_keeps_one_per_30_s_of_the_last_hour() -> None:
    clock = FakeClock()
    history = TelemetryHistory(clock=clock)
    feed(history, clock, [1.0] * 7200)
    points = history.page()["points"]
    times = [datetime.fromisoformat(point["at"]) for point in points]
    assert 119 <= len(points) <= 120  # the hour's 120 slots, the oldest one partly expired
    assert all(later - earlier == timedelta(seconds=30) for earlier, later in pairwise(times))
    assert times[-1] - times[0] < timedelta(hours=1) and times[-1] >= START + timedelta(seconds=7200 - 30)


def test_a_document_a_minute_is_kept_whole() -> None:
    clock = FakeClock()
    history = TelemetryHistory(clock=clock)
    offered = feed(history, clock, [60.0] * 59)
    assert history.page()["points"] == offered  # the default interval: every document, as published


@given(gaps=st.lists(st.floats(0.0, 400.0), max_size=300), max_points=st.integers(1, 200))
def test_the_history_never_holds_more_than_its_points_bytes_or_hour(gaps: list[float], max_points: int) -> None:
    clock = FakeClock()
    history = TelemetryHistory(max_points=max_points, max_bytes=20_000, clock=clock)
    feed(history, clock, gaps)
    points = history.page()["points"]
    ages = [clock.now - 1000.0 - (datetime.fromisoformat(p["at"]) - START).total_seconds() for p in points]
    assert len(points) <= max_points and history.bytes == sum(len(encode(p)) for p in points) <= 20_000
    assert all(age <= 3600 for age in ages) and ages == sorted(ages, reverse=True)  # oldest first


def test_a_document_over_the_byte_cap_is_not_kept_and_drops_nothing() -> None:
    clock = FakeClock()
    history = TelemetryHistory(max_bytes=4096, clock=clock)
    feed(history, clock, [60.0])
    clock.now += 60
    assert not history.add(document(1.0, START + timedelta(minutes=2), note="x" * 5000))
    assert len(history) == 1


def test_since_gives_only_later_documents() -> None:
    clock = FakeClock()
    history = TelemetryHistory(clock=clock)
    offered = feed(history, clock, [60.0] * 10)
    assert history.page(datetime.fromisoformat(offered[6]["at"]))["points"] == offered[7:]


# ------------------------------------------------------------------------------------ the command


@pytest.fixture
def device(tmp_path: Path, pipeline: FacePipeline) -> tuple[Device, list[TelemetryDocument]]:
    """A device whose commands see a history of five documents a minute apart (operator keys configured)."""
    made = make_device(tmp_path, pipeline)
    clock = FakeClock()
    history = TelemetryHistory(clock=clock)
    offered = feed(history, clock, [60.0] * 5)
    services = dataclasses.replace(made.services, telemetry_history=history.page)
    return dataclasses.replace(made, dispatcher=CommandDispatcher(services, made.dispatcher.security)), offered


def test_get_telemetry_answers_anyone_with_the_kept_documents(device: tuple[Device, list[TelemetryDocument]]) -> None:
    dev, offered = device
    page = data(dev.call("get_telemetry", signed=False))
    assert page["points"] == json.loads(json.dumps(offered))
    assert (page["history_seconds"], page["spacing_seconds"]) == (3600.0, 30.0)
    assert datetime.fromisoformat(page["at"]).tzinfo is not None


def test_get_telemetry_since_answers_only_what_is_newer(device: tuple[Device, list[TelemetryDocument]]) -> None:
    dev, offered = device
    page = data(dev.call("get_telemetry", {"since": offered[2]["at"]}, signed=False))
    assert [point["at"] for point in page["points"]] == [point["at"] for point in offered[3:]]


def test_get_telemetry_refuses_a_since_without_a_zone(device: tuple[Device, list[TelemetryDocument]]) -> None:
    dev, _ = device
    reply = dev.call("get_telemetry", {"since": "2026-12-06T11:00:00"}, signed=False)
    assert error(reply) == "bad_request" and "since" in reply["error"]["message"]


def test_get_telemetry_is_audited_with_how_many_points_it_gave(device: tuple[Device, list[TelemetryDocument]]) -> None:
    dev, _ = device
    dev.call("get_telemetry", signed=False)
    newest = dev.audit()[0]
    assert newest["action"] == "command.get_telemetry" and newest["actor"] == "mqtt:unsigned"
    assert newest["details"]["points"] == 5


def test_an_agent_without_telemetry_answers_with_no_points(tmp_path: Path, pipeline: FacePipeline) -> None:
    assert data(make_device(tmp_path, pipeline).call("get_telemetry", signed=False))["points"] == []
