"""Files corrupted on disk between restarts: a model file, and the gallery database."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.support.agent_process import AGENT, agent_env, start_agent, stop_agent
from tests.support.faults import STATUS, enroll, online, write_config

pytestmark = pytest.mark.slow  # the fault suite: real agent processes, killed, starved and cut off


def run_once(config: Path, db: Path, frames: Path) -> subprocess.CompletedProcess[str]:
    command = [*AGENT, "--config", str(config), "--db", str(db), "run", "--source", str(frames)]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, env=agent_env())
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the agent was still running after 30 s: {exc.stderr!r}"[:2000]) from None


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_corrupted_model_file_refuses_to_start(
    tmp_path: Path, broker, observe, models_copy: Path, shared_data: Path, frames: Path
) -> None:
    config = write_config(tmp_path, broker, extra=f'[models]\ndir = "{models_copy}"\n')
    db = tmp_path / "gallery.db"
    enroll(shared_data, db, config)
    observer = observe(broker, [STATUS])
    agent = start_agent(config, db, frames, log=tmp_path / "agent.log")
    # Online, not a fixed wait: a SIGTERM before the agent handles it ends it with -15 (a loaded machine's start).
    assert observer.wait_for(online, timeout=90), (tmp_path / "agent.log").read_text()[-2000:]
    assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-2000:]
    assert stop_agent(agent) == 0  # a clean stop first
    manifest = json.loads((models_copy / "manifest.json").read_text())
    used = set(manifest["defaults"].values())
    entries = [e for e in manifest["models"] if e["id"] in used]
    assert len(entries) == 2
    for entry in entries:  # the detector and the embedder the agent loads: one flipped byte each, in turn
        target = models_copy / entry["file"]
        original = target.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        target.write_bytes(bytes(flipped))
        try:
            result = run_once(config, db, frames)
        finally:
            target.write_bytes(original)
        assert result.returncode != 0, f"started with a corrupted {entry['file']}"
        lines = error_lines(result.stderr)
        assert len(lines) == 1, f"expected a one-line error, got:\n{result.stderr}"
        assert entry["file"] in lines[0] and entry["sha256"].lower() in lines[0], lines[0]


def test_corrupted_database_is_refused_and_left_untouched(
    tmp_path: Path, broker, observe, shared_data: Path, frames: Path
) -> None:
    config = write_config(tmp_path, broker)
    db = tmp_path / "gallery.db"
    enroll(shared_data, db, config)
    observer = observe(broker, [STATUS])
    agent = start_agent(config, db, frames, log=tmp_path / "agent.log")
    assert observer.wait_for(online, timeout=90), (tmp_path / "agent.log").read_text()[-2000:]
    assert stop_agent(agent) == 0
    with open(db, "r+b") as handle:  # overwrite the SQLite header
        handle.write(b"this is not a SQLite file at all")
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    siblings = sorted(p.name for p in tmp_path.iterdir())
    result = run_once(config, db, frames)
    assert result.returncode != 0, "started on a corrupt gallery"
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert str(db) in lines[0] and "corrupt" in lines[0], lines[0]
    assert "restore" in lines[0] and f"{db}.bad" in lines[0], lines[0]  # the documented recovery path
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before, "the corrupt gallery was modified"
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings, "files were created next to it"
