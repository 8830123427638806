"""`faceagent console` without a browser: its password hash, fleet state, people merging, metrics, and the
real console process behind its guard (loopback Host check, login off loopback, CSRF) on a real Mosquitto."""

from __future__ import annotations

import base64
import http.cookiejar
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from agent.cli.console.auth import PasswordHash, Sessions, hash_password, is_loopback
from agent.cli.console.fleet import FleetState, Watcher, attention
from agent.cli.console.metrics import registry_for
from agent.cli.console.remote import merge_people
from agent.cli.console.rollouts import Rollouts
from agent.cli.releases import Release, ReleaseError, RollOut
from agent.errors import ConfigError
from agent.link.mqtt import BrokerSettings
from tests.support.agent_process import faceagent
from tests.support.broker import HOST, Broker, free_port
from tests.support.console import PASSWORD, ConsoleProcess, make_password_file, start_console
from tests.support.factory import closing_factory

# ------------------------------------------------------------------------------------ password and sessions


def test_a_password_matches_its_own_hash_only() -> None:
    stored = PasswordHash.parse(hash_password(PASSWORD))
    assert stored.matches(PASSWORD)
    assert not stored.matches(PASSWORD + " ")


def test_a_short_password_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 12"):
        hash_password("hunter2")


@given(st.text(max_size=200))
def test_a_hash_line_that_is_not_one_is_refused_clearly(line: str) -> None:
    with pytest.raises(ConfigError):
        PasswordHash.parse(line)


def test_five_wrong_passwords_in_a_minute_stop_the_checking() -> None:
    clock = [0.0]
    sessions = Sessions(PasswordHash.parse(hash_password(PASSWORD)), clock=lambda: clock[0])
    for _ in range(5):
        assert not sessions.check_password("wrong wrong wrong")
    assert not sessions.check_password(PASSWORD)  # throttled: the right one is not even tried
    clock[0] = 61.0
    assert sessions.check_password(PASSWORD)


@pytest.mark.parametrize(
    ("host", "loopback"), [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("0.0.0.0", False), ("", False)]
)
def test_only_loopback_binds_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# ------------------------------------------------------------------------------------ fleet state


def status(state: str = "online", **extra: object) -> dict:
    return {"schema": 1, "state": state, "version": "1.0", "models": {"embedder": "dlib"}, **extra}


def telemetry(fps: float) -> dict:
    return {"fps": fps, "latency_ms": {"total": {"p50": 40.0, "p95": 60.0}}, "outbox": {"depth": 3}, "cpu_temp_c": 50}


def test_telemetry_is_thinned_to_the_spacing_and_kept_for_an_hour() -> None:
    clock = [1000.0]
    state = FleetState(clock=lambda: clock[0], history_seconds=3600, max_points=360)  # one point per 10 s
    for second in range(0, 4000, 1):
        clock[0] = 1000.0 + second
        state.on_telemetry("dev1", telemetry(float(second)))
    series = state.series(["dev1"])["dev1"]
    assert series["t"][0] >= clock[0] - 3600
    assert all(later - earlier >= 10 for earlier, later in zip(series["t"], series["t"][1:], strict=False))
    assert series["fps"][-1] >= 3990 and series["latency_p95_ms"][-1] == 60.0


def test_attention_names_what_is_wrong() -> None:
    notes = attention(
        status(
            "online",
            warnings=["mqtt.tls_insecure is true"],
            camera={"state": "failed", "last_error": "no device"},
            storage={"state": "full", "since": "2025-01-01T00:00:00Z", "dropped_events": 4},
            gallery={"people_needing_reenrollment": 2},
            commands={"authority": "unsigned_allowed"},
        )
    )
    assert notes == [
        "mqtt.tls_insecure is true",
        "camera failed: no device",
        "storage full since 2025-01-01T00:00:00Z: 4 events not kept",
        "2 people need re-enrollment for dlib",
        "commands.allow_unsigned is true: anyone on the broker may command this device",
    ]


def test_a_healthy_online_device_needs_no_attention() -> None:
    assert attention(status("online", camera={"state": "ok"}, storage={"state": "ok"})) == []


def watcher(state: FleetState) -> Watcher:
    return Watcher(BrokerSettings(url=f"mqtt://{HOST}:1"), state)  # never started: `handle` is fed by hand


def test_the_watcher_files_each_topic_under_its_device() -> None:
    state = FleetState()
    feed = watcher(state).handle
    feed("faceagent/dev1/status", json.dumps(status()).encode())
    feed("faceagent/dev1/telemetry", json.dumps(telemetry(9.0)).encode())
    feed("faceagent/dev1/events/face_recognized", json.dumps({"person_id": "p_1", "name": "Ada"}).encode())
    reply = {"request_id": "r1", "status": "error", "error": {"code": "unauthorized", "message": "unsigned"}}
    feed("faceagent/dev1/cmd/restart/reply", json.dumps(reply).encode())
    view = state.device("dev1")
    assert view is not None and view["online"] and view["telemetry"]["fps"] == 9.0
    assert [event.person() for event in state.events()] == ["Ada"]
    assert view["replies"][0] | {"at": None} == {
        "at": None,
        "command": "restart",
        "request_id": "r1",
        "status": "error",
        "code": "unauthorized",
        "message": "unsigned",
    }


def test_an_empty_retained_status_forgets_the_device() -> None:
    state = FleetState()
    feed = watcher(state).handle
    feed("faceagent/dev1/status", json.dumps(status()).encode())
    feed("faceagent/dev1/status", b"")
    assert state.device_ids() == []


@given(st.binary(max_size=300))
def test_any_payload_on_any_topic_leaves_the_state_usable(payload: bytes) -> None:
    state = FleetState()
    for topic in ("faceagent/d/status", "faceagent/d/telemetry", "faceagent/d/events/x", "faceagent/d/cmd/x/reply"):
        watcher(state).handle(topic, payload)
    state.fleet(series=True)
    state.events()


def test_events_filter_by_device_person_and_type() -> None:
    state = FleetState()
    state.on_event("dev1", "face_recognized", {"person_id": "p_1", "name": "Ada Lovelace"})
    state.on_event("dev2", "face_recognized", {"person_id": "p_2", "name": "Grace Hopper"})
    state.on_event("dev1", "face_unknown", {})
    assert [e.device for e in state.events(device="dev1")] == ["dev1", "dev1"]
    assert [e.person() for e in state.events(person="ada")] == ["Ada Lovelace"]
    assert [e.type for e in state.events(kind="face_unknown")] == ["face_unknown"]


def test_an_event_as_a_page_shows_it_has_no_distance_or_margin() -> None:
    state = FleetState()
    state.on_event("dev1", "face_recognized", {"person_id": "p_1", "name": "Ada", "distance": 0.3, "margin": 0.1})
    shown = state.events()[0].to_json()
    assert "distance" not in shown and "margin" not in shown and shown["name"] == "Ada"


def test_metrics_hold_one_series_per_device() -> None:
    state = FleetState()
    for device, fps in (("dev1", 9.0), ("dev2", 4.5)):
        state.on_status(device, status(gallery={"people": 3}))
        state.on_telemetry(device, telemetry(fps))
    from prometheus_client import generate_latest

    text = generate_latest(registry_for(state)).decode()
    assert 'faceagent_frames_per_second{device="dev1"} 9.0' in text
    assert 'faceagent_frames_per_second{device="dev2"} 4.5' in text
    assert 'faceagent_latency_milliseconds{device="dev1",quantile="0.95",stage="total"} 60.0' in text
    assert 'faceagent_gallery_people{device="dev2"} 3.0' in text


# ------------------------------------------------------------------------------------ people


def person(pid: str, name: str | None, ref: str | None = None, stale: bool = False) -> dict:
    return {"id": pid, "name": name, "external_ref": ref, "templates": {"dlib": 1}, "needs_reenrollment": stale}


def test_people_merge_by_reference_then_by_name() -> None:
    merged = merge_people(
        {
            "dev1": [person("p_1", "Ada", "E-1"), person("p_2", "Grace")],
            "dev2": [person("p_9", "Ada L.", "E-1", stale=True), person("p_8", " grace ")],
        }
    )
    by_key = {entry["key"]: entry for entry in merged}
    assert [d["person_id"] for d in by_key["ref/E-1"]["devices"]] == ["p_1", "p_9"]
    assert by_key["ref/E-1"]["needs_reenrollment_on"] == ["dev2"]
    assert [d["person_id"] for d in by_key["name/grace"]["devices"]] == ["p_2", "p_8"]


def test_people_shown_without_a_name_stay_apart() -> None:
    merged = merge_people({"dev1": [person("p_1", None)], "dev2": [person("p_1", None)]})
    assert len(merged) == 2


# ------------------------------------------------------------------------------------ the console process


@pytest.fixture
def run_console() -> Iterator[Callable[..., ConsoleProcess]]:
    """Factory: `run_console(broker, *options, listen_host=...)`; each console stopped afterwards."""
    with closing_factory(start_console, ConsoleProcess.stop) as factory:
        yield factory


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    return make_password_file(tmp_path)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def browser_like() -> urllib.request.OpenerDirector:
    """A client that keeps cookies and shows redirects as they are (the status a browser would follow)."""
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect())


def fetch(opener: urllib.request.OpenerDirector, request: urllib.request.Request | str) -> tuple[int, dict, str]:
    try:
        with opener.open(request, timeout=20) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', page) or re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page[:500]
    return found[1]


@pytest.mark.slow  # the faceagent command as a real process
def test_off_loopback_the_console_will_not_start_without_a_password(broker: Broker) -> None:
    result = faceagent("console", "--mqtt", broker.url, "--listen", f"0.0.0.0:{free_port()}", timeout=60)
    assert result.returncode == 2
    assert "not a loopback address: give --password-file" in result.stderr


@pytest.fixture
def guarded_console(broker: Broker, run_console, password_file: Path) -> ConsoleProcess:
    """The console bound off loopback (all addresses; the tests reach it on 127.0.0.1) with a password."""
    return run_console(broker, "--password-file", str(password_file), listen_host="0.0.0.0")


@pytest.mark.slow
def test_off_loopback_every_page_and_route_is_refused_without_the_password(guarded_console: ConsoleProcess) -> None:
    console, opener = guarded_console, browser_like()
    status, headers, _ = fetch(opener, console.url + "/")
    assert status == 303 and headers["location"] == "/login"
    for path in ("/people", "/device/dev1", "/events"):
        assert fetch(opener, console.url + path)[0] == 303, path
    for path in ("/api/fleet", "/api/people", "/api/events"):
        assert fetch(opener, console.url + path)[0] == 401, path
    assert fetch(opener, console.url + "/metrics")[0] == 401


@pytest.mark.slow
def test_off_loopback_the_password_opens_the_console_and_a_wrong_one_does_not(guarded_console: ConsoleProcess) -> None:
    console, opener = guarded_console, browser_like()
    status, _, form = fetch(opener, console.url + "/login")
    assert status == 200
    for password, expected in (("wrong password here", 401), (PASSWORD, 303)):
        body = f"csrf={csrf_of(form)}&password={urllib.request.quote(password)}".encode()
        status, headers, form = fetch(opener, urllib.request.Request(console.url + "/login", data=body))
        assert status == expected
    assert headers["location"] == "/"
    status, _, page = fetch(opener, console.url + "/")
    assert status == 200 and "Fleet" in page
    assert fetch(opener, console.url + "/api/fleet")[0] == 200
    metrics = urllib.request.Request(console.url + "/metrics")
    metrics.add_header("Authorization", "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode())
    assert fetch(browser_like(), metrics)[0] == 200


@pytest.mark.slow
def test_a_state_changing_request_without_the_csrf_token_is_refused(broker: Broker, run_console) -> None:
    console = run_console(broker)
    opener = browser_like()
    status, _, page = fetch(opener, console.url + "/")
    assert status == 200
    body = json.dumps({"values": {"gallery.threshold": 0.5}}).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(console.url + "/api/device/dev1/config", data=body, headers=headers)
    status, _, text = fetch(opener, request)
    assert status == 403 and "CSRF" in text
    forged = dict(headers, **{"X-CSRF-Token": csrf_of(page), "Origin": "http://evil.example"})
    request = urllib.request.Request(console.url + "/api/device/dev1/config", data=body, headers=forged)
    status, _, text = fetch(opener, request)
    assert status == 403 and "another site" in text


@pytest.mark.slow
def test_on_loopback_a_foreign_host_name_is_refused(broker: Broker, run_console) -> None:
    console = run_console(broker)
    request = urllib.request.Request(console.url + "/", headers={"Host": "rebound.example:80"})
    status, _, text = fetch(browser_like(), request)
    assert status == 421 and "DNS rebinding" in text
    assert fetch(browser_like(), console.url + "/")[0] == 200


@pytest.mark.slow
def test_every_page_is_one_whole_document(broker: Broker, run_console) -> None:
    """Markup put outside a page's `main` block renders before the document or inside its title."""
    console = run_console(broker)
    for path in ("/", "/events", "/people", "/device/dev1"):
        status, _, page = fetch(browser_like(), console.url + path)
        assert status == 200 and page.lstrip().lower().startswith("<!doctype html>"), path
        assert page.count("<html") == 1 and page.rstrip().endswith("</html>"), path
        assert re.search(r"<title>[^<]+</title>", page), path  # nothing but text in the title block


@pytest.mark.slow  # the faceagent command as a real process
def test_a_releases_folder_that_is_not_one_is_refused_at_start(broker: Broker, tmp_path: Path) -> None:
    result = faceagent("console", "--mqtt", broker.url, "--releases", str(tmp_path / "missing"), timeout=60)
    assert result.returncode == 2 and "--releases" in result.stderr and "not a folder" in result.stderr


def test_a_releases_name_too_long_for_the_file_system_is_refused_not_a_traceback(broker: Broker) -> None:
    """What the CLI fuzz test found: Path.is_dir raises ENAMETOOLONG rather than answering False."""
    result = faceagent("console", "--mqtt", broker.url, "--releases", "r" * 300, timeout=60)
    assert result.returncode == 2 and "--releases" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------ model updates


def release_of(size: int) -> Release:
    meta = {"model_id": "m-b", "role": "embedder", "version": "2"}
    return Release.signed(bytes(size), Ed25519PrivateKey.generate(), file="m.tflite", **meta)


def acknowledging(devices: list[str], release: Release, job_id: str, fleet: set[str], progress) -> RollOut:
    """A roll-out whose devices acknowledge every chunk, then succeed: what `Remote.roll_out` reports."""
    received = 0
    for index, chunk in enumerate(release.chunks(job_id, 1000)):
        received += len(base64.b64decode(chunk["data"]))
        for device in devices:
            reply = {"status": "ok", "data": {"status": "IN_PROGRESS", "bytes_received": received, "bytes_total": 2500}}
            progress(device, chunk | {"index": index}, reply)
    for device in devices:
        progress(device, {"phase": "commit", "job_id": job_id}, {"status": "ok", "data": {"status": "SUCCEEDED"}})
    return RollOut(dict.fromkeys(devices), {})


def wait_finished(rollouts: Rollouts) -> dict:
    deadline = time.monotonic() + 10
    while not (jobs := rollouts.jobs())[0]["finished"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return jobs[0]


def test_a_job_shows_each_chunk_each_device_acknowledged() -> None:
    rollouts = Rollouts(acknowledging, lambda: "now", chunk_bytes=1000)
    rollouts.start("m.release.json", release_of(2500), ["dev1", "dev2"], set())
    job = wait_finished(rollouts)
    assert job["chunks"] == 3
    for device in ("dev1", "dev2"):
        assert job["progress"][device]["acknowledged"] == [1000, 2000, 2500]
        assert job["progress"][device]["status"] == "SUCCEEDED"


def test_a_second_job_on_a_device_still_updating_is_refused() -> None:
    going = threading.Event()

    def slow(devices, release, job_id, fleet, progress) -> RollOut:
        going.wait(10)
        return RollOut(dict.fromkeys(devices), {})

    rollouts = Rollouts(slow, lambda: "now", chunk_bytes=1000)
    rollouts.start("a.release.json", release_of(10), ["dev1", "dev2"], set())
    with pytest.raises(ReleaseError, match="still running on dev2"):
        rollouts.start("b.release.json", release_of(10), ["dev2", "dev3"], set())
    going.set()
    assert wait_finished(rollouts)["finished"]
