"""set_config on the running agent: the changed sections reach their consumers between two frames, and the
recognizer carries on (its open tracks and cooldowns survive a threshold change).

The agent runs in this process, its frame loop on the test's thread, over real frames of the Hamilton clip
cut into two shots of Lin-Manuel Miranda with the audience between them, with a real Mosquitto carrying the
signed set_config.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import Settings, load_settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.recognition.enrollment import Enroller
from agent.service.app import AgentService, RunOptions
from agent.tracking.tracker import Track
from agent.vision.pipeline import FacePipeline
from tests.support.broker import Broker, Observer
from tests.support.commands import OPERATOR_TOML, operator_signed
from tests.support.data import CLIP_ENROLL, CLIP_FRAMES

DEVICE = "live-settings-1"
# Miranda's shot is frames 83-211 and the audience 212-275 (tests/test_replay.py): his face, a cut to the
# audience, and a cut back to him, which starts a new track that decides again.
CUT = [*range(83, 131), *range(212, 236), *range(150, 201)]


def cut_of_the_clip(shared_data: Path, folder: Path) -> Path:
    folder.mkdir()
    for position, frame in enumerate(CUT):
        (folder / f"{position:04d}.jpg").symlink_to(shared_data / CLIP_FRAMES / f"frame_{frame:04d}.jpg")
    return folder


def set_config(observer: Observer, values: dict[str, Any], timeout: float = 60.0) -> dict:
    """A signed set_config, sent again (a fresh request) until the agent, which may still be connecting,
    answers it; its reply."""
    deadline, attempt = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        attempt += 1
        request = {"request_id": f"set-{attempt}", "args": {"values": values}}
        observer.publish(f"faceagent/{DEVICE}/cmd/set_config", operator_signed(DEVICE, "set_config", request))

        def answered(_: object, request_id: str = request["request_id"]) -> bool:
            return any(m.json().get("request_id") == request_id for m in observer.messages)

        if observer.wait_for(answered, timeout=3):
            return next(m.json() for m in observer.messages if m.json().get("request_id") == request["request_id"])
    raise AssertionError("the agent never answered set_config")


@pytest.mark.slow
def test_a_threshold_change_keeps_open_tracks_and_cooldowns(
    tmp_path: Path, broker: Broker, observe, shared_data: Path, pipeline: FacePipeline
) -> None:
    db = tmp_path / "gallery.db"
    with GalleryStore.open(db) as store:
        Enroller(pipeline, store, Matcher.for_gallery(Settings().gallery), Settings()).enroll(
            [("enroll", shared_data / CLIP_ENROLL)], actor="test", name="Lin-Manuel Miranda"
        )
    config = tmp_path / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\n[events]\ncooldown_seconds = 3600\n' + OPERATOR_TOML
    )
    observer = observe(broker, [f"faceagent/{DEVICE}/cmd/set_config/reply"])
    recognized: list[dict[str, Any]] = []
    at_change: dict[str, Any] = {}

    def on_event(event: dict[str, Any]) -> None:
        """On the frame loop, as each event is written: at the first recognition, the threshold and margin
        change while his track is open (the next frame is not read before the reply)."""
        if event["type"] != "face_recognized":
            return
        recognized.append(event)
        if len(recognized) == 1:
            (track,) = [t for t in service.recognizer.tracker.active if t.decision and t.decision.accepted]
            at_change.update(track=track, frames=track.frames)
            at_change["reply"] = set_config(observer, {"gallery.threshold": 0.36, "gallery.margin": 0.06})

    source = cut_of_the_clip(shared_data, tmp_path / "frames")
    options = RunOptions(source=f"folder:{source}", db=db, settings_path=config, lossless=True, on_event=on_event)
    service = AgentService(load_settings(config), options)
    assert service.run() == 0
    assert at_change["reply"]["status"] == "ok", at_change["reply"]
    assert (service.matcher.threshold, service.matcher.margin) == (0.36, 0.06)  # the change reached the matcher
    track: Track = at_change["track"]
    assert track.frames > at_change["frames"]  # the track open at the change went on being followed
    assert service.recognizer.events.suppressed >= 1  # he was recognized again after the cut ...
    assert [event["name"] for event in recognized] == ["Lin-Manuel Miranda"]  # ... and the cooldown held it back
