"""The faceagent command line under hostile arguments: argument lists generated from the real parser, and the
README's own command lines mutated, run through the real entry point (`agent.cli.main.main`) in this process,
against real files in a temporary folder and a real Mosquitto.

The contract: exit 0; or exit 2 with the reason on stderr, a line starting "faceagent" (argparse's usage
errors are exit 2 too); exit 1 only where it is documented (`ctl`: a device refused or stayed silent;
`provision`: an install that failed). Never a traceback, never a wait beyond the timeout given.

`run` and `demo` are left out of the generated lists: they are the live loop, which runs until it is
stopped (tests/test_service.py); their refusal of a plain broker URL is in tests/test_tls_acl.py. Nothing is
written outside the temporary folder: the command lines name only its files (or relative paths, taken from
it as the working directory), and `provision`'s default folders are pointed into it the way systemd points
them (CONFIGURATION_DIRECTORY, STATE_DIRECTORY).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from agent.cli.main import build_parser, main
from agent.gallery.store import GalleryStore
from agent.service import provisioning
from tests.support.broker import Broker
from tests.support.commands import write_private_key
from tests.support.data import SAMPLE
from tests.support.responder import Responder

pytestmark = pytest.mark.slow  # fuzzing: hundreds of generated command lines, counted by its last test

GENERATED = 300  # argument lists built from the parser's own commands and options
MUTATED = 300  # the README's command lines, each with one or two mutations
ANSWERS = 30  # `ctl` commands answered by a device that sends hostile replies and statuses
HANG_SECONDS = 60.0  # far beyond any legitimate case (the slowest, an enrollment, takes about a second)
LIVE = {("run",), ("demo",)}  # the live loop: runs until stopped, by design
SYSTEM_PATHS = [Path("/var/lib/faceagent"), Path("/etc/faceagent"), Path("/dev/null-wal"), Path("/dev/null-shm")]

tried: Counter[str] = Counter()
exits: Counter[str] = Counter()  # "<command> -> <exit code>", printed at the end
slowest: list[float] = [0.0]  # seconds, the longest a command line took


# ------------------------------------------------------------------------------------ the world


@dataclass(frozen=True)
class World:
    """The temporary folder the command lines point into, and a broker with no device on it."""

    root: Path
    broker: Broker
    config: Path
    person: str

    def __getitem__(self, name: str) -> str:
        return str(self.root / name)


def _image(path: Path, fmt: str) -> bytes:
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path.read_bytes()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("cli-fuzz")
    shutil.copy(SAMPLE, root / "face.jpg")
    png = _image(root / "noface.png", "PNG")
    (root / "truncated.png").write_bytes(png[:100])
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    (root / "empty").write_bytes(b"")
    (root / "folder").mkdir()
    for name in ("boot", "etc", "state"):
        (root / name).mkdir()
    key = Ed25519PrivateKey.generate()
    write_private_key(key, root / "key.pem")
    (root / "model.tflite").write_bytes(b"TFL3" + bytes(60))
    (root / "bad.toml").write_text("[gallery]\nthreshold = 'high'\n")
    config = root / "settings.toml"  # gallery.path points into the folder: nothing reaches /var/lib/faceagent
    config.write_text(f'[gallery]\npath = "{root / "gallery.db"}"\n[models]\nthreads = 1\n')
    with GalleryStore.open(root / "gallery.db") as store:
        person = store.add_person("Ada").id
    before = [path.exists() for path in SYSTEM_PATHS], sorted(os.listdir("/"))
    broker = Broker(root / "broker").start()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # relative paths in generated arguments land here
        patch.setenv("CONFIGURATION_DIRECTORY", str(root / "etc"))  # what `provision` defaults to under systemd
        patch.setenv("STATE_DIRECTORY", str(root / "state"))
        patch.setattr(provisioning, "BOOT_DIR", root / "boot")
        yield World(root, broker, config, person)
    broker.kill()
    after = [path.exists() for path in SYSTEM_PATHS], sorted(os.listdir("/"))
    assert after == before, "a command line wrote outside its folder"
    print(f"\ncommand lines tried: {dict(tried)}; the slowest took {max(slowest):.2f} s")
    print(f"exit codes: {dict(sorted(exits.items()))}")


# ------------------------------------------------------------------------------------ running one


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str
    seconds: float


def run_cli(argv: list[str]) -> Outcome:
    """`main(argv)` on a thread, so a hang fails the test instead of stalling it; stdout and stderr kept."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["code"] = main(argv)
        except SystemExit as exc:
            result["code"] = exc.code
        except BaseException as exc:  # a crash: raised again in the test, with its traceback
            result["crash"] = exc

    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with redirect_stdout(out), redirect_stderr(err):
        worker = threading.Thread(target=target, daemon=True)
        worker.start()
        worker.join(HANG_SECONDS)
    assert not worker.is_alive(), f"no answer within {HANG_SECONDS:g} s: {argv!r}"
    if "crash" in result:
        raise result["crash"]
    code = result["code"]
    return Outcome(0 if code is None else code, out.getvalue(), err.getvalue(), time.monotonic() - started)


def check(argv: list[str], outcome: Outcome) -> None:
    """The exit code contract, and a reason on stderr for every refusal."""
    command = [token for token in argv if token in ("ctl", "provision")][:1]
    name = next((t for t in argv if t in COMMANDS_TOP), "?")
    exits[f"{name} -> {outcome.code}"] += 1
    slowest.append(outcome.seconds)
    allowed = {0, 2} | ({1} if command else set())
    assert outcome.code in allowed, (argv, outcome)
    assert "Traceback" not in outcome.err, (argv, outcome.err)
    if outcome.code == 2:  # (a message quoting a name with a line break in it spans lines: hence "any")
        assert any(line.startswith("faceagent") for line in outcome.err.splitlines()), (argv, outcome)


# ------------------------------------------------------------------------------------ values


def _safe_text(text: str) -> bool:
    """A generated token that cannot name a place outside the folder, nor start the live loop."""
    return not text.startswith(("/", "~")) and ".." not in text and text not in {"run", "demo"}


texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24).filter(
    _safe_text
)
LONG = ["x" * 5000, "é" * 3000, "a" * 255 + ".jpg"]
NUMBERS = ["0", "-1", "1", "2", "64", "65", "100000", "1e309", "nan", "inf", "-inf", "0x10", "1_000", "", "३", "2.5"]
TIMES_OK = ["0.05", "0.2"]
TIMES_BAD = ["0", "-1", "nan", "inf", "-inf", "1e300", "x", ""]
DEVICES = ["dev-1", "+", "#", "a/b", "..", "x" * 65, "\uff44ev", "dev-1/cmd/restart"]
COMMANDS = ["ping", "purge_events", "restart", "#", "+", "a/b", "PING", "x" * 40, "format_disk"]
JSONS = ["{}", "[]", "{", '{"a": NaN}', "1e999", "null", "[" * 3000, '{"a":' * 3000, '{"older_than_days": 1}']
SETTINGS = ["gallery.threshold=0.4", "novalue", "=", "a.b=[[[", "gallery.threshold=" + "[" * 3000, "x.y=\u0085"]
EVENT_TYPES = ["#", "+", "face_recognized", "a/#", "#/a", "x" * 70]
ROLES = ["embedder", "detector", "Embedder", ""]


def _paths(world: World, *, for_db: bool = False) -> list[str]:
    names = ["face.jpg", "noface.png", "truncated.png", "corrupt.jpg", "empty", "folder", "missing.jpg"]
    names += ["key.pem", "model.tflite", "bad.toml", "settings.toml", "gallery.db", "boot", "etc", "state"]
    paths = [world[name] for name in names] + [world["folder/nested/missing"], world["x" * 300]]
    return paths if for_db else [*paths, "/dev/null"]  # a gallery on /dev/null would put its -wal in /dev


def values(world: World, action: argparse.Action) -> st.SearchStrategy[str]:
    """Values for one option or positional, by what it names, three times in four; else junk."""
    return st.one_of(*[_named(world, action)] * 3, texts, st.sampled_from(LONG))


def _named(world: World, action: argparse.Action) -> st.SearchStrategy[str]:
    dest = action.dest
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        return st.sampled_from([str(choice) for choice in action.choices])
    table: dict[str, list[str]] = {
        "mqtt": [
            world.broker.url,
            "mqtt://127.0.0.1:1",
            "mqtts://127.0.0.1:1",
            "http://x",
            "mqtt://[::1",
            "mqtt://h:0",
        ],
        "device": DEVICES,
        "target": DEVICES,
        "command": COMMANDS,
        "arguments": JSONS,
        "entry": JSONS,
        "values": SETTINGS,
        "type": EVENT_TYPES,
        "role": ROLES,
        "person_id": [world.person, "p_0", "../x", "p_" + "0" * 100],
        "threads": NUMBERS,
        "threshold": NUMBERS,
        "count": NUMBERS,
        "chunk_kib": NUMBERS,
        "timeout": TIMES_OK + TIMES_BAD,
        "seconds": TIMES_OK + TIMES_BAD,
    }
    if dest in table:
        return st.sampled_from(table[dest])
    if dest == "db" or action.type is Path or dest in ("model", "images", "photos", "file", "key_file"):
        return st.sampled_from(_paths(world, for_db=dest in ("db", "keep", "key_file")))
    return st.sampled_from(["Ada", "", " ", "a\tb", "\u202e", "ok-1", "p_0123"])


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every runnable command (`identify`, `ctl call` ...) and its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for name, child in subs[0].choices.items():
        found |= _leaves(child, (*path, name))
    return found


LEAVES = {path: parser for path, parser in _leaves(build_parser()).items() if path not in LIVE}
COMMANDS_TOP = {path[0] for path in LEAVES}


def _waits(draw: st.DrawFn, tokens: list[str]) -> list[str]:
    """A line with `ctl` in it ends with a short --timeout (the default is 15 s), one with `events` also with a
    short --seconds (it tails until Ctrl-C without); given last, they win over any earlier, and may themselves
    be hostile. Where the command takes neither, they are one more usage error."""
    waits = []
    if "ctl" in tokens and "keygen" not in tokens:
        waits += ["--timeout", draw(st.sampled_from(TIMES_OK * 3 + TIMES_BAD))]
    if "events" in tokens:
        waits += ["--seconds", draw(st.sampled_from(TIMES_OK * 3 + TIMES_BAD))]
    return waits


@st.composite
def generated(draw: st.DrawFn, world: World) -> list[str]:
    """A command from the parser, each of its arguments present or not with a drawn value, maybe shuffled,
    maybe with junk tokens among them."""
    command = draw(st.sampled_from(sorted(LEAVES)))
    tokens: list[str] = []
    for action in LEAVES[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            if draw(st.integers(0, 2)) == 0:
                option = draw(st.sampled_from(action.option_strings))
                tokens += [option] if action.nargs == 0 else [option, draw(values(world, action))]
            continue
        low, high = {"?": (0, 1), "+": (0, 3), "*": (0, 3)}.get(str(action.nargs), (1, 1))
        tokens += [draw(values(world, action)) for _ in range(draw(st.integers(low, high)))]
    if draw(st.integers(0, 3)) == 0:
        tokens = draw(st.permutations(tokens))
    for _ in range(draw(st.integers(0, 2))):
        junk = draw(texts | st.sampled_from(["-h", "--version", "--", "-", "--nope", "--json=1", "-vv"]))
        tokens.insert(draw(st.integers(0, len(tokens))), junk)
    prefix = ["--config", str(world.config), *draw(st.sampled_from([[], ["-v"], ["--db", world["gallery.db"]]]))]
    return [*prefix, *command, *tokens, *_waits(draw, [*command, *tokens])]


# ------------------------------------------------------------------------------------ the README's lines


def corpus(world: World) -> list[list[str]]:
    """The command lines the README shows, with its placeholders made real (and `ctl` waits kept short)."""
    w, face, db, pid = world, world["face.jpg"], world["gallery.db"], world.person
    broker = world.broker.url
    return [
        ["identify", "--json", face],
        ["identify", "--db", db, "--json", face],
        ["compare", "--json", face, w["noface.png"]],
        ["enroll", "--db", db, "--name", "Lin-Manuel Miranda", "--consent-ref", "FORM-17", face, w["noface.png"]],
        ["enroll", "--db", db, "--person-id", pid, face],
        ["gallery", "list", "--json", "--db", db],
        ["person", "update", pid, "--name", "N", "--external-ref", "X", "--db", db],
        ["person", "delete", pid, "--db", db],
        ["config", "check", w["bad.toml"], "--json"],
        ["models", "verify"],
        ["--version"],
        ["provision", "--boot-dir", w["boot"], "--config-dir", w["etc"], "--state-dir", w["state"], "--json"],
        ["ctl", "keygen", "release.pem"],
        ["ctl", "devices", "--mqtt", broker],
        ["ctl", "enroll", "--mqtt", broker, "--all", "--name", "Ada", "--consent-ref", "F-17", face, face],
        ["ctl", "delete", "--mqtt", broker, "--name", "Ada"],
        ["ctl", "events", "--mqtt", broker, "--seconds", "0.2"],
        ["ctl", "call", "--mqtt", broker, "dev-1", "purge_events", '{"older_than_days": 30}'],
        ["ctl", "config", "set", "--mqtt", broker, "--device", "dev-1", "gallery.threshold=0.4"],
        ["ctl", "model-update", w["model.tflite"], "--mqtt", broker, "--device", "dev-1", "--model-id",
         "dlib-resnet29-int8", "--role", "embedder", "--model-version", "2026.11.1", "--model-key", w["key.pem"]],
    ]  # fmt: skip


MUTATIONS = ["drop", "duplicate", "swap", "replace", "insert", "truncate", "glue", "upper"]


@st.composite
def mutated(draw: st.DrawFn, world: World) -> list[str]:
    lines = corpus(world)
    tokens = list(draw(st.sampled_from(lines)))
    pool = st.sampled_from([t for line in lines for t in line]) | texts | st.sampled_from(LONG + DEVICES + NUMBERS)
    for _ in range(draw(st.integers(1, 2))):
        if not tokens:
            break
        at = draw(st.integers(0, len(tokens) - 1))
        kind = draw(st.sampled_from(MUTATIONS))
        if kind == "drop":
            del tokens[at]
        elif kind == "duplicate":
            tokens.insert(at, tokens[at])
        elif kind == "swap":
            other = draw(st.integers(0, len(tokens) - 1))
            tokens[at], tokens[other] = tokens[other], tokens[at]
        elif kind == "replace":
            tokens[at] = draw(pool)
        elif kind == "insert":
            tokens.insert(at, draw(pool))
        elif kind == "truncate":
            tokens = tokens[:at]
        elif kind == "glue" and at + 1 < len(tokens):
            tokens[at : at + 2] = [f"{tokens[at]}={tokens[at + 1]}"]
        elif kind == "upper" and not tokens[at].startswith("/"):  # "/TMP/..." would be outside the folder
            tokens[at] = tokens[at].upper()
    tokens = [t for t in tokens if t not in ("run", "demo")]
    return ["--config", str(world.config), *tokens, *_waits(draw, tokens)]


# ------------------------------------------------------------------------------------ properties


def examples(count: int) -> settings:
    return settings(max_examples=count, deadline=None, suppress_health_check=list(HealthCheck))


# Exit codes of the README's lines as written, in order, on a fresh folder: `compare` finds no face in the
# noise image; `enroll --person-id` adds a photo that is already Lin-Manuel Miranda's, a conflict; `ctl enroll
# --all` and `ctl delete` find no device online; `call`, `config set` and `model-update` get no reply.
AS_WRITTEN = [0, 0, 2, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 2, 2, 0, 1, 1, 1]


@pytest.mark.parametrize("index", range(len(AS_WRITTEN)))
def test_each_readme_command_line_runs_as_written(world: World, index: int) -> None:
    """The corpus works to begin with, so what a mutation breaks, it breaks in a working line."""
    line = corpus(world)[index]
    waits = ["--timeout", "0.2"] if line[0] == "ctl" and line[1] != "keygen" else []
    argv = ["--config", str(world.config), *line, *waits]
    outcome = run_cli(argv)
    check(argv, outcome)
    assert outcome.code == AS_WRITTEN[index], (argv, outcome)
    tried["readme"] += 1


@given(data=st.data())
@examples(GENERATED)
def test_generated_command_lines_exit_0_or_2_never_a_traceback(world: World, data: st.DataObject) -> None:
    argv = data.draw(generated(world))
    check(argv, run_cli(argv))
    tried["generated"] += 1


@given(data=st.data())
@examples(MUTATED)
def test_mutated_readme_command_lines_exit_0_or_2_never_a_traceback(world: World, data: st.DataObject) -> None:
    argv = data.draw(mutated(world))
    check(argv, run_cli(argv))
    tried["mutated"] += 1


# ------------------------------------------------------------------------------------ hostile answers


@pytest.fixture(scope="module")
def responder(world: World) -> Iterator[Responder]:
    device = Responder(world.broker)
    yield device
    device.close()


hostile_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=6,
)
fields = st.sampled_from(["model_id", "version", "sha256", "previous", "person", "people", "settings", "deleted"])
hostile_data = hostile_values | st.dictionaries(fields, hostile_values, max_size=4)


@st.composite
def answers(draw: st.DrawFn) -> Callable[[dict[str, Any]], bytes]:
    """A reply under the request's id with hostile fields (a model update's job going on until its commit, so
    the commit's answer is read too), or bytes that are no reply at all."""
    raw = draw(st.sampled_from([b"", b"\xff\xfe", b"[" * 5000, b"null", b"[1, 2]", b"{"]) | st.binary(max_size=40))
    status = draw(st.sampled_from(["ok", "error", None, 5, ["ok"]]))
    data, error = draw(hostile_data), draw(hostile_values)
    outcome = draw(st.sampled_from(["SUCCEEDED", "FAILED", "IN_PROGRESS", None]))
    if draw(st.integers(0, 4)) == 0:
        return lambda request: raw

    def answer(request: dict[str, Any]) -> bytes:
        phase = (request.get("args") or {}).get("phase")
        job = {"status": outcome if phase == "commit" else "IN_PROGRESS"}
        body = data | job if isinstance(data, dict) and phase else data
        document = {"request_id": request.get("request_id"), "status": status, "data": body, "error": error}
        return json.dumps(document).encode()

    return answer


CTL = [
    ["devices"],
    ["devices", "--json"],
    ["status", "dev-1"],
    ["people", "dev-1"],
    ["call", "dev-1", "ping"],
    ["delete", "--name", "Ada"],
    ["config", "get", "dev-1"],
    ["config", "set", "--device", "dev-1", "gallery.threshold=0.4"],
    ["enroll", "--device", "dev-1", "--name", "Ada", "{face}"],
    ["model-update", "{model}", "--device", "dev-1", "--model-id", "m-1", "--role", "embedder", "--model-version", "1",
     "--model-key", "{key}"],
]  # fmt: skip


@given(
    command=st.sampled_from(CTL),
    answer=answers(),
    status=st.sampled_from([b"[" * 5000, b"\xff", b"[]"])
    | st.binary(max_size=30)
    | hostile_values.map(lambda v: json.dumps(v).encode()),
)
@examples(ANSWERS)
def test_ctl_survives_hostile_replies_and_statuses(
    world: World, responder: Responder, command: list[str], answer: Callable[[dict[str, Any]], bytes], status: bytes
) -> None:
    responder.answer = answer
    responder.retain("dev-1", status)
    responder.retain("dev-2", json.dumps({"state": "online", "gallery": [status.hex()[:8]]}).encode())
    files = {"{face}": world["face.jpg"], "{model}": world["model.tflite"], "{key}": world["key.pem"]}
    argv = ["ctl", *(files.get(token, token) for token in command), "--mqtt", world.broker.url, "--timeout", "0.25"]
    try:
        check(argv, run_cli(argv))
    finally:
        responder.retain("dev-1", b"")
        responder.retain("dev-2", b"")
    tried["hostile answers"] += 1


# ------------------------------------------------------------------------------------ fixed cases


def test_a_thousand_nested_brackets_are_refused_as_arguments(world: World) -> None:
    for argv in (
        ["ctl", "call", "dev-1", "ping", "[" * 3000, "--mqtt", world.broker.url],
        ["ctl", "config", "set", "--device", "dev-1", "gallery.threshold=" + "[" * 3000, "--mqtt", world.broker.url],
    ):
        outcome = run_cli(argv)
        assert outcome.code == 2 and "nests too deeply" in outcome.err, outcome


@pytest.mark.parametrize("option", [["--threads", "100000"], ["--threads", "0"], ["--threshold", "nan"]])
def test_an_option_standing_in_for_a_setting_takes_only_what_the_setting_takes(world: World, option: list[str]) -> None:
    outcome = run_cli(["--config", str(world.config), "compare", world["face.jpg"], world["face.jpg"], *option])
    assert outcome.code == 2 and "must be" in outcome.err.splitlines()[-1], outcome


@pytest.mark.parametrize("wait", [["--timeout", "inf"], ["--timeout", "nan"], ["--timeout", "1e300"]])
def test_a_ctl_wait_must_be_a_finite_positive_number_of_seconds(world: World, wait: list[str]) -> None:
    outcome = run_cli(["ctl", "devices", "--mqtt", world.broker.url, *wait])
    assert outcome.code == 2 and "must be more than 0" in outcome.err, outcome


def test_a_model_sent_in_one_byte_chunks_is_refused(world: World) -> None:
    release = ["--model-id", "m", "--role", "embedder", "--model-version", "1", "--model-key", world["key.pem"]]
    argv = ["ctl", "model-update", world["model.tflite"], "--device", "d", *release, "--chunk-kib", "0"]
    outcome = run_cli(argv)
    assert outcome.code == 2 and "--chunk-kib" in outcome.err, outcome


def test_no_command_is_a_usage_error_on_stderr(world: World) -> None:
    outcome = run_cli(["--config", str(world.config)])
    assert outcome.code == 2 and outcome.out == "" and "no command given" in outcome.err


def test_an_image_path_that_is_a_fifo_is_refused_not_waited_on(world: World) -> None:
    fifo = world.root / "photo.fifo"
    os.mkfifo(fifo)
    result: dict[str, int] = {}
    argv = ["--config", str(world.config), "identify", str(fifo)]
    worker = threading.Thread(target=lambda: result.update(code=main(argv)), daemon=True)
    with redirect_stderr(io.StringIO()):
        worker.start()
        worker.join(3.0)
        blocked = worker.is_alive()
        with suppress(OSError):  # a reader stuck in open() goes on once a writer comes and goes (none: ENXIO)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
    assert not blocked and result == {"code": 2}


def test_ctl_refuses_a_photo_that_is_a_fifo_before_reading_it(world: World) -> None:
    fifo = world.root / "ctl-photo.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    outcome = run_cli(["ctl", "enroll", "--device", "d", "--name", "A", str(fifo), "--mqtt", world.broker.url])
    assert outcome.code == 2 and "not a regular file" in outcome.err, outcome


def test_the_fuzzing_tried_enough_command_lines(world: World) -> None:
    wanted = {"readme": len(AS_WRITTEN), "generated": GENERATED, "mutated": MUTATED, "hostile answers": ANSWERS}
    assert all(tried[name] >= count for name, count in wanted.items()), f"only {dict(tried)}: run the whole module"
