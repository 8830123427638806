"""The systemd notify protocol against real AF_UNIX datagram sockets standing in for systemd."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.service.sdnotify import Notifier, socket_address, watchdog_seconds


class FakeClock:
    """Monotonic time that only moves when the test says so, so rate limits are exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Receiver:
    """The manager's end: a bound datagram socket; `messages()` drains what has arrived."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def messages(self) -> list[list[str]]:
        received = []
        while True:
            try:
                received.append(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return received

    def lines(self) -> list[str]:
        return [line for message in self.messages() for line in message]


@pytest.fixture
def notify_path(tmp_path: Path) -> str:
    path = str(tmp_path / "notify")
    if len(path) > 100:  # sun_path holds 108 bytes
        pytest.skip(f"tmp_path too long for an AF_UNIX socket: {path}")
    return path


@pytest.fixture
def receiver(notify_path: str) -> Iterator[Receiver]:
    manager = Receiver(notify_path)
    yield manager
    manager.sock.close()


def make(address: str, clock: FakeClock, watchdog_usec: int | None = 1_000_000, **extra: str) -> Notifier:
    env = {"NOTIFY_SOCKET": address, **extra}
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return Notifier.from_environ(env, clock=clock)


def run_frames(notifier: Notifier, clock: FakeClock, seconds: float, step: float = 0.1) -> None:
    for _ in range(round(seconds / step)):
        clock.now += step
        notifier.frame_done()


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    notifier.ready("up")
    notifier.frame_done(12.0)
    notifier.heartbeat("waiting")
    notifier.status("x")
    notifier.stopping()
    assert not notifier.enabled
    assert notifier.ping_interval is None
    assert notifier.send("READY=1") is False


def test_ready_reaches_a_path_socket(receiver: Receiver, notify_path: str) -> None:
    with make(notify_path, FakeClock(), watchdog_usec=None) as notifier:
        notifier.ready()
    assert receiver.messages() == [["READY=1"]]


def test_ready_reaches_an_abstract_socket() -> None:
    name = f"faceagent-test-{uuid.uuid4().hex}"
    manager = Receiver("\0" + name)
    try:
        with make("@" + name, FakeClock(), watchdog_usec=None) as notifier:
            notifier.ready("frames flowing")
        assert manager.messages() == [["READY=1", "STATUS=frames flowing"]]
    finally:
        manager.sock.close()


def test_ready_with_a_watchdog_also_pings(receiver: Receiver, notify_path: str) -> None:
    with make(notify_path, FakeClock()) as notifier:
        notifier.ready()
    assert receiver.messages() == [["READY=1", "WATCHDOG=1"]]


def test_frames_ping_at_half_the_watchdog_interval(receiver: Receiver, notify_path: str) -> None:
    clock = FakeClock()
    with make(notify_path, clock, watchdog_usec=1_000_000) as notifier:
        notifier.ready()
        receiver.messages()
        run_frames(notifier, clock, seconds=3.0)
    assert notifier.ping_interval == 0.5
    assert receiver.lines() == ["WATCHDOG=1"] * 6


def test_a_stalled_loop_sends_no_pings(receiver: Receiver, notify_path: str) -> None:
    clock = FakeClock()
    with make(notify_path, clock) as notifier:
        notifier.ready()
        run_frames(notifier, clock, seconds=1.0)
        receiver.messages()
        clock.now += 60.0  # the loop is stuck: nobody calls frame_done
        assert receiver.messages() == []
        notifier.frame_done()  # it recovers: the first frame pings at once
    assert receiver.lines() == ["WATCHDOG=1"]


def test_real_time_pings_follow_the_loop_and_stop_when_it_stalls(receiver: Receiver, notify_path: str) -> None:
    env = {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "100000"}  # WatchdogSec=100ms: a ping every 50 ms
    with Notifier.from_environ(env) as notifier:
        notifier.ready()
        end = time.monotonic() + 0.4
        while time.monotonic() < end:
            notifier.frame_done()
            time.sleep(0.005)
        flowing = [m for m in receiver.messages() if m == ["WATCHDOG=1"]]
        time.sleep(0.4)  # a stalled frame loop: no frame_done for 8 ping intervals
        stalled = receiver.messages()
    assert len(flowing) >= 4
    assert stalled == []


def test_fps_status_is_rate_limited(receiver: Receiver, notify_path: str) -> None:
    clock = FakeClock()
    with make(notify_path, clock, watchdog_usec=None) as notifier:
        for _ in range(99):  # 9.9 s at 10 fps, status every 5 s
            clock.now += 0.1
            notifier.frame_done(10.0)
    statuses = [line for line in receiver.lines() if line.startswith("STATUS=")]
    assert statuses == ["STATUS=running, 10.0 fps"] * 2


def test_fps_status_shares_the_ping_datagram(receiver: Receiver, notify_path: str) -> None:
    clock = FakeClock()
    with make(notify_path, clock) as notifier:
        notifier.frame_done(14.93)
    assert receiver.messages() == [["WATCHDOG=1", "STATUS=running, 14.9 fps"]]


def test_heartbeat_pings_while_no_frames_arrive(receiver: Receiver, notify_path: str) -> None:
    clock = FakeClock()
    with make(notify_path, clock) as notifier:
        notifier.heartbeat("camera lost, reopening")
        clock.now += 0.6
        notifier.heartbeat("camera lost, reopening")
    assert receiver.messages() == [["WATCHDOG=1", "STATUS=camera lost, reopening"], ["WATCHDOG=1"]]


def test_stopping_is_sent(receiver: Receiver, notify_path: str) -> None:
    with make(notify_path, FakeClock()) as notifier:
        notifier.stopping("flushing outbox")
    assert receiver.messages() == [["STOPPING=1", "STATUS=flushing outbox"]]


def test_reloading_carries_the_monotonic_time_systemd_asks_for(receiver: Receiver, notify_path: str) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    with make(notify_path, FakeClock()) as notifier:
        notifier.reloading("restarting in place")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [[reloading, monotonic, status]] = receiver.messages()
    assert (reloading, status) == ("RELOADING=1", "STATUS=restarting in place")
    assert monotonic.startswith("MONOTONIC_USEC=") and before <= int(monotonic.split("=")[1]) <= after


def test_extend_timeout_is_in_microseconds(receiver: Receiver, notify_path: str) -> None:
    with make(notify_path, FakeClock()) as notifier:
        notifier.extend_timeout(2.5)
    assert receiver.messages() == [["EXTEND_TIMEOUT_USEC=2500000"]]


def test_no_watchdog_usec_means_no_pings(receiver: Receiver, notify_path: str) -> None:
    clock = FakeClock()
    with make(notify_path, clock, watchdog_usec=None) as notifier:
        run_frames(notifier, clock, seconds=5.0)
    assert receiver.messages() == []


def test_a_watchdog_meant_for_another_process_is_ignored(receiver: Receiver, notify_path: str) -> None:
    clock = FakeClock()
    with make(notify_path, clock, WATCHDOG_PID=str(os.getpid() + 1)) as notifier:
        run_frames(notifier, clock, seconds=5.0)
    assert receiver.messages() == []


def test_a_vanished_manager_does_not_raise(notify_path: str) -> None:
    with make(notify_path, FakeClock()) as notifier:  # nothing bound at the path
        notifier.frame_done(5.0)
        assert notifier.send("READY=1") is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("/run/systemd/notify", "/run/systemd/notify"), ("@x", "\0x"), ("vsock:2:9", None)],
)
def test_socket_address(value: str | None, expected: str | None) -> None:
    assert socket_address(value) == expected


@pytest.mark.parametrize(
    ("env", "seconds"),
    [({}, None), ({"WATCHDOG_USEC": "0"}, None), ({"WATCHDOG_USEC": "x"}, None), ({"WATCHDOG_USEC": "30000000"}, 30)],
)
def test_watchdog_seconds(env: dict[str, str], seconds: float | None) -> None:
    assert watchdog_seconds(env, pid=7) == seconds
