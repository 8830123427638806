"""No password or URL user-info in any message, file, reply or status document, whatever characters it holds.

Each test searches for the password itself and for every 8-character window of it (a truncated message
would leak a prefix), in the text as written and as JSON or TOML decode it (escapes would hide a match).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from agent.cli.main import main as cli_main
from agent.config import load_settings, parse_broker_url
from agent.errors import ConfigError
from agent.service.provisioning import FILE_NAME, REASON_NAME, REJECTED_NAME, Outcome, provision
from agent.service.provisioning import main as provision_main
from agent.vision.pipeline import FacePipeline
from tests.support.agent_process import start_agent
from tests.support.broker import Broker, Certs, Observer, free_port
from tests.support.commands import make_device
from tests.support.data import copy_clip_frames

_ALPHABET = "abcXYZ0189@/:%\"'#?! \\üß☃密码"
LONG = "".join(random.Random(4).choice(_ALPHABET) for _ in range(500))
PASSWORDS = {
    "at-slash-colon-percent": "hunt@er/2:x%40Qw",
    "quotes-backslash-hash": 'sa"y\'\\ q"uo#te?s!',
    "unicode": "ünïcødé☃密码-Zx81",
    "500-chars": LONG,
}
# Where the broker URL fails: the validating pattern, the port, the host, nothing after @, the scheme, and
# a percent-encoded password with a bad port (the encoded form is a secret too).
URLS = {
    "raw": "mqtts://door-1:{pw}@broker.example.com",
    "bad-port": "mqtts://door-1:{pw}@broker.example.com:99x",
    "bad-ipv6": "mqtts://door-1:{pw}@[broker",
    "no-host": "mqtts://door-1:{pw}@",
    "bad-scheme": "http://door-1:{pw}@broker",
    "encoded-bad-port": "mqtts://door-1:{qpw}@broker.example.com:70000",
}


def windows(secret: str) -> set[str]:
    if len(secret) <= 8:
        return {secret}
    return {secret[i : i + 8] for i in range(len(secret) - 7)}


def forms(password: str) -> set[str]:
    """What must not appear: the password, its percent-encoded form, and their 8-character windows."""
    return windows(password) | windows(quote(password, safe=""))


def readings(data: bytes) -> list[str]:
    """The text as stored, and as JSON or TOML decode it."""
    text = data.decode("utf-8", errors="replace")
    found = [text]
    with contextlib.suppress(ValueError):
        found.append(json.dumps(json.loads(text), ensure_ascii=False))
    with contextlib.suppress(tomllib.TOMLDecodeError, ValueError):
        found.append(json.dumps(tomllib.loads(text), ensure_ascii=False, default=str))
    return found


def leaks(password: str, **texts: bytes | str) -> list[str]:
    """`where: window` for every form of the password found."""
    secrets = forms(password)
    found = []
    for where, content in texts.items():
        data = content.encode() if isinstance(content, str) else content
        for reading in readings(data):
            found += [f"{where}: {s!r}" for s in secrets if s in reading]
    return sorted(set(found))


def files_under(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file()}


def toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string


def hostile_file(url: str, password: str) -> str:
    """A provisioning file that is rejected for a reason of its own, with the hostile password in it twice."""
    return (
        f'[mqtt]\nurl = {toml_string(url)}\ndevice_id = "door-1"\nusername = "door-1"\n'
        f'password = {toml_string(password)}\n\n[events]\ncamera_id = "front/door"\n'
    )


@dataclass
class Dirs:
    boot: Path
    etc: Path
    state: Path

    @property
    def argv(self) -> list[str]:
        return ["--boot-dir", str(self.boot), "--config-dir", str(self.etc), "--state-dir", str(self.state)]


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    found = Dirs(tmp_path / "boot", tmp_path / "etc", tmp_path / "state")
    found.boot.mkdir()
    return found


# ------------------------------------------------------------------------------------ provisioning


@pytest.mark.parametrize("url", URLS.values(), ids=URLS.keys())
@pytest.mark.parametrize("password", PASSWORDS.values(), ids=PASSWORDS.keys())
def test_rejected_provisioning_leaks_no_password(
    dirs: Dirs, url: str, password: str, capfd: pytest.CaptureFixture[str]
) -> None:
    (dirs.boot / FILE_NAME).write_text(hostile_file(url.format(pw=password, qpw=quote(password, safe="")), password))
    assert provision_main(dirs.argv) == 2
    out, err = capfd.readouterr()
    assert "front/door" in err  # the reason is there ...
    assert (
        leaks(password, stdout=out, stderr=err, **files_under(dirs.boot, dirs.etc, dirs.state)) == []
    )  # ... no secret


def test_a_rejected_file_is_kept_without_its_secrets_and_the_original_is_wiped(dirs: Dirs) -> None:
    (dirs.boot / FILE_NAME).write_text(hostile_file(f"mqtts://door-1:{LONG}@broker", LONG))
    assert provision(dirs.boot, dirs.etc, dirs.state).outcome is Outcome.REJECTED
    kept = tomllib.loads((dirs.boot / REJECTED_NAME).read_text())
    assert kept["mqtt"]["device_id"] == "door-1" and kept["events"]["camera_id"] == "front/door"
    assert (kept["mqtt"]["password"], kept["mqtt"]["url"]) == ("", "mqtts://broker")
    assert sorted(p.name for p in dirs.boot.iterdir()) == [REJECTED_NAME, REASON_NAME]


def test_private_keys_of_a_rejected_file_are_wiped(dirs: Dirs, certs: Certs) -> None:
    for name in ("ca.crt", "client.crt", "client.key"):
        shutil.copy(certs.ca.parent / name, dirs.boot / name)
    inline = (certs.ca.parent / "other-server.key").read_text()
    (dirs.boot / FILE_NAME).write_text(
        '[mqtt]\nurl = "mqtts://broker"\nca_file = "ca.crt"\ncert_file = "client.crt"\nkey_file = "client.key"\n'
        f'[events]\ncamera_id = "front/door"\n[provisioning.files]\n"spare.key" = {toml_string(inline)}\n'
    )
    assert provision(dirs.boot, dirs.etc, dirs.state).outcome is Outcome.REJECTED
    left = files_under(dirs.boot)
    assert [name for name, data in left.items() if b"PRIVATE KEY" in data] == []
    assert sorted(Path(name).name for name in left) == ["ca.crt", "client.crt", REJECTED_NAME, REASON_NAME]
    assert "client.key" in (dirs.boot / REASON_NAME).read_text()  # the operator learns to copy it again


def test_a_rejected_file_that_is_not_toml_is_kept_without_its_secrets(dirs: Dirs, certs: Certs) -> None:
    key = (certs.ca.parent / "client.key").read_text()
    (dirs.boot / FILE_NAME).write_text(
        f"[mqtt\npassword = {toml_string(LONG)}\nurl = {toml_string('mqtts://u:' + LONG + '@broker')}\n"
        f'[provisioning.files]\n"c.key" = """\n{key}"""\n'
    )
    assert provision(dirs.boot, dirs.etc, dirs.state).outcome is Outcome.REJECTED
    kept = (dirs.boot / REJECTED_NAME).read_text()
    assert leaks(LONG, rejected=kept) == [] and "PRIVATE KEY" not in kept
    assert kept.splitlines()[0] == "[mqtt"  # lines stay where they were: the reason's line numbers still match


# ------------------------------------------------------------------------------------ messages and replies


@pytest.mark.parametrize("url", [u for k, u in URLS.items() if k != "raw"], ids=[k for k in URLS if k != "raw"])
@pytest.mark.parametrize("password", PASSWORDS.values(), ids=PASSWORDS.keys())
def test_a_broker_url_error_never_shows_user_info(url: str, password: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_broker_url(url.format(pw=password, qpw=quote(password, safe="")))
    assert "broker URL" in str(caught.value)
    assert leaks(password, message=str(caught.value)) == []


def valid_config(folder: Path, password: str) -> Path:
    folder.mkdir(exist_ok=True)
    config = folder / "faceagent.toml"
    encoded = quote(password, safe="")
    config.write_text(
        f'[mqtt]\nurl = "mqtts://door-1:{encoded}@broker.example.com"\npassword = {toml_string(password)}\n'
        f'[camera]\nsource = "rtsp://cam:{encoded}@10.0.0.9/stream"\n'
        f'[gallery]\npath = "{folder / "gallery.db"}"\n'
    )
    return config


@pytest.mark.parametrize("as_json", [False, True], ids=["toml", "json"])
@pytest.mark.parametrize("password", PASSWORDS.values(), ids=PASSWORDS.keys())
def test_config_check_shows_no_secret(
    tmp_path: Path, password: str, as_json: bool, capfd: pytest.CaptureFixture[str]
) -> None:
    config = valid_config(tmp_path, password)
    assert cli_main(["config", "check", str(config), *(["--json"] if as_json else [])]) == 0
    out, err = capfd.readouterr()
    assert "10.0.0.9" in out
    assert leaks(password, stdout=out, stderr=err) == []


@pytest.mark.parametrize("password", PASSWORDS.values(), ids=PASSWORDS.keys())
def test_get_config_reply_shows_no_secret(tmp_path: Path, pipeline: FacePipeline, password: str) -> None:
    device = make_device(tmp_path, pipeline)
    device.current[0] = load_settings(valid_config(tmp_path / "etc", password))
    reply = device.call("get_config")
    assert reply["status"] == "ok" and reply["data"]["settings"]["camera"]["source"].endswith("@10.0.0.9/stream")
    assert leaks(password, reply=json.dumps(reply, ensure_ascii=False)) == []


# ------------------------------------------------------------------------------------ the running agent


DEVICE = "door-9"


@dataclass
class Run:
    status: dict
    stderr: str
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def agent_after_rejection(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Run]:
    """A provisioning file rejected for its hostile URL, then the agent started: its retained status carries
    the provisioning outcome. It runs with mqtt.tls_insecure on, which it must warn about."""
    root = tmp_path_factory.mktemp("agent")
    boot, etc, state = root / "boot", root / "etc", root / "state"
    boot.mkdir()
    (boot / FILE_NAME).write_text(hostile_file(f"mqtts://door-1:{LONG}@broker.example.com:99x", LONG))
    assert provision(boot, etc, state).outcome is Outcome.REJECTED
    broker = Broker(root / "broker", port=free_port()).start()
    frames = copy_clip_frames(shared_data, root / "frames", 3)
    config = root / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\ntls_insecure = true\n[camera]\nfps = 2\nloop = true\n'
    )
    agent = start_agent(config, state / "gallery.db", frames, stderr=subprocess.PIPE)
    try:
        watcher = Observer(broker, [f"faceagent/{DEVICE}/status"])
        assert watcher.wait_for(lambda ms: any(m.json().get("provisioning") for m in ms), timeout=120)
        watcher.close()
        late = Observer(broker, [f"faceagent/{DEVICE}/status"])  # what anyone subscribing later is handed
        assert late.wait_for(lambda ms: any(m.retain for m in ms), timeout=10)
        status = next(m for m in late.messages if m.retain).json()
        late.close()
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
        broker.kill()
    yield Run(status, stderr, files_under(boot, etc, state))


@pytest.mark.slow
def test_the_retained_status_and_the_agent_log_show_no_secret(agent_after_rejection: Run) -> None:
    run = agent_after_rejection
    assert run.status["provisioning"]["outcome"] == "rejected"
    assert leaks(LONG, status=json.dumps(run.status, ensure_ascii=False), stderr=run.stderr, **run.files) == []


@pytest.mark.slow
def test_tls_insecure_is_warned_about_at_start_and_shown_in_status(agent_after_rejection: Run) -> None:
    run = agent_after_rejection
    assert "mqtt.tls_insecure is true" in run.stderr
    assert any("mqtt.tls_insecure" in warning for warning in run.status["warnings"])
