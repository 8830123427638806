"""The hour before the console started: a device's own kept telemetry (`get_telemetry`) merged into the plotted
history (FleetState.merge_history), and the backfill that asks each online device once, over a real Mosquitto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cli.console.backfill import HistoryBackfill
from agent.cli.console.fleet import FleetState
from agent.cli.console.remote import Outcome, Remote
from agent.identity import utc_iso
from agent.link.mqtt import BrokerSettings
from agent.wire import Command, ErrorCode, encode, error_document, ok_document
from tests.support.broker import Broker
from tests.support.responder import Responder

NOW = 1_800_000_000.0  # the console's clock


def at(moment: float) -> str:
    return utc_iso(datetime.fromtimestamp(moment, UTC))


def document(fps: float, moment: float) -> dict[str, Any]:
    """A telemetry document as a device publishes it, stamped `moment` by the device's clock."""
    total = {"p50": 40.0, "p95": 60.0}
    return {"schema": 1, "at": at(moment), "fps": fps, "latency_ms": {"total": total}, "outbox": {"depth": 1}}


def page(points: list[dict[str, Any]], device_now: float = NOW) -> dict[str, Any]:
    """get_telemetry's data, answered when the device's clock read `device_now`."""
    return {"at": at(device_now), "history_seconds": 3600.0, "spacing_seconds": 30.0, "points": points}


def state_with_live_telemetry(*moments: float) -> FleetState:
    """An online device whose telemetry this console received at `moments` (console and device clocks agree)."""
    clock = [NOW]
    state = FleetState(clock=lambda: clock[0])
    state.on_status("dev1", {"state": "online"})
    for moment in moments:
        clock[0] = moment
        state.on_telemetry("dev1", document(moment - NOW, moment))
    clock[0] = NOW
    return state


def plotted(state: FleetState) -> dict[str, list[Any]]:
    return state.series(["dev1"])["dev1"]


# ------------------------------------------------------------------------------------ merge


def test_the_devices_hour_comes_before_what_the_console_received_itself() -> None:
    state = state_with_live_telemetry(NOW - 20, NOW - 10, NOW)
    kept = [document(-100.0, NOW - 3000 + 30 * n) for n in range(100)]  # to NOW - 30: ends before the first live
    assert state.merge_history("dev1", page(kept)) == 100
    series = plotted(state)
    assert series["t"][0] == NOW - 3000 and series["t"][-3:] == [NOW - 20, NOW - 10, NOW]
    assert all(earlier < later for earlier, later in pairwise(series["t"]))
    assert series["fps"][:100] == [-100.0] * 100 and series["fps"][-3:] == [-20.0, -10.0, 0.0]


def test_a_point_the_console_received_itself_is_not_added_twice() -> None:
    state = state_with_live_telemetry(NOW - 60)
    live = document(-60.0, NOW - 60)
    earlier = document(-100.0, NOW - 120)
    answered_late = page([earlier, live], device_now=NOW + 5)  # the reply took 5 s: `live` lands before itself
    assert state.merge_history("dev1", answered_late) == 1
    assert plotted(state)["fps"] == [-100.0, -60.0]


def test_a_document_merged_before_it_arrived_live_is_not_plotted_again() -> None:
    clock = [NOW]
    state = FleetState(clock=lambda: clock[0])
    state.on_status("dev1", {"state": "online"})
    late = document(1.0, NOW - 30)
    assert state.merge_history("dev1", page([late])) == 1
    clock[0] = NOW + 15  # the broker delivers it to the console's subscription after the reply that held it
    state.on_telemetry("dev1", late)
    assert plotted(state)["t"] == [NOW - 30]


def test_merging_the_same_answer_again_adds_nothing() -> None:
    state = state_with_live_telemetry(NOW)
    answer = page([document(-1.0, NOW - 600 + 60 * n) for n in range(10)])
    assert state.merge_history("dev1", answer) == 10
    assert state.merge_history("dev1", answer) == 0 and len(plotted(state)["t"]) == 11


def test_a_device_clock_two_hours_slow_still_plots_its_hour_in_place() -> None:
    state = state_with_live_telemetry(NOW)
    slow = NOW - 7200
    assert state.merge_history("dev1", page([document(1.0, slow - 600), document(2.0, slow - 60)], slow)) == 2
    assert plotted(state)["t"] == [NOW - 600, NOW - 60, NOW]


def test_points_older_than_the_hour_are_left_out() -> None:
    state = state_with_live_telemetry(NOW)
    assert state.merge_history("dev1", page([document(1.0, NOW - 3700), document(2.0, NOW - 3500)])) == 1
    assert plotted(state)["t"][0] == NOW - 3500


def test_a_device_the_console_does_not_know_gets_nothing() -> None:
    state = FleetState(clock=lambda: NOW)
    assert state.merge_history("ghost", page([document(1.0, NOW - 60)])) == 0
    assert state.device_ids() == []


points_of_any_shape = st.lists(
    st.one_of(
        st.builds(document, st.floats(-1e6, 1e6), st.floats(NOW - 8000, NOW + 8000)),
        st.dictionaries(st.sampled_from(["at", "fps", "outbox"]), st.none() | st.integers() | st.text(max_size=30)),
        st.none() | st.integers() | st.text(max_size=10),
    ),
    max_size=400,
)


@given(points=points_of_any_shape, device_now=st.none() | st.floats(NOW - 8000, NOW + 8000))
def test_any_answer_leaves_a_history_in_order_within_the_hour_and_bounded(
    points: list[Any], device_now: float | None
) -> None:
    state = state_with_live_telemetry(NOW - 10, NOW)
    answer = page(points, device_now or NOW) | ({"at": None} if device_now is None else {})
    state.merge_history("dev1", answer)
    times = plotted(state)["t"]
    assert all(later - earlier >= state.spacing - 0.1 for earlier, later in pairwise(times[:-2]))
    assert times == sorted(times) and times[-2:] == [NOW - 10, NOW] and times[0] >= NOW - 3600
    assert len(times) <= 360


# ------------------------------------------------------------------------------------ backfill


@pytest.fixture
def responder(broker: Broker) -> Iterator[Responder]:
    device = Responder(broker)
    yield device
    device.close()


def backfill(broker: Broker, state: FleetState) -> HistoryBackfill:
    """The console's backfill, asking through the console's `Remote` (unsigned: the command is open)."""
    remote = Remote(BrokerSettings(url=broker.url), timeout=2, sign_key=None)
    return HistoryBackfill(state, lambda devices: remote.call(devices, Command.GET_TELEMETRY, {}))


def answering(asked: list[str], reply: Any) -> Any:
    def answer(request: dict[str, Any]) -> bytes | None:
        asked.append(str(request.get("request_id")))
        return reply(str(request.get("request_id"))) if reply else None

    return answer


def test_an_online_device_is_asked_once_and_its_hour_plotted(broker: Broker, responder: Responder) -> None:
    state, asked = state_with_live_telemetry(NOW), []
    kept = [document(7.0, NOW - 1800), document(8.0, NOW - 900)]
    responder.answer = answering(asked, lambda rid: encode(ok_document(rid, page(kept))))
    filler = backfill(broker, state)
    assert filler.run_once() == {"dev1": 2} and filler.run_once() == {}
    assert len(asked) == 1 and plotted(state)["fps"] == [7.0, 8.0, 0.0]


def test_an_older_agent_that_does_not_know_the_command_is_not_asked_again(broker: Broker, responder: Responder) -> None:
    state, asked = state_with_live_telemetry(NOW), []
    unknown = lambda rid: json.dumps(error_document(rid, ErrorCode.UNKNOWN_COMMAND, "unknown command")).encode()  # noqa: E731
    responder.answer = answering(asked, unknown)
    filler = backfill(broker, state)
    assert filler.run_once() == {} and filler.run_once() == {}
    assert len(asked) == 1 and plotted(state)["t"] == [NOW]  # today's behaviour: from the console's start


def test_a_silent_device_is_asked_again_a_few_times_only(broker: Broker, responder: Responder) -> None:
    state, asked = state_with_live_telemetry(NOW), []
    responder.answer = answering(asked, None)
    filler = backfill(broker, state)
    for _ in range(filler.tries + 2):
        assert filler.run_once() == {}
    assert len(asked) == filler.tries


def test_an_offline_device_is_not_asked(broker: Broker, responder: Responder) -> None:
    state, asked = FleetState(clock=lambda: NOW), []
    state.on_status("dev1", {"state": "offline", "reason": "stopped"})
    responder.answer = answering(asked, lambda rid: encode(ok_document(rid, page([]))))
    assert backfill(broker, state).run_once() == {} and asked == []


def test_a_backfill_stopped_between_batches_asks_no_further_batch() -> None:
    """Batches are paced (the page keeps up while hundreds of devices answer); a console stopping meanwhile
    asks nothing more."""
    state = FleetState(clock=lambda: NOW)
    for device in ("dev1", "dev2", "dev3"):
        state.on_status(device, {"state": "online"})
    asked: list[list[str]] = []

    def fetch(devices: list[str]) -> dict[str, Outcome]:
        asked.append(devices)
        filler.stop()  # the console stops while the first batch is answered
        return {device: Outcome(True, page([]), None) for device in devices}

    filler = HistoryBackfill(state, fetch, batch=1, pause=60.0)
    assert filler.run_once() == {"dev1": 0} and asked == [["dev1"]]
