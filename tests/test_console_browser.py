"""The operator's console in a real headless Chromium (Debian's chromium and chromium-driver), against a real
Mosquitto and two real agents (`faceagent run`) replaying the bundled clip in a loop.

One fleet for the module (starting two agents costs tens of seconds): each test checks one thing the operator
does on a page, and the screenshots in docs/ are taken by this browser along the way.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from agent.commands.schema import AUDIT_PAGE
from agent.commands.signing import public_key_text, request_signer
from agent.gallery.store import GalleryStore
from agent.link.mqtt import BrokerSettings
from agent.link.operator import Operator
from scripts.bench_console import CHROMEDRIVER, CHROMIUM, chromium
from tests.support.agent_process import agent_config, faceagent, start_agent
from tests.support.broker import Broker, Observer
from tests.support.commands import OPERATOR_KEY, write_operator_key, write_private_key
from tests.support.console import ConsoleProcess, make_password_file, start_console
from tests.support.data import CLIP_ENROLL, CLIP_FRAMES, DEFAULT_EMBEDDER_ID, DEFAULT_THRESHOLD, REPO

DOCS = REPO / "docs"
DEVICES = ("stage-1", "stage-2")
PERFORMER = "Lin-Manuel Miranda"
NEW_EMBEDDER = "dlib-resnet29-int8-b"  # the release's model id: the status shows it once installed
RELEASE_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"faceagent console test release key").digest())
pytestmark = pytest.mark.slow


def _need_browser() -> None:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = "Debian's chromium and chromium-driver are not installed (scripts/test.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Fleet:
    broker: Broker
    console: ConsoleProcess
    driver: webdriver.Chrome
    observer: Observer
    sign_key: Path
    folder: Path  # each device's folder (its gallery.db, faceagent.toml, agent.log) is folder / device

    def page(self, path: str) -> None:
        self.driver.get(self.console.url + path)

    def wait(self, condition, timeout: float = 60, message: str = "") -> object:
        # A page redraws what it polls: an element read just as it is replaced is read again at the next poll.
        waiting = WebDriverWait(self.driver, timeout, 0.25, ignored_exceptions=(StaleElementReferenceException,))
        return waiting.until(lambda d: condition(), message)

    def text(self, selector: str) -> str:
        found = self.driver.find_elements(By.CSS_SELECTOR, selector)
        return "\n".join(element.text for element in found)

    def attribute(self, selector: str, name: str) -> str:
        found = self.driver.find_elements(By.CSS_SELECTOR, selector)
        return (found[0].get_attribute(name) or "") if found else ""

    def screenshot(self, name: str, showing: str | None = None) -> None:
        """docs/console-<name>.png: the page from its top, or with the element `showing` in the middle."""
        if showing is None:
            self.driver.execute_script("window.scrollTo(0, 0)")
        else:
            element = self.driver.find_element(By.CSS_SELECTOR, showing)
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        DOCS.mkdir(exist_ok=True)
        self.driver.save_screenshot(str(DOCS / f"console-{name}.png"))

    def ask(self, device: str, name: str, args: dict) -> dict:
        """`name` answered ok by the device, asked as the operator's ctl would (signed): the reply's data."""
        broker = BrokerSettings(url=self.broker.url)
        with Operator(broker, timeout=30, signer=request_signer(OPERATOR_KEY)) as operator:
            reply = operator.call([device], name, args)[device]
        assert reply is not None and reply["status"] == "ok", reply
        return reply["data"]

    def people_on(self, device: str) -> list[str]:
        """The names the device itself lists."""
        return [person["name"] for person in self.ask(device, "list_people", {})["people"]]

    def erase_everyone(self, device: str) -> None:
        """Nobody enrolled on the device any more, so the face in the clip is unknown there."""
        for person in self.ask(device, "list_people", {})["people"]:
            self.ask(device, "delete_person", {"person_id": person["id"]})

    def recognized(self, device: str) -> list[str]:
        topic = f"faceagent/{device}/events/face_recognized"
        return [m.json().get("name") for m in self.observer.on(topic)]


def start_device(folder: Path, broker: Broker, device: str, frames: Path) -> subprocess.Popen[str]:
    """One agent of the fleet, with its own folder, config and log; it takes model releases signed by RELEASE_KEY."""
    folder.mkdir(parents=True)
    releases = f'[models]\nrelease_keys = ["{public_key_text(RELEASE_KEY)}"]\n'
    config = agent_config(folder, broker, device, fps=10, events="cooldown_seconds = 5\n", extra=releases)
    return start_agent(config, folder / "gallery.db", frames, log=folder / "agent.log")


def make_release(folder: Path, int8: bytes) -> Path:
    """The int8 embedder released under a new model id, as its publisher makes a release: `faceagent ctl
    model-release` where the release key is kept; the console gets only the folder."""
    folder.mkdir()
    model = folder / "dlib_resnet29_int8_b.tflite"
    model.write_bytes(int8)
    key = write_private_key(RELEASE_KEY, folder.parent / "release.pem")
    meta = ["--model-id", NEW_EMBEDDER, "--role", "embedder", "--model-version", "2", "--model-key", str(key)]
    made = faceagent("ctl", "model-release", str(model), *meta)
    assert made.returncode == 0, made.stderr
    return folder


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, int8: bytes) -> Iterator[Fleet]:
    _need_browser()
    folder = tmp_path_factory.mktemp("console-fleet")
    broker = Broker(folder / "broker").start()
    agents = [start_device(folder / device, broker, device, shared_data / CLIP_FRAMES) for device in DEVICES]
    observer = Observer(broker, ["faceagent/#"])
    sign_key = write_operator_key(folder / "operator")
    releases = make_release(folder / "releases", int8)
    console = start_console(broker, "--sign-key", str(sign_key), "--timeout", "60", "--releases", str(releases))
    profile = Path(tempfile.mkdtemp(prefix="console-chromium-"))
    driver = chromium(profile)
    try:
        yield Fleet(broker, console, driver, observer, sign_key, folder)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        console.stop()
        observer.close()
        for agent in agents:
            agent.send_signal(signal.SIGTERM)
        for agent in agents:
            agent.wait(60)
        broker.kill()


def chart_points(fleet: Fleet, device: str) -> int:
    found = fleet.driver.find_elements(By.CSS_SELECTOR, f'article[data-device="{device}"] .chart')
    return int(found[0].get_attribute("data-points") or 0) if found else 0


def test_both_devices_appear_with_a_live_telemetry_chart(fleet: Fleet) -> None:
    fleet.page("/")
    for device in DEVICES:
        fleet.wait(lambda d=device: chart_points(fleet, d) >= 2, 180, f"no telemetry chart for {device}")
        canvas = fleet.driver.find_elements(By.CSS_SELECTOR, f'article[data-device="{device}"] .chart canvas')
        assert canvas and int(canvas[0].get_attribute("width") or 0) > 0
    assert "2 devices, 2 online" in fleet.text("#fleet-count")
    fleet.screenshot("fleet")


def test_a_console_started_after_the_agents_plots_their_telemetry_from_before_it_started(fleet: Fleet) -> None:
    for device in DEVICES:  # each agent has kept a document (one per 30 s) before the new console starts
        fleet.wait(lambda d=device: fleet.observer.on(f"faceagent/{d}/telemetry"), 180, f"no telemetry from {device}")
    time.sleep(2)
    started = time.time()
    late = start_console(fleet.broker)
    try:
        fleet.driver.get(late.url + "/")
        for device in DEVICES:
            since = f'article[data-device="{device}"] .chart'
            fleet.wait(lambda s=since: fleet.attribute(s, "data-since"), 60, f"no chart for {device}")
            fleet.wait(lambda s=since: float(fleet.attribute(s, "data-since")) < started - 1, 60, "only new points")
    finally:
        late.stop()


@pytest.mark.parametrize("span", [40, 3000])
def test_a_charts_time_labels_are_one_line_each_and_distinct(fleet: Fleet, span: int) -> None:
    """Points across a minute's change (seconds apart) or most of the hour: each tick is labelled with its own time
    on one line, never a second line of date that runs into the next label."""
    fleet.page("/")
    fleet.wait(lambda: fleet.driver.execute_script("return typeof uPlot !== 'undefined'"), 30, "uPlot never loaded")
    labels = fleet.driver.execute_async_script(
        """
        const [span, done] = [arguments[0], arguments[arguments.length - 1]];
        const box = document.createElement("div");
        document.body.append(box);
        const minute = Math.floor(Date.now() / 60000) * 60 - 120;
        const series = { t: [minute - span / 2, minute, minute + span / 2] };
        for (const [, lines] of CHARTS) for (const [key] of lines) series[key] = [1, 2, 3];
        drawChart(box, series);
        setTimeout(() => {  // uPlot draws its axes once the current task is over
          const labels = box.plots[0].plot.axes[0]._values.map(String);
          box.remove();
          done(labels);
        }, 100);
        """,
        span,
    )
    assert len(labels) >= 2
    assert len(set(labels)) == len(labels)
    pattern = r"\d{1,2}:\d{2}:\d{2}" if span < 60 * 3 else r"\d{1,2}:\d{2}"
    assert all(re.fullmatch(pattern, label) for label in labels), labels


def test_a_chart_with_no_telemetry_yet_spans_the_hour_up_to_now(fleet: Fleet) -> None:
    """A device seen before its first telemetry point: the chart's time axis is the last hour, not 1970."""
    fleet.page("/")
    fleet.wait(lambda: fleet.driver.execute_script("return typeof uPlot !== 'undefined'"), 30, "uPlot never loaded")
    low, high = fleet.driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const box = document.createElement("div");
        document.body.append(box);
        const empty = { t: [] };
        for (const [, lines] of CHARTS) for (const [key] of lines) empty[key] = [];
        drawChart(box, empty);
        setTimeout(() => {  // uPlot sets its scales once the current task is over
          const scale = box.plots[0].plot.scales.x;
          box.remove();
          done([scale.min, scale.max]);
        }, 100);
        """
    )
    now = time.time()
    assert now - 3700 < low < high <= now + 60
    assert high - low == pytest.approx(3600, abs=5)


def test_a_bad_setting_shows_its_validation_message_beside_it(fleet: Fleet) -> None:
    fleet.page(f"/device/{DEVICES[0]}")
    field = fleet.wait(lambda: fleet.driver.find_elements(By.CSS_SELECTOR, 'input[name="gallery.threshold"]'), 90)
    assert isinstance(field, list)
    field[0].clear()
    field[0].send_keys("5")
    fleet.driver.find_element(By.ID, "settings-save").click()
    message = '.field-error[data-key="gallery.threshold"]'
    fleet.wait(lambda: "must be a number greater than 0 and at most 4" in fleet.text(message), 90)
    assert fleet.text("#settings-error") == ""  # the message sits beside its field, not at the top
    fleet.screenshot("device", showing=message)


def test_an_unset_matching_figure_shows_the_value_in_force(fleet: Fleet) -> None:
    fleet.page(f"/device/{DEVICES[1]}")
    field = fleet.wait(lambda: fleet.driver.find_elements(By.CSS_SELECTOR, 'input[name="gallery.threshold"]'), 90)
    assert isinstance(field, list)
    assert field[0].get_attribute("value") == ""  # not set on the device: the embedder's stated figure applies
    assert field[0].get_attribute("placeholder") == f"{DEFAULT_THRESHOLD} (embedder {DEFAULT_EMBEDDER_ID})"


def open_people(fleet: Fleet) -> None:
    fleet.page("/people")
    fleet.wait(lambda: "online devices" in fleet.text("#people-state"), 120, "the people page did not load")


def enroll_from_the_page(fleet: Fleet, photo: Path) -> str:
    open_people(fleet)
    driver = fleet.driver
    driver.find_element(By.ID, "enroll-name").send_keys(PERFORMER)
    driver.find_element(By.ID, "enroll-ref").send_keys("cast-001")
    driver.find_element(By.ID, "enroll-consent").send_keys("form 2025-117")
    driver.find_element(By.ID, "enroll-purpose").send_keys("stage door")
    driver.find_element(By.ID, "enroll-consent-ok").click()
    driver.find_element(By.ID, "enroll-photos").send_keys(str(photo))
    driver.find_element(By.ID, "enroll-submit").click()
    fleet.wait(lambda: all(f"{d}: " in fleet.text("#enroll-result") for d in DEVICES), 120, "no enroll outcome")
    return fleet.text("#enroll-result")


def test_enrollment_by_upload_makes_the_agents_recognize_the_performer(fleet: Fleet, shared_data: Path) -> None:
    result = enroll_from_the_page(fleet, shared_data / CLIP_ENROLL)
    for device in DEVICES:
        assert f"{device}: enrolled {PERFORMER}" in result, result
    fleet.wait(lambda: PERFORMER in fleet.recognized(DEVICES[0]), 180, "the agent did not recognize the performer")
    fleet.wait(lambda: PERFORMER in fleet.text("#people .name"), 60)  # the page reloads the listing
    row = fleet.text(f'#people tr[data-person="{PERFORMER}"]')
    assert all(device in row for device in DEVICES) and "form 2025-117" in row  # merged, with its consent record
    fleet.screenshot("people")


def test_the_events_page_shows_recognitions_live_and_filtered(fleet: Fleet) -> None:
    fleet.page(f"/events?person=Miranda&device={DEVICES[0]}")
    fleet.wait(lambda: PERFORMER in fleet.text("#events .person"), 180, "no live recognition on the events page")
    devices = {row.get_attribute("data-device") for row in fleet.driver.find_elements(By.CSS_SELECTOR, "#events tr")}
    assert devices == {DEVICES[0]}
    fleet.screenshot("events")


def click_on_the_performer(fleet: Fleet, shared_data: Path, button: str) -> None:
    """The performer's `button` (erase, rename) on the people page, enrolled from the page first if need be."""
    if PERFORMER not in fleet.people_on(DEVICES[0]):
        enroll_from_the_page(fleet, shared_data / CLIP_ENROLL)
    open_people(fleet)
    fleet.wait(lambda: PERFORMER in fleet.text("#people .name"), 60)
    fleet.driver.find_element(By.CSS_SELECTOR, f'#people tr[data-person="{PERFORMER}"] button.{button}').click()


def test_erasure_from_the_page_removes_the_person_from_the_devices(fleet: Fleet, shared_data: Path) -> None:
    click_on_the_performer(fleet, shared_data, "erase")
    question = fleet.text("#confirm-text")
    assert f"Erase {PERFORMER} from 2 device(s)" in question and "cannot be undone" in question
    assert all(device in fleet.text("#confirm-extra") for device in DEVICES)  # says where, before anything goes
    fleet.driver.find_element(By.ID, "confirm-ok").click()
    fleet.wait(lambda: all(f"{d}: erased {PERFORMER}" in fleet.text("#enroll-result") for d in DEVICES), 120)
    for device in DEVICES:
        assert PERFORMER not in fleet.people_on(device)


def test_the_device_page_pages_through_the_device_audit_log(fleet: Fleet) -> None:
    device = DEVICES[1]
    with GalleryStore.open(fleet.folder / device / "gallery.db") as store:  # as `faceagent person` on the device
        for number in range(AUDIT_PAGE + 20):
            store.audit("cli:stage-ops", "person.update", f"p_{number:04d}", {"fields": "name"})
    fleet.page(f"/device/{device}")
    fleet.wait(lambda: len(audit_rows(fleet)) == AUDIT_PAGE, 90, "the first page of the audit log did not show")
    assert "cli:stage-ops" in fleet.text("#audit")
    fleet.driver.find_element(By.ID, "audit-older").click()
    fleet.wait(lambda: len(audit_rows(fleet)) > AUDIT_PAGE, 90, "the older page did not show")
    seqs = [int(row.get_attribute("data-seq")) for row in audit_rows(fleet)]
    assert seqs == sorted(set(seqs), reverse=True)  # newest first, no record twice
    assert "p_0000" in fleet.text("#audit")  # the oldest local action, from the second page
    fleet.screenshot("audit", showing="#audit-older")


def audit_rows(fleet: Fleet) -> list:
    return fleet.driver.find_elements(By.CSS_SELECTOR, "#audit tr")


def test_off_loopback_the_browser_gets_the_login_page_without_the_password(fleet: Fleet, tmp_path: Path) -> None:
    password = make_password_file(tmp_path)
    guarded = start_console(fleet.broker, "--password-file", str(password), listen_host="0.0.0.0")
    try:
        fleet.driver.get(guarded.url + "/people")
        fleet.wait(lambda: fleet.driver.current_url.endswith("/login"), 30)
        assert "This console listens beyond this machine" in fleet.text("main")
        assert not fleet.driver.find_elements(By.ID, "people")
        fleet.screenshot("login")
    finally:
        guarded.stop()


# The tests below change the devices for good (a new name, a restart, a new embedder): they run last, in this order.


def test_a_rename_from_the_page_reaches_every_device_the_person_is_on(fleet: Fleet, shared_data: Path) -> None:
    click_on_the_performer(fleet, shared_data, "rename")
    field = fleet.driver.find_element(By.ID, "rename-name")
    field.clear()
    field.send_keys("Lin-Manuel Miranda (Hamilton)")
    fleet.driver.find_element(By.ID, "confirm-ok").click()
    fleet.wait(lambda: all(f"{d}: renamed" in fleet.text("#enroll-result") for d in DEVICES), 120, "no rename outcome")
    for device in DEVICES:
        assert "Lin-Manuel Miranda (Hamilton)" in fleet.people_on(device)
    fleet.wait(lambda: "Lin-Manuel Miranda (Hamilton)" in fleet.text("#people .name"), 60)  # the listing reloads


def test_enrollment_from_a_device_camera_on_the_people_page(fleet: Fleet) -> None:
    device = DEVICES[1]
    fleet.erase_everyone(device)
    open_people(fleet)
    driver = fleet.driver
    driver.find_element(By.ID, "camera-name").send_keys("Camera Visitor")
    driver.find_element(By.ID, "camera-consent").send_keys("form 2025-200")
    driver.find_element(By.ID, "camera-consent-ok").click()
    Select(driver.find_element(By.ID, "camera-device")).select_by_value(device)
    driver.find_element(By.ID, "camera-views").send_keys("3")
    driver.find_element(By.ID, "camera-seconds").send_keys("60")
    seen: set[str] = set()

    def ended() -> bool:  # every status the page shows on the way, until the capture's outcome
        status = fleet.attribute("#camera-result", "data-status")
        seen.add(status)
        return status not in ("", "IN_PROGRESS")

    # The clip has a second face in view now and then (its audience shots last seconds): the device then fails
    # the capture, saying so, and the operator waits a moment and starts it again, as long as the clip needs.
    deadline = time.monotonic() + 240
    while True:
        driver.execute_script("delete document.getElementById('camera-result').dataset.status")
        fleet.wait(lambda: driver.find_element(By.ID, "camera-submit").is_enabled(), 30)
        driver.find_element(By.ID, "camera-submit").click()
        fleet.wait(ended, 180, "the capture did not end")
        if "two faces in view" not in fleet.text("#camera-result") or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert "SUCCEEDED: enrolled Camera Visitor" in fleet.text("#camera-result"), fleet.text("#camera-result")
    assert "IN_PROGRESS" in seen  # the device's progress was shown before the outcome
    assert fleet.people_on(device) == ["Camera Visitor"]
    fleet.screenshot("camera", showing="#camera-enroll")


def correct(
    fleet: Fleet,
    device: str,
    query: str,
    button: str,
    fill: Callable[[], None] = lambda: None,
    among: Callable[[], set[str]] | None = None,
) -> str:
    """On the events page for `device` (`query`: the type, and more of the query string), `button` on the newest
    row not tried yet (of the events `among` names, if given), the dialog filled in by `fill` and confirmed, until
    the device takes the correction (it refuses an event whose views are too poor to learn from: a face turned
    sideways, blurred); its outcome."""
    fleet.page(f"/events?device={device}&type={query}")
    tried: set[str] = set()
    rows = f"#events tr:has(button.{button})"

    def untried() -> list:
        found = fleet.driver.find_elements(By.CSS_SELECTOR, rows)
        wanted = among() if among is not None else None
        return [
            row
            for row in found
            if row.get_attribute("data-event") not in tried
            and (wanted is None or row.get_attribute("data-event") in wanted)
        ]

    outcome = ""
    for _ in range(24):  # most of the clip's unknown faces are turned or faint; it loops, so good ones come again
        fleet.wait(untried, 180, f"no {query} event to correct")
        row = untried()[0]
        tried.add(row.get_attribute("data-event") or "")
        row.find_element(By.CSS_SELECTOR, f"button.{button}").click()
        fill()
        fleet.driver.execute_script("document.getElementById('correct-result').textContent = ''")
        fleet.driver.find_element(By.ID, "confirm-ok").click()
        fleet.wait(lambda: fleet.text("#correct-result").startswith(f"{device}: "), 90, f"no outcome of {button}")
        outcome = fleet.text("#correct-result")
        if "refused" not in outcome:
            return outcome
        assert "nothing enrolled" in outcome, outcome  # the views were too poor: the reason is shown, try another
    raise AssertionError(f"the device refused {button} for every event tried: {outcome}")


def test_corrections_from_the_events_page_reach_the_device_that_decided(fleet: Fleet, shared_data: Path) -> None:
    device = DEVICES[1]
    if fleet.people_on(device) != ["Camera Visitor"]:  # the camera's test did not leave them: enroll them here
        fleet.erase_everyone(device)
        photo = {"data": base64.b64encode((shared_data / CLIP_ENROLL).read_bytes()).decode()}
        fleet.ask(device, "enroll", {"name": "Camera Visitor", "images": [photo]})
    # A recognition of the wrong person: the device keeps that face as not them.
    outcome = correct(fleet, device, "face_recognized&person=Camera%20Visitor", "wrong-person")
    assert "will not be named for this face again" in outcome, outcome

    # An unknown face that is someone enrolled: its views become their templates.
    def chosen() -> None:
        fleet.wait(lambda: "Camera Visitor" in fleet.text("#correct-person"), 60, "nobody offered")

    outcome = correct(fleet, device, "face_unknown", "is-person", chosen)
    assert "added views to Camera Visitor" in outcome, outcome
    fleet.screenshot("corrections")

    # An unknown face enrolled as a new person, with consent; the device then recognizes them.
    def consent() -> None:
        fleet.driver.find_element(By.ID, "correct-name").send_keys("Event Visitor")
        fleet.driver.find_element(By.ID, "correct-consent").send_keys("form 2025-201")
        fleet.driver.find_element(By.ID, "correct-consent-ok").click()

    # Erasure drops the faces the device held for the person, the unknown ones given to them included: a face
    # seen since is the one to enroll.
    topic = f"faceagent/{device}/events/face_unknown"
    before = len(fleet.observer.on(topic))
    fleet.erase_everyone(device)

    def seen_since() -> set[str]:
        return {message.json()["event_id"] for message in fleet.observer.on(topic)[before:]}

    outcome = correct(fleet, device, "face_unknown", "enroll-unknown", consent, among=seen_since)
    assert "enrolled Event Visitor" in outcome, outcome
    fleet.wait(lambda: "Event Visitor" in fleet.recognized(device), 180, "the device did not recognize them")


def started_at(fleet: Fleet, device: str) -> str | None:
    """The start time in the device's newest online status, as the broker holds it."""
    online = [m.json() for m in fleet.observer.on(f"faceagent/{device}/status") if m.json().get("state") == "online"]
    return online[-1].get("started_at") if online else None


def test_a_restart_from_the_page_brings_the_device_back_online(fleet: Fleet) -> None:
    device = DEVICES[1]
    before = started_at(fleet, device)
    fleet.page(f"/device/{device}")
    fleet.wait(lambda: fleet.text("#device-state") == "online", 60)
    shown = fleet.text('#device-status dd[data-fact="started"]')
    assert before is not None and shown == before
    fleet.driver.find_element(By.ID, "restart").click()
    assert f"Restart {device}?" in fleet.text("#confirm-text")
    fleet.driver.find_element(By.ID, "confirm-ok").click()
    fleet.wait(lambda: f"{device}: restarting" in fleet.text("#restart-result"), 60, "no restart outcome")
    fleet.wait(lambda: started_at(fleet, device) not in (None, before), 180, "the agent did not come back")
    # the same page, not reloaded, shows it back online under its new start
    fleet.wait(lambda: fleet.text('#device-status dd[data-fact="started"]') == started_at(fleet, device), 60)
    assert fleet.text("#device-state") == "online"


def model_rows(fleet: Fleet) -> dict[str, str]:
    """Device -> its status in the page's progress table (read in one go: the page redraws it as it polls)."""
    script = (
        "return [...document.querySelectorAll('#model-jobs tr')].map((row) => [row.dataset.device, row.dataset.status])"
    )
    return dict(fleet.driver.execute_script(script))


def test_a_release_installed_fleet_wide_from_the_page_shows_progress_then_the_new_model(fleet: Fleet) -> None:
    fleet.page(f"/device/{DEVICES[0]}")
    fleet.wait(lambda: fleet.driver.find_elements(By.CSS_SELECTOR, "#model-release option"), 60, "no release offered")
    assert NEW_EMBEDDER in fleet.text("#model-release")
    fleet.driver.find_element(By.ID, "model-fleet").click()
    fleet.driver.find_element(By.ID, "model-install-submit").click()
    # The page asks the fleet who is online before it words the question: wait for it rather than race it.
    fleet.wait(
        lambda: all(device in fleet.text("#confirm-text") for device in DEVICES),
        30,
        "the confirmation does not name every device",
    )
    # Every state the page draws is recorded as it is drawn: on a quiet machine a device can take every chunk and
    # check the model within one of the page's 500 ms polls, so the test does not race to read a transient row.
    fleet.driver.execute_script(
        "window.statesShown = [];"
        "new MutationObserver(() => document.querySelectorAll('#model-jobs tr').forEach("
        "  (row) => window.statesShown.push(row.dataset.status)))"
        ".observe(document.querySelector('#model-jobs'), { childList: true, subtree: true });"
    )
    fleet.driver.find_element(By.ID, "confirm-ok").click()
    fleet.wait(lambda: model_rows(fleet) == dict.fromkeys(DEVICES, "SUCCEEDED"), 900, "the update did not succeed")
    # The page showed the job running before its outcome; the chunks' progress stays listed (below).
    states = fleet.driver.execute_script("return window.statesShown")
    assert states and states[0] != "SUCCEEDED" and states[-1] == "SUCCEEDED", states
    script = "return [...document.querySelectorAll('#model-steps li')].map((step) => Number(step.dataset.bytes))"
    received = fleet.driver.execute_script(script)
    size = (fleet.folder / "releases" / "dlib_resnet29_int8_b.tflite").stat().st_size
    assert len(received) > 2 and received == sorted(set(received)) and received[-1] == size
    # One copy of each phase for the whole fleet: the chunks crossed the broker once, not once per device.
    fleet_wide = fleet.observer.on("faceagent/*/cmd/model_update")
    assert len(fleet_wide) >= len(received) and not fleet.observer.on(f"faceagent/{DEVICES[0]}/cmd/model_update")
    fleet.wait(lambda: NEW_EMBEDDER in fleet.text('#device-status dd[data-fact="models"]'), 120, "status: old model")
    fleet.screenshot("model-update", showing="#model-job")
