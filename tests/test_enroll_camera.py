"""The enroll command's camera mode through the real dispatcher: signed requests, a real gallery file, the real
recognizer fed the Hamilton clip's frames (the performer alone) with the service's `LiveEnrollment` as its views
hook. The windows' views are stored where they end (here the test's thread; on the device the gallery thread)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.gallery.store import GalleryStore
from agent.recognition.capture import CaptureWindow, enroll_capture
from agent.recognition.enrollment import Enroller
from agent.recognition.recognizer import Recognizer
from agent.service.livecapture import LiveEnrollment
from agent.sources.latest import SourceState, SourceStatus
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline
from tests.support.agent_process import faceagent
from tests.support.broker import Broker
from tests.support.commands import Device, data, error, make_device
from tests.support.data import CLIP_FRAMES
from tests.support.responder import Responder

MIRANDA_SHOT = range(83, 212)
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CONSENT = {"reference": "form-17"}


def camera(state: SourceState) -> SourceStatus:
    return SourceStatus("folder frames", state, 0, 0, 0, 0, 0, None, None, None, 0.0)


class Desk:
    """A device with a camera: the dispatcher, `LiveEnrollment` and a recognizer that feeds it."""

    def __init__(self, device: Device, pipeline: FacePipeline, state: SourceState = SourceState.OK) -> None:
        self.device, self.pipeline, self.state = device, pipeline, state
        self.live = LiveEnrollment(lambda: device.current[0], lambda: camera(self.state), self._store)
        device.services.camera = self.live
        self.store = GalleryStore.open(device.store_path)
        settings = device.current[0]
        self.recognizer = Recognizer(pipeline, device.matcher, self.store, settings, "stage", views=self.live)
        self.index = 0

    def _store(self, window: CaptureWindow) -> None:
        settings = self.device.current[0]
        enroller = Enroller(self.pipeline, self.store, self.device.matcher, settings, add_to_matcher=False)
        enroll_capture(window, enroller, self.device.gallery)

    def show(self, frames: Iterable[np.ndarray]) -> None:
        for frame in frames:
            self.index += 1
            self.recognizer.process(frame, T0 + timedelta(seconds=self.index / 30))

    def enroll(self, **args: Any) -> dict:
        return self.device.call("enroll", args)


def clip(shared_data: Path, shot: Iterable[int]) -> Iterable[np.ndarray]:
    for index in shot:
        yield load_image(shared_data / CLIP_FRAMES / f"frame_{index:04d}.jpg")


@pytest.fixture
def desk(tmp_path: Path, pipeline: FacePipeline) -> Iterable[Desk]:
    desk = Desk(make_device(tmp_path, pipeline), pipeline)
    yield desk
    desk.store.close()


def arm(desk: Desk, **camera_args: Any) -> dict:
    return data(desk.enroll(name="Lin-Manuel Miranda", consent=CONSENT, from_camera=camera_args))


def poll(desk: Desk, capture_id: str, **more: Any) -> dict:
    return data(desk.enroll(from_camera={"capture_id": capture_id} | more))


def test_arming_answers_in_progress_with_no_views_yet(desk: Desk) -> None:
    armed = arm(desk, views=5, seconds=20)
    assert armed["status"] == "IN_PROGRESS" and armed["step"] == "collecting"
    assert armed["views"] == 0 and armed["views_needed"] == 5 and armed["capture_id"].startswith("c_")


def test_the_person_in_front_of_the_camera_is_enrolled(desk: Desk, shared_data: Path) -> None:
    capture_id = arm(desk, views=5)["capture_id"]
    desk.show(clip(shared_data, MIRANDA_SHOT))
    done = poll(desk, capture_id)
    assert done["status"] == "SUCCEEDED" and done["templates_added"] == 5 and done["created"]
    assert done["person"]["name"] == "Lin-Manuel Miranda"
    people = data(desk.device.call("list_people"))["people"]
    assert [p["id"] for p in people] == [done["person"]["id"]]


def test_progress_counts_the_views_collected(desk: Desk, shared_data: Path) -> None:
    capture_id = arm(desk, views=10)["capture_id"]
    desk.show(itertools.islice(clip(shared_data, MIRANDA_SHOT), 15))
    progress = poll(desk, capture_id)
    assert progress["status"] == "IN_PROGRESS" and 0 < progress["views"] < 10


def test_enrolled_from_the_camera_the_person_is_recognized_next(desk: Desk, shared_data: Path) -> None:
    capture_id = arm(desk, views=5)["capture_id"]
    desk.show(clip(shared_data, MIRANDA_SHOT))
    person_id = poll(desk, capture_id)["person"]["id"]
    later = Recognizer(desk.pipeline, desk.device.matcher, desk.store, desk.device.current[0], "stage")
    events = []
    for index, frame in enumerate(clip(shared_data, range(150, 212))):
        events += later.process(frame, T0 + timedelta(hours=1, seconds=index / 30)).events
    assert [e["person_id"] for e in events if e["type"] == "face_recognized"] == [person_id]


def test_a_second_capture_is_refused_while_one_runs(desk: Desk) -> None:
    arm(desk)
    reply = desk.enroll(name="Someone Else", consent=CONSENT, from_camera={})
    assert error(reply) == "conflict" and "in progress" in reply["error"]["message"]


def test_a_capture_may_start_once_the_last_has_ended(desk: Desk) -> None:
    capture_id = arm(desk)["capture_id"]
    assert poll(desk, capture_id, cancel=True)["status"] == "CANCELED"
    assert arm(desk)["capture_id"] != capture_id


def test_a_device_without_a_camera_refuses(desk: Desk) -> None:
    desk.state = SourceState.NOT_CONFIGURED
    reply = desk.enroll(name="Lin-Manuel Miranda", consent=CONSENT, from_camera={})
    assert error(reply) == "conflict" and "no camera" in reply["error"]["message"]


def test_an_agent_without_a_frame_loop_refuses(tmp_path: Path, pipeline: FacePipeline) -> None:
    device = make_device(tmp_path, pipeline)
    reply = device.call("enroll", {"name": "Ada", "consent": CONSENT, "from_camera": {}})
    assert error(reply) == "conflict"


def test_consent_is_required(desk: Desk) -> None:
    reply = desk.enroll(name="Lin-Manuel Miranda", from_camera={"views": 5})
    assert error(reply) == "bad_request" and "consent" in reply["error"]["message"]


@pytest.mark.parametrize(
    "camera_args", [{"views": 0}, {"views": 11}, {"seconds": 1}, {"seconds": 600}, {"views": 2.5}, {"images": []}]
)
def test_out_of_range_camera_arguments_are_refused(desk: Desk, camera_args: dict) -> None:
    assert error(desk.enroll(name="Ada", consent=CONSENT, from_camera=camera_args)) == "bad_request"


values = (
    st.none()
    | st.booleans()
    | st.integers(-5, 200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=70)
)
camera_options = st.dictionaries(st.sampled_from(["seconds", "views", "capture_id", "cancel", "x"]), values, max_size=3)
requests = st.fixed_dictionaries(
    {"from_camera": camera_options | values},
    optional={"name": values, "person_id": values, "consent": st.just(CONSENT) | values, "images": values},
)


@given(args=requests)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_camera_request_gets_a_clear_answer(desk: Desk, args: dict[str, Any]) -> None:
    reply = desk.enroll(**args)
    assert reply["status"] == "ok" or reply["error"]["code"] in ("bad_request", "conflict", "not_found"), reply
    assert data(desk.device.call("ping"))["pong"]


def test_photos_and_the_camera_at_once_are_refused(desk: Desk) -> None:
    reply = desk.enroll(name="Ada", consent=CONSENT, from_camera={}, images=[{"data": "AAAA"}])
    assert error(reply) == "bad_request"


def test_an_unknown_capture_is_not_found(desk: Desk) -> None:
    assert error(desk.enroll(from_camera={"capture_id": "c_nope"})) == "not_found"


def test_a_cancelled_capture_stores_nothing_and_is_audited(desk: Desk, shared_data: Path) -> None:
    capture_id = arm(desk, views=10)["capture_id"]
    desk.show(itertools.islice(clip(shared_data, MIRANDA_SHOT), 10))
    assert poll(desk, capture_id, cancel=True)["status"] == "CANCELED"
    assert desk.store.list_people() == []
    ended = [r for r in desk.device.audit() if r["action"] == "person.enroll_camera"]
    assert ended and ended[0]["details"]["status"] == "CANCELED"


def test_every_camera_request_is_audited_with_the_capture(desk: Desk) -> None:
    capture_id = arm(desk)["capture_id"]
    poll(desk, capture_id)
    records = [r for r in desk.device.audit() if r["action"] == "command.enroll"]
    assert [r["details"]["capture_id"] for r in records] == [capture_id, capture_id]


def test_names_stay_on_the_device_without_include_names(desk: Desk, shared_data: Path) -> None:
    settings = desk.device.current[0]
    desk.device.current[0] = dataclasses.replace(
        settings, events=dataclasses.replace(settings.events, include_names=False)
    )
    capture_id = arm(desk, views=3)["capture_id"]
    desk.show(clip(shared_data, MIRANDA_SHOT))
    done = poll(desk, capture_id)
    assert done["status"] == "SUCCEEDED" and "name" not in done["person"]


# ------------------------------------------------------------------------------------ ctl, before it sends anything


@pytest.mark.slow  # the CLI as a real process
@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ([], "--from-camera needs --consent-ref"),
        (["--consent-ref", "form-17", "photo.jpg"], "takes no photos"),
        (["--consent-ref", "form-17", "--device", "dev2"], "one --device"),
    ],
)
def test_ctl_refuses_a_camera_enrollment_it_cannot_send(tmp_path: Path, extra: list[str], problem: str) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text("")
    arguments = ["ctl", "enroll", "--mqtt", "mqtt://127.0.0.1:1", "--device", "dev1", "--name", "Ada", "--from-camera"]
    result = faceagent(*arguments, *extra, config=config)
    assert result.returncode == 2 and problem in result.stderr, result.stderr


def arms_then_falls_silent(asked: list[dict[str, Any]]) -> Callable[[dict[str, Any]], bytes | None]:
    """A device's answers: the capture armed, then nothing ever again."""

    def answer(request: dict[str, Any]) -> bytes | None:
        asked.append(request)
        if len(asked) > 1:
            return None
        armed = {"capture_id": "c_1", "status": "IN_PROGRESS", "step": "collecting", "views": 0, "views_needed": 5}
        return json.dumps({"schema": 1, "request_id": request["request_id"], "status": "ok", "data": armed}).encode()

    return answer


@pytest.mark.slow  # the CLI as a real process
def test_ctl_gives_up_on_a_device_that_falls_silent(tmp_path: Path, broker: Broker) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text("")
    asked: list[dict[str, Any]] = []
    device = Responder(broker)
    device.answer = arms_then_falls_silent(asked)
    try:
        result = faceagent(
            "ctl", "enroll", "--mqtt", broker.url, "--timeout", "0.5", "--device", "dev1", "--name", "Ada",
            "--consent-ref", "form-17", "--from-camera", config=config,
        )  # fmt: skip
    finally:
        device.close()
    assert result.returncode == 1 and "no outcome" in result.stderr, result.stdout + result.stderr
    assert "IN_PROGRESS: 0 of 5 views" in result.stdout and len(asked) == 4  # the arm and three polls
