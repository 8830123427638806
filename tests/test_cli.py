"""The faceagent command as a user runs it: a real process, real files, exit codes and JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.agent_process import faceagent
from tests.support.data import BRICK, SAMPLE

pytestmark = pytest.mark.slow  # the faceagent command as a real process, a few seconds each


def test_version_reports_the_runtime() -> None:
    result = faceagent("--version")
    assert result.returncode == 0
    assert "faceagent" in result.stdout and "TFLite runtime: " in result.stdout


def test_identify_prints_one_json_line_per_face() -> None:
    result = faceagent("--verbose", "identify", "--json", str(SAMPLE))
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    face = json.loads(line)
    assert face["image"] == str(SAMPLE) and face["score"] > 0.5
    assert set(face["keypoints"]) >= {"right_eye", "left_eye", "nose_tip", "mouth_centre"}
    assert "TFLite runtime" in result.stderr


def test_identify_without_face_exits_2(shared_data: Path) -> None:
    result = faceagent("identify", "--json", str(shared_data / BRICK))
    assert result.returncode == 2
    assert "no face found" in result.stderr


def test_identify_goes_on_past_an_unreadable_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really")
    result = faceagent("identify", "--json", str(broken), str(SAMPLE))
    assert result.returncode == 2
    assert len(result.stdout.splitlines()) == 1
    assert str(broken) in result.stderr


def test_compare_same_person(shared_data: Path) -> None:
    a = shared_data / "faces-lfw/Abel_Pacheco/Abel_Pacheco_0001.jpg"
    b = shared_data / "faces-lfw/Abel_Pacheco/Abel_Pacheco_0004.jpg"
    result = faceagent("compare", "--json", str(a), str(b))
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["same"] is True and verdict["distance"] < verdict["threshold"]


def test_compare_different_people(shared_data: Path) -> None:
    a = shared_data / "faces-lfw/Abel_Pacheco/Abel_Pacheco_0001.jpg"
    result = faceagent("compare", "--json", str(a), str(SAMPLE))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["same"] is False


@pytest.mark.parametrize("bad", ["missing.jpg", "negative"])
def test_compare_exits_2_with_one_line(shared_data: Path, bad: str) -> None:
    other = str(shared_data / BRICK) if bad == "negative" else "missing.jpg"
    result = faceagent("compare", str(SAMPLE), other)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("faceagent: ")


def test_models_verify_lists_every_model() -> None:
    result = faceagent("models", "verify")
    assert result.returncode == 0, result.stderr
    assert "blazeface-short" in result.stdout and "dlib-resnet29-int8" in result.stdout


def test_tampered_model_stops_the_cli(models_copy: Path) -> None:
    manifest = json.loads((models_copy / "manifest.json").read_text())
    target = models_copy / manifest["models"][0]["file"]
    data = target.read_bytes()
    target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    result = faceagent("identify", "--models", str(models_copy), str(SAMPLE))
    assert result.returncode == 2
    assert "integrity check" in result.stderr and result.stdout == ""


def test_console_hash_password_refuses_an_empty_password() -> None:
    result = faceagent("console", "--hash-password", input="")
    assert result.returncode == 2 and "no password given" in result.stderr and result.stdout == ""


def test_console_hash_password_prints_a_scrypt_line_for_a_piped_password() -> None:
    result = faceagent("console", "--hash-password", input="correct horse\n")
    assert result.returncode == 0 and result.stdout.startswith("scrypt$") and len(result.stdout.splitlines()) == 1
