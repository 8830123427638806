"""The camera dies and comes back under the real agent: a real `faceagent run --source picamera2` process whose
`import picamera2` finds tests/support/fakes/picamera2 (the hardware boundary; there is no Pi camera here), serving the
Hamilton clip and failing like a pulled ribbon cable while a control file exists. The agent must stay up, say so
in its retained status, keep answering commands, and deliver frames and events again once the cable is back.
The same for a folder of recorded frames that goes away and comes back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_process import ctl_call, fake_camera_env, start_agent, stop_agent
from tests.support.broker import Observer
from tests.support.faults import DEVICE, EVENT_TOPICS, STATUS, delivered, enroll, write_config

pytestmark = pytest.mark.slow  # the fault suite: real agent processes, killed, starved and cut off

UNPLUGGED_SECONDS = 8.0  # longer than the source's 5 s capture timeout, so reopening fails a few times too
# main and lores at the clip's own size: no resizing in the fake, faces as large as in the folder-source tests
CAMERA = 'source = "picamera2"\nsize = "640x360"\nlores_size = "640x360"\nreconnect_max_seconds = 1.0\n'


def cameras(observer: Observer) -> list[dict[str, Any]]:
    """The `camera` part of every status document, in arrival order."""
    return [m.json()["camera"] for m in list(observer.messages) if m.topic == STATUS and m.payload]


def latest_camera(observer: Observer) -> dict[str, Any]:
    seen = [c for c in cameras(observer) if c]
    return seen[-1] if seen else {}


def waited(observer: Observer, predicate: Any, timeout: float, what: str, log: Path) -> float:
    """When (time.monotonic()) `predicate(observer)` held; fails with the agent's log tail when it never did."""
    assert observer.wait_for(lambda _: predicate(observer), timeout=timeout), (
        f"{what} within {timeout:g} s; last camera status {latest_camera(observer)}\n" + log.read_text()[-3000:]
    )
    return time.monotonic()


def camera_agent_files(tmp_path: Path, broker, shared_data: Path) -> tuple[Path, Path, Path]:
    """(config with the picamera2 settings, enrolled gallery, log path) for an agent on the fake camera."""
    config = write_config(tmp_path, broker, fps=15)
    config.write_text(config.read_text().replace("[camera]\n", "[camera]\n" + CAMERA))
    db = tmp_path / "gallery.db"
    enroll(shared_data, db, config)
    return config, db, tmp_path / "agent.log"


def test_camera_unplugged_and_replugged(tmp_path: Path, broker, observe, shared_data: Path, frames: Path) -> None:
    config, db, log = camera_agent_files(tmp_path, broker, shared_data)
    observer = observe(broker, [*EVENT_TOPICS, STATUS], client_id="camera-observer")
    control = tmp_path / "unplugged"
    agent = start_agent(config, db, "picamera2", env=fake_camera_env(frames, control), log=log)
    try:
        waited(observer, lambda o: len(delivered(o)) >= 3, 90, "no events from the camera", log)
        waited(observer, lambda o: latest_camera(o).get("state") == "ok", 5, "camera not reported ok", log)
        before = latest_camera(observer)
        assert before["source"] == "picamera2:0" and before["errors"] == 0, before

        control.touch()  # the cable is pulled
        unplugged_at = time.monotonic()
        waited(
            observer,
            lambda o: latest_camera(o).get("state") == "reconnecting" and latest_camera(o).get("errors", 0) >= 2,
            UNPLUGGED_SECONDS + 4,
            "a dead camera not reported as reconnecting after a failed reopen",
            log,
        )
        down = latest_camera(observer)
        answer = ctl_call(broker.url, DEVICE, "ping")
        assert answer.returncode == 0, answer.stdout + answer.stderr
        assert '"pong": true' in answer.stdout, answer.stdout
        time.sleep(max(0.0, unplugged_at + UNPLUGGED_SECONDS - time.monotonic()))
        assert agent.poll() is None, "the agent died without its camera:\n" + log.read_text()[-3000:]
        events_before = len(set(delivered(observer)))
        frames_before = latest_camera(observer)["frames"]

        control.unlink()  # and put back
        replugged_at = time.monotonic()
        ok_at = waited(
            observer,
            lambda o: latest_camera(o).get("state") == "ok" and latest_camera(o)["frames"] > frames_before,
            20,
            "frames did not flow again",
            log,
        )
        event_at = waited(
            observer, lambda o: len(set(delivered(o))) > events_before, 30, "no new event after the camera came back",
            log,
        )  # fmt: skip
        waited(observer, lambda o: len(set(delivered(o))) >= events_before + 3, 30, "events did not keep coming", log)
        after = latest_camera(observer)
    finally:
        code = stop_agent(agent)
    assert code == 0, log.read_text()[-3000:]
    assert down["last_error_at"] and any(
        m in (down["last_error"] or "") for m in ("no frame within 5 s", "no camera number 0")
    ), down
    assert after["reconnects"] >= 1 and after["errors"] >= down["errors"] and after["last_error"], after
    text = log.read_text()
    assert "Camera frontend has timed out!" in text  # the fake's libcamera said so, on the agent's stderr
    print(
        f"\nunplugged {UNPLUGGED_SECONDS:g} s: status while down: state={down['state']} errors={down['errors']}"
        f" last_error={down['last_error']!r}\nreplug -> status ok with new frames {ok_at - replugged_at:.1f} s"
        f" (status every 1 s), -> first new event {event_at - replugged_at:.1f} s;"
        f" reconnects={after['reconnects']} errors={after['errors']}"
        f" frames={after['frames']} dropped={after['dropped']}"
    )


def test_recorded_folder_vanishes_and_returns(tmp_path: Path, broker, observe, shared_data: Path, frames: Path) -> None:
    """A folder source on a share or stick that goes away (here: its symlink removed) and comes back: one error
    per attempt, not one warning per image, and the replay starts again once the folder is back."""
    config = write_config(tmp_path, broker)
    config.write_text(config.read_text().replace("[camera]\n", "[camera]\nreconnect_max_seconds = 1.0\n"))
    db = tmp_path / "gallery.db"
    enroll(shared_data, db, config)
    log = tmp_path / "agent.log"
    observer = observe(broker, [*EVENT_TOPICS, STATUS], client_id="folder-observer")
    folder = tmp_path / "recordings"
    folder.symlink_to(frames, target_is_directory=True)
    agent = start_agent(config, db, folder, log=log)
    try:
        waited(observer, lambda o: len(delivered(o)) >= 2, 90, "no events from the folder", log)
        folder.unlink()
        waited(
            observer,
            lambda o: latest_camera(o).get("state") == "reconnecting" and latest_camera(o).get("errors", 0) >= 2,
            10,
            "a vanished folder not reported as reconnecting",
            log,
        )
        down = latest_camera(observer)
        assert agent.poll() is None, "the agent died without its folder:\n" + log.read_text()[-3000:]
        events_before = len(set(delivered(observer)))
        frames_before = latest_camera(observer)["frames"]
        folder.symlink_to(frames, target_is_directory=True)
        back_at = time.monotonic()
        ok_at = waited(
            observer,
            lambda o: latest_camera(o).get("state") == "ok" and latest_camera(o)["frames"] > frames_before,
            20,
            "frames did not flow again",
            log,
        )
        event_at = waited(observer, lambda o: len(set(delivered(o))) > events_before, 30, "no new event", log)
        after = latest_camera(observer)
    finally:
        code = stop_agent(agent)
    assert code == 0, log.read_text()[-3000:]
    assert any(m in (down["last_error"] or "") for m in ("the folder is gone", "cannot list the folder")), down
    assert after["reconnects"] >= 1, after
    text = log.read_text()
    assert "skipping" not in text, text[-3000:]  # no warning per image of a folder that is not there
    print(
        f"\nfolder gone: state={down['state']} errors={down['errors']} last_error={down['last_error']!r}\n"
        f"back -> status ok with new frames {ok_at - back_at:.1f} s, -> first new event {event_at - back_at:.1f} s;"
        f" reconnects={after['reconnects']} errors={after['errors']}"
    )


def test_agent_started_with_no_camera_runs_and_picks_it_up(
    tmp_path: Path, broker, observe, shared_data: Path, frames: Path
) -> None:
    """Boot with the cable out (or the camera not yet detected): the agent comes up, says so, answers commands,
    and starts recognizing once the camera appears, with no restart."""
    config, db, log = camera_agent_files(tmp_path, broker, shared_data)
    observer = observe(broker, [*EVENT_TOPICS, STATUS], client_id="boot-observer")
    control = tmp_path / "unplugged"
    control.touch()
    agent = start_agent(config, db, "picamera2", env=fake_camera_env(frames, control), log=log)
    try:
        waited(
            observer,
            lambda o: latest_camera(o).get("state") == "reconnecting" and latest_camera(o).get("errors", 0) >= 1,
            90,
            "a missing camera at start not reported as reconnecting",
            log,
        )
        down = latest_camera(observer)
        answer = ctl_call(broker.url, DEVICE, "ping")
        assert answer.returncode == 0, answer.stdout + answer.stderr
        assert agent.poll() is None, "the agent died without a camera at start:\n" + log.read_text()[-3000:]
        assert delivered(observer) == []
        control.unlink()
        plugged_at = time.monotonic()
        event_at = waited(observer, lambda o: len(delivered(o)) >= 1, 30, "no event once the camera appeared", log)
        after = latest_camera(observer)
    finally:
        code = stop_agent(agent)
    assert code == 0, log.read_text()[-3000:]
    assert "no camera number 0" in (down["last_error"] or ""), down
    assert after["state"] == "ok" and after["reconnects"] >= 1, after
    print(f"\nstarted without a camera: errors={down['errors']}; plugged -> first event {event_at - plugged_at:.1f} s")
