"""Smaller hardening: an MQTT client id no one can take over, and provisioning (root) that sets owner and mode
on the file it opened, never through a path the service user could redirect."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.link.mqtt import CLIENT_ID_NAME, BrokerSettings, MqttLink, client_id_for
from agent.service.provisioning import FILE_NAME, Outcome, provision
from tests.support.broker import HOST, Broker

DEVICE = "door-7"


def test_a_client_connecting_with_the_device_id_does_not_knock_the_device_off(broker: Broker) -> None:
    link = MqttLink(
        BrokerSettings(url=broker.url, keepalive=5, reconnect_min_seconds=0.1, reconnect_max_seconds=0.5),
        DEVICE,
        lambda request: None,
    )
    link.start()
    intruder = paho.Client(CallbackAPIVersion.VERSION2, client_id=DEVICE, protocol=paho.MQTTv5)
    connected = threading.Event()
    intruder.on_connect = lambda *args: connected.set()
    try:
        assert link.wait_connected(10)
        intruder.connect(HOST, broker.port, keepalive=5)
        intruder.loop_start()
        assert connected.wait(10)
        assert not _drops(link, seconds=2.0)
        assert link.connection_epoch == 1  # never reconnected: the broker had no reason to drop it
    finally:
        intruder.loop_stop()
        intruder.disconnect()
        link.stop({"schema": 1, "state": "offline"}, timeout=0.5)


def _drops(link: MqttLink, seconds: float) -> bool:
    """True if the link was disconnected at any moment within `seconds`."""
    done = threading.Event()
    timer = threading.Timer(seconds, done.set)
    timer.start()
    while not done.is_set():
        if not link.connected or link.connection_epoch != 1:
            timer.cancel()
            return True
        done.wait(0.01)
    return False


def test_the_client_id_is_unguessable_and_kept_privately_in_the_state_directory(tmp_path: Path) -> None:
    first = client_id_for(DEVICE, tmp_path)
    assert first.startswith(f"{DEVICE}-") and len(first) == len(DEVICE) + 17
    assert client_id_for(DEVICE, tmp_path) == first  # the same after a restart
    assert client_id_for(DEVICE, tmp_path / "elsewhere") != first  # another device, another suffix
    assert stat.S_IMODE((tmp_path / CLIENT_ID_NAME).stat().st_mode) == 0o600


def test_provisioning_never_changes_a_file_a_planted_symlink_points_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service user owns the state directory and may swap a file provisioning just created for a
    symlink; a chown or chmod by path would then change the symlink's target as root."""
    boot, etc, state = tmp_path / "boot", tmp_path / "etc", tmp_path / "state"
    boot.mkdir()
    state.mkdir()
    (boot / FILE_NAME).write_text('[events]\ncamera_id = "front"\n')
    victim = tmp_path / "victim"
    victim.write_text("root's file")
    victim.chmod(0o644)
    real_fsync: Callable[[int], None] = os.fsync

    def swap_after_write(descriptor: int) -> None:  # the attacker, right after provisioning writes a file
        real_fsync(descriptor)
        path = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
        if path.parent == state and path.exists():
            path.unlink()
            path.symlink_to(victim)

    monkeypatch.setattr(os, "fsync", swap_after_write)
    owner = (os.getuid(), os.getgid() + 1 if os.getuid() == 0 else os.getgid())
    result = provision(boot, etc, state, owner=owner)
    monkeypatch.undo()
    assert result.outcome is Outcome.APPLIED
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert victim.stat().st_gid == os.getgid()
