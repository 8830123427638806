"""Home Assistant through `faceagent run`: a real process, a real Mosquitto, real frames, real SQLite.

The "face present" sensor must be true: correct from the first frame (a crash may have left `present: true`
retained) and off after a clean stop. The state directory remembers what was announced, so a later start
under another device id removes the old device instead of leaving an orphan.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from agent.gallery.store import GalleryStore
from tests.support.agent_process import enroll_cli, faceagent, start_agent
from tests.support.broker import Broker, Observer
from tests.support.data import BRICK, CLIP_ENROLL, CLIP_FRAMES

pytestmark = pytest.mark.slow  # `faceagent run` as a real process

OLD, NEW = "hall-1", "hall-2"


def write_config(
    tmp_path: Path, broker: Broker, device: str, *, homeassistant: bool = True, person_minutes: int = 0
) -> Path:
    config = tmp_path / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{device}"\nkeepalive = 5\n'
        "[camera]\nfps = 10\nloop = true\n"
        '[events]\ncamera_id = "hall"\n'
        f"[homeassistant]\nenabled = {'true' if homeassistant else 'false'}\n"
        f"person_presence_minutes = {person_minutes}\n"
    )
    return config


def run_agent(config: Path, db: Path, source: Path) -> subprocess.Popen[str]:
    return start_agent(config, db, source, stderr=subprocess.PIPE)


def stop(agent: subprocess.Popen[str]) -> None:
    """SIGTERM, and a clean exit (its stderr in the failure message otherwise)."""
    agent.send_signal(signal.SIGTERM)
    _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr


def presence(observer: Observer, device: str) -> list[bool]:
    return [m.json()["present"] for m in observer.on(f"faceagent/{device}/presence") if m.payload]


def retained_presence(broker: Broker, observe, device: str) -> bool:
    """What a Home Assistant that starts now is told."""
    late = observe(broker, [f"faceagent/{device}/presence"])
    assert late.wait_for(lambda m: bool(m), 5), "no retained presence"
    return late.messages[-1].json()["present"]


@pytest.fixture
def empty_scene(tmp_path: Path, shared_data: Path) -> Path:
    """A camera looking at a brick wall: frames with no face in them."""
    folder = tmp_path / "wall"
    folder.mkdir()
    shutil.copy(shared_data / BRICK, folder / "frame.png")
    return folder


def test_the_first_frame_clears_a_presence_left_on_by_a_crash(
    tmp_path: Path, broker: Broker, observe, empty_scene: Path
) -> None:
    leftover = observe(broker, [])
    crashed = b'{"schema":1,"present":true,"faces":1}'  # retained, as a crash in mid-visit leaves it
    leftover.client.publish(f"faceagent/{OLD}/presence", crashed, qos=1, retain=True).wait_for_publish(5)
    observer = observe(broker, [f"faceagent/{OLD}/presence"])
    agent = run_agent(write_config(tmp_path, broker, OLD), tmp_path / "gallery.db", empty_scene)
    try:
        assert observer.wait_for(lambda _: False in presence(observer, OLD), timeout=60), "presence never cleared"
    finally:
        stop(agent)


def test_a_clean_stop_leaves_presence_off(tmp_path: Path, broker: Broker, observe, shared_data: Path) -> None:
    observer = observe(broker, [f"faceagent/{OLD}/presence"])
    frames = shared_data / CLIP_FRAMES
    agent = run_agent(write_config(tmp_path, broker, OLD), tmp_path / "gallery.db", frames)
    try:
        assert observer.wait_for(lambda _: True in presence(observer, OLD), timeout=60), "no face ever present"
    finally:
        stop(agent)
    assert retained_presence(broker, observe, OLD) is False


def test_a_new_device_id_removes_the_old_device_from_home_assistant(
    tmp_path: Path, broker: Broker, observe, empty_scene: Path
) -> None:
    db = tmp_path / "gallery.db"
    watcher = observe(broker, ["homeassistant/#"])
    agent = run_agent(write_config(tmp_path, broker, OLD), db, empty_scene)
    try:
        assert watcher.wait_for(lambda m: sum(f"/{OLD}/" in x.topic for x in m) == 3, timeout=60)
    finally:
        stop(agent)
    agent = run_agent(write_config(tmp_path, broker, NEW), db, empty_scene)
    try:
        assert watcher.wait_for(lambda m: sum(f"/{NEW}/" in x.topic for x in m) == 3, timeout=60)
        old_configs = {m.topic for m in watcher.messages if f"/{OLD}/" in m.topic}
        assert watcher.wait_for(lambda m: {x.topic for x in m if not x.payload} == old_configs, timeout=10)
    finally:
        stop(agent)
    late = observe(broker, ["homeassistant/#"])
    late.wait_for(lambda m: False, 0.5)
    assert {m.topic for m in late.messages if m.payload} == {m.topic for m in watcher.messages if f"/{NEW}/" in m.topic}


def test_a_person_sensor_is_announced_turned_on_and_removed_by_the_running_agent(
    tmp_path: Path, broker: Broker, observe, shared_data: Path
) -> None:
    """Enrolled before the start: announced off; recognized in the clip: on; erased from the CLI: removed."""
    config = write_config(tmp_path, broker, OLD, person_minutes=5)
    db = tmp_path / "gallery.db"
    miranda = enroll_cli(config, db, "Lin-Manuel Miranda", shared_data / CLIP_ENROLL)
    sensor = f"homeassistant/binary_sensor/{OLD}/seen_{miranda}/config"
    state = f"faceagent/{OLD}/seen/{miranda}"
    watcher = observe(broker, [sensor, state])

    def states() -> list[bool]:
        return [m.json()["seen"] for m in watcher.on(state) if m.payload]

    agent = run_agent(config, db, shared_data / CLIP_FRAMES)
    try:
        assert watcher.wait_for(lambda _: bool(watcher.on(sensor)), timeout=60), "no sensor announced"
        assert watcher.on(sensor)[0].json()["name"] == "Lin-Manuel Miranda seen in the last 5 minutes"
        assert watcher.wait_for(lambda _: True in states(), timeout=120), states()
        assert states()[0] is False  # announced off, before the first recognition
        erased = faceagent("person", "delete", "--db", str(db), miranda, config=config)
        assert erased.returncode == 0, erased.stderr
        assert watcher.wait_for(lambda m: {x.topic for x in m if not x.payload} == {sensor, state}, timeout=30)
    finally:
        stop(agent)
    late = observe(broker, [sensor, state])
    assert not late.wait_for(lambda m: bool(m), 0.5), "the erased person's sensor is still retained"


def test_switching_person_sensors_off_removes_them_at_the_next_start(
    tmp_path: Path, broker: Broker, observe, empty_scene: Path
) -> None:
    db = tmp_path / "gallery.db"
    with GalleryStore.open(db) as cli:  # enrolled by another process; no photo is needed for the sensor
        grace = cli.add_person("Grace").id
    sensor = f"homeassistant/binary_sensor/{OLD}/seen_{grace}/config"
    state = f"faceagent/{OLD}/seen/{grace}"
    watcher = observe(broker, [sensor, state])
    agent = run_agent(write_config(tmp_path, broker, OLD, person_minutes=5), db, empty_scene)
    try:
        assert watcher.wait_for(lambda m: {x.topic for x in m if x.payload} == {sensor, state}, timeout=60)
    finally:
        stop(agent)
    agent = run_agent(write_config(tmp_path, broker, OLD, person_minutes=0), db, empty_scene)
    try:
        assert watcher.wait_for(lambda m: {x.topic for x in m if not x.payload} == {sensor, state}, timeout=60)
    finally:
        stop(agent)
    late = observe(broker, [sensor, state])
    assert not late.wait_for(lambda m: bool(m), 0.5), "a person sensor is still retained"
