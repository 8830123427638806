"""The gallery commands as a user runs them: real processes, real gallery files, exit codes and JSON."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from agent.gallery.store import GalleryStore
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline, most_central
from tests.support.agent_process import faceagent
from tests.support.compare import file_sha256
from tests.support.data import BRICK, CLIP_ENROLL, DEFAULT_EMBEDDER_ID, DEFAULT_THRESHOLD, SAMPLE

pytestmark = pytest.mark.slow  # the faceagent command as a real process, a few seconds each

ACTOR = f"cli:{pwd.getpwuid(os.getuid()).pw_name}"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("faceagent: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.fixture
def empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "empty.toml"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def probes(lfw_faces: list[Path]) -> dict[str, list[Path]]:
    """LFW people with at least four photos, in a stable order."""
    by_person: dict[str, list[Path]] = defaultdict(list)
    for path in lfw_faces:
        by_person[path.parent.name].append(path)
    return {name: paths[:4] for name, paths in by_person.items() if len(paths) >= 4}


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory, probes: dict[str, list[Path]], pipeline: FacePipeline) -> Path:
    """A gallery of three real people (three photos each) made with the default embedder, plus one stale person."""
    path = tmp_path_factory.mktemp("gallery") / "gallery.db"
    info = pipeline.embedder.info
    with GalleryStore.open(path) as store:
        for name in list(probes)[:3]:
            with store.transaction():
                person = store.add_person(name.replace("_", " "), external_ref=f"ref-{name}")
                for photo in probes[name][:3]:
                    frame = load_image(photo)
                    analysed = pipeline.analyse(frame)
                    face = most_central([a.face for a in analysed], frame.shape[1], frame.shape[0])
                    embedding = next(a.embedding for a in analysed if a.face is face)
                    store.add_template(
                        person.id, embedding, model_id=info.model_id, model_sha256=info.sha256, quality={}
                    )
        stale = store.add_person("Old Model")
        store.add_template(stale.id, embedding, model_id="retired-embedder", model_sha256="00" * 32, quality={})
    return path


@pytest.fixture
def gallery(enrolled: Path, tmp_path: Path) -> Path:
    """A private copy a test may change."""
    return Path(shutil.copy(enrolled, tmp_path / "gallery.db"))


def people(path: Path) -> dict[str, dict]:
    result = faceagent("gallery", "list", "--db", str(path), "--json")
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)["people"]}


# ------------------------------------------------------------------------------------ gallery list


def test_gallery_list_json_counts_templates_per_model_and_stale_people(gallery: Path, empty_config: Path) -> None:
    result = faceagent("gallery", "list", "--db", str(gallery), "--json", config=empty_config)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["model_id"] == DEFAULT_EMBEDDER_ID and document["people_needing_reenrollment"] == 1
    by_name = {p["name"]: p for p in document["people"]}
    assert by_name["Old Model"]["templates"] == {"retired-embedder": 1} and by_name["Old Model"]["needs_reenrollment"]
    assert by_name["Abdoulaye Wade"]["templates"] == {DEFAULT_EMBEDDER_ID: 3}
    assert by_name["Abdoulaye Wade"]["external_ref"] == "ref-Abdoulaye_Wade"


def test_gallery_list_text_summarises(gallery: Path, empty_config: Path) -> None:
    result = faceagent("--db", str(gallery), "gallery", "list", config=empty_config)
    assert result.returncode == 0, result.stderr
    assert "[needs re-enrollment]" in result.stdout
    assert result.stdout.splitlines()[-1] == f"4 people; 1 need re-enrollment for {DEFAULT_EMBEDDER_ID}"


def test_db_comes_from_the_config_file(gallery: Path, tmp_path: Path) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text('[gallery]\npath = "gallery.db"\n')  # relative to the config file's folder
    result = faceagent("gallery", "list", "--json", config=config)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["people"]) == 4


def test_listing_a_missing_gallery_does_not_create_it(tmp_path: Path, empty_config: Path) -> None:
    missing = tmp_path / "absent.db"
    assert "does not exist" in one_line_error(faceagent("gallery", "list", "--db", str(missing), config=empty_config))
    assert not missing.exists()


def test_a_gallery_in_a_missing_directory_is_a_clear_error(tmp_path: Path, empty_config: Path) -> None:
    path = tmp_path / "no" / "such" / "gallery.db"
    assert str(path) in one_line_error(faceagent("gallery", "list", "--db", str(path), config=empty_config))


def test_a_corrupt_gallery_exits_2_untouched(gallery: Path, empty_config: Path) -> None:
    with open(gallery, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\x5a" * 200)
    before = file_sha256(gallery)
    message = one_line_error(faceagent("gallery", "list", "--db", str(gallery), config=empty_config))
    assert "corrupt" in message and "untouched" in message
    assert file_sha256(gallery) == before


def test_a_foreign_database_exits_2_untouched(tmp_path: Path, empty_config: Path) -> None:
    foreign = tmp_path / "photos.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE albums (id INTEGER PRIMARY KEY)")
    conn.close()
    before = file_sha256(foreign)
    assert "another application" in one_line_error(faceagent("person", "delete", "--db", str(foreign), "p_x"))
    assert file_sha256(foreign) == before


# ------------------------------------------------------------------------------------ person


def test_person_delete_erases_and_audits_with_the_unix_user(gallery: Path, empty_config: Path) -> None:
    target = people(gallery)["Abdullah"]["id"]
    result = faceagent("person", "delete", "--db", str(gallery), target, config=empty_config)
    assert result.returncode == 0, result.stderr
    assert f"deleted person {target}: 3 templates, 0 events (audited as {ACTOR})" in result.stdout
    assert "Abdullah" not in people(gallery)
    with GalleryStore.open(gallery) as store:
        (record,) = store.audit_log()
    assert (record["actor"], record["action"], record["target"]) == (ACTOR, "person.delete", target)


def test_person_delete_of_an_unknown_id_exits_2_and_loses_nothing(gallery: Path, empty_config: Path) -> None:
    before = people(gallery)
    message = one_line_error(faceagent("person", "delete", "--db", str(gallery), "p_nobody", config=empty_config))
    assert "no person with id 'p_nobody'" in message
    assert people(gallery) == before


def test_person_update_renames_and_audits(gallery: Path, empty_config: Path) -> None:
    target = people(gallery)["Abdullah"]["id"]
    args = ("person", "update", "--db", str(gallery), target, "--name", "Abdullah II", "--external-ref", "")
    result = faceagent(*args, config=empty_config)
    assert result.returncode == 0, result.stderr
    renamed = people(gallery)["Abdullah II"]
    assert renamed["id"] == target and renamed["external_ref"] is None
    with GalleryStore.open(gallery) as store:
        (record,) = store.audit_log()
    assert (record["actor"], record["action"], record["details"]) == (
        ACTOR,
        "person.update",
        {"fields": "external_ref,name"},
    )


def test_person_update_without_changes_exits_2(gallery: Path, empty_config: Path) -> None:
    target = people(gallery)["Abdullah"]["id"]
    result = faceagent("person", "update", "--db", str(gallery), target, config=empty_config)
    assert "nothing to update" in one_line_error(result)


def test_person_update_of_an_unknown_id_exits_2(gallery: Path, empty_config: Path) -> None:
    result = faceagent("person", "update", "--db", str(gallery), "p_nobody", "--name", "X", config=empty_config)
    assert "no person with id" in one_line_error(result)


# ------------------------------------------------------------------------------------ config


def test_config_check_prints_the_effective_settings_as_toml(tmp_path: Path) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text("[gallery]\nthreshold = 0.4\n")
    result = faceagent("config", "check", str(config))
    assert result.returncode == 0, result.stderr
    assert f"# effective settings from {config}" in result.stdout
    assert "threshold = 0.4\n" in result.stdout and "[retention]" in result.stdout


def test_config_check_json_uses_the_global_config(tmp_path: Path) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text('[events]\ncamera_id = "door"\n')
    result = faceagent("config", "check", "--json", config=config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["events"]["camera_id"] == "door"


def test_config_check_shows_the_matching_figures_in_force_and_where_each_comes_from(tmp_path: Path) -> None:
    """Unset [gallery] figures show as null; the ones the agent would use, and their sources, beside them."""
    config = tmp_path / "faceagent.toml"
    config.write_text('[gallery]\nmargin = 0.05\n[models]\nembedder = "fused-dlib-mobileface-int8"\n')
    result = faceagent("config", "check", "--json", config=config)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["gallery"]["threshold"] is None
    in_force = shown["matching"]
    assert in_force["threshold"] == 0.5626 and in_force["sources"]["threshold"] == "embedder fused-dlib-mobileface-int8"
    assert in_force["margin"] == 0.05 and in_force["sources"]["margin"] == "setting"


def test_config_check_names_the_bad_key_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text('[gallery]\nthreshold = "high"\n')
    message = one_line_error(faceagent("config", "check", str(config)))
    assert 'gallery.threshold: must be a number greater than 0 and at most 4, got "high"' in message


def test_config_check_refuses_a_command_key_the_agent_could_not_load(tmp_path: Path) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text('[commands]\npublic_keys = ["ops.pem"]\n')  # relative: the agent needs an absolute path
    assert "commands.public_keys[0]" in one_line_error(faceagent("config", "check", str(config)))


def test_a_bad_global_config_stops_every_command(tmp_path: Path, gallery: Path) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text("[gallery]\nmargin = -1\n")
    assert "gallery.margin" in one_line_error(faceagent("gallery", "list", "--db", str(gallery), config=config))


# ------------------------------------------------------------------------------------ identify


def test_identify_with_a_gallery_names_the_person_or_says_unknown(
    gallery: Path, probes: dict[str, list[Path]], empty_config: Path
) -> None:
    names = list(probes)
    known, stranger = probes[names[0]][3], probes["Adam_Sandler"][3]  # the 4th photo was never enrolled
    result = faceagent("identify", "--db", str(gallery), "--json", str(known), str(stranger), config=empty_config)
    assert result.returncode == 0, result.stderr
    records = {Path(r["image"]): r for r in map(json.loads, result.stdout.splitlines())}
    match = records[known]["match"]
    assert match["name"] == names[0].replace("_", " ") and match["person_id"] == people(gallery)[match["name"]]["id"]
    assert 0 < match["distance"] < DEFAULT_THRESHOLD and match["margin"] > 0
    assert records[stranger]["match"] == "unknown"
    assert f"1 enrolled people have no {DEFAULT_EMBEDDER_ID} template" in result.stderr


def test_identify_with_a_missing_gallery_exits_2(tmp_path: Path, empty_config: Path) -> None:
    result = faceagent("identify", "--db", str(tmp_path / "absent.db"), str(SAMPLE), config=empty_config)
    assert "does not exist" in one_line_error(result)


def test_enroll_creates_the_gallery_and_reports_each_photo(
    tmp_path: Path, empty_config: Path, shared_data: Path
) -> None:
    db = tmp_path / "new.db"
    photo = shared_data / CLIP_ENROLL
    brick = shared_data / BRICK
    result = faceagent(
        "enroll", "--db", str(db), "--name", "Lin-Manuel Miranda", "--consent-ref", "F-17", "--json",
        str(photo), str(brick), config=empty_config,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["accepted"], line["reason"]) for line in lines] == [(True, None), (False, "no face found")]
    with GalleryStore.open(db, create=False) as store:
        (person,) = store.list_people()
        assert person.name == "Lin-Manuel Miranda" and person.consent.reference == "F-17"
        assert [r["action"] for r in store.audit_log()] == ["person.enroll"]


def test_enroll_with_no_usable_photo_exits_2_and_writes_nothing(
    tmp_path: Path, empty_config: Path, shared_data: Path
) -> None:
    db = tmp_path / "new.db"
    brick = shared_data / BRICK
    result = faceagent("enroll", "--db", str(db), "--name", "Nobody", str(brick), config=empty_config)
    assert result.returncode == 2
    assert "nothing enrolled" in one_line_error(result)
    with GalleryStore.open(db, create=False) as store:
        assert store.list_people() == []
