"""Enrollment: one usable face per photo, a quality gate, conflicts refused, all-or-nothing writes."""

from __future__ import annotations

import dataclasses
import io
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.config import GallerySettings, Settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.recognition.enrollment import Enroller, EnrollmentError
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline
from tests.support.data import bush, powell

ACTOR = "test:enrollment"


# Colin Powell's LFW photos, sorted by what the gate makes of them (checked by eye).
FRONTAL = ["0040", "0133", "0170", "0182", "0198"]
TURNED = "0071"  # looking to his left
TWO_FACES = "0049"  # someone else's face beside his
PROBE = "0234"


def powells(shared_data: Path, *numbers: str) -> list[Path]:
    return [powell(shared_data, n) for n in numbers]


def make_enroller(pipeline: FacePipeline, tmp_path: Path, **gallery: object) -> Enroller:
    settings = Settings(gallery=dataclasses.replace(GallerySettings(path=tmp_path / "g.db"), **gallery))
    store = GalleryStore.open(settings.gallery.path)
    matcher = Matcher.for_gallery(settings.gallery, pipeline.embedder)
    return Enroller(pipeline, store, matcher, settings)


def photos(paths: list[Path]) -> list[tuple[str, Path]]:
    return [(p.name, p) for p in paths]


@pytest.fixture
def enroller(pipeline: FacePipeline, tmp_path: Path) -> Enroller:
    return make_enroller(pipeline, tmp_path)


def test_enrolls_a_new_person_who_is_then_recognized(enroller: Enroller, shared_data: Path) -> None:
    result = enroller.enroll(photos(powells(shared_data, *FRONTAL[:3])), name="Colin Powell", actor=ACTOR)
    assert result.created and result.templates_added == 3
    (probe_path,) = powells(shared_data, PROBE)
    probe = load_image(probe_path)
    face = enroller.pipeline.detect(probe)[0]
    match = enroller.matcher.search(enroller.pipeline.embed_face(probe, face).embedding)
    assert match.person_id == result.person.id and match.accepted


def test_unreadable_and_faceless_photos_are_refused_with_reasons(enroller: Enroller, shared_data: Path) -> None:
    (good,) = powells(shared_data, FRONTAL[0])
    batch = [("broken.jpg", b"not an image"), ("brick.png", shared_data / "negatives" / "skimage_brick.png")]
    result = enroller.enroll([*batch, ("good.jpg", good)], name="Colin Powell", actor=ACTOR)
    reasons = {o.label: o.reason for o in result.photos}
    assert reasons["good.jpg"] is None
    assert reasons["broken.jpg"].startswith("unreadable")
    assert reasons["brick.png"] == "no face found"


def test_nothing_is_written_when_no_photo_passes(enroller: Enroller, shared_data: Path) -> None:
    with pytest.raises(EnrollmentError, match="no face found"):
        enroller.enroll(photos([shared_data / "negatives" / "skimage_brick.png"]), name="Nobody", actor=ACTOR)
    assert enroller.store.list_people() == []


def test_a_photo_with_two_faces_is_refused(enroller: Enroller, shared_data: Path) -> None:
    with pytest.raises(EnrollmentError, match="2 faces"):
        enroller.enroll(photos(powells(shared_data, TWO_FACES)), name="Colin Powell", actor=ACTOR)


def test_two_people_side_by_side_are_refused(enroller: Enroller, shared_data: Path, tmp_path: Path) -> None:
    a = load_image(powells(shared_data, FRONTAL[0])[0])
    b = load_image(bush(shared_data))
    both = tmp_path / "both.png"
    Image.fromarray(np.concatenate([a, b], axis=1)).save(both)
    with pytest.raises(EnrollmentError, match="2 faces"):
        enroller.enroll(photos([both]), name="Two People", actor=ACTOR)


def test_a_face_of_someone_else_is_a_conflict_unless_forced(enroller: Enroller, shared_data: Path) -> None:
    enroller.enroll(photos(powells(shared_data, *FRONTAL[:2])), name="Colin Powell", actor=ACTOR)
    with pytest.raises(EnrollmentError, match="conflict: this face already matches another enrolled person"):
        enroller.enroll(photos(powells(shared_data, FRONTAL[2])), name="Impostor", actor=ACTOR)
    forced = enroller.enroll(photos(powells(shared_data, FRONTAL[2])), name="Impostor", actor=ACTOR, force=True)
    assert forced.templates_added == 1


def test_a_conflict_names_nobody_and_gives_no_distance(enroller: Enroller, shared_data: Path) -> None:
    first = enroller.enroll(photos(powells(shared_data, *FRONTAL[:2])), name="Colin Powell", actor=ACTOR)
    with pytest.raises(EnrollmentError) as refused:
        enroller.enroll([("photo", powells(shared_data, FRONTAL[2])[0])], name="Impostor", actor=ACTOR)
    assert "Powell" not in str(refused.value) and first.person.id not in str(refused.value)
    assert not re.search(r"\d\.\d", str(refused.value))


def test_the_caller_may_have_a_conflict_named(enroller: Enroller, shared_data: Path) -> None:
    """The local CLI's case: its user can read the gallery file anyway."""
    first = enroller.enroll(photos(powells(shared_data, *FRONTAL[:2])), name="Colin Powell", actor=ACTOR)
    named = f"conflict: this face matches Colin Powell \\({first.person.id}\\) at distance 0\\.\\d+"
    with pytest.raises(EnrollmentError, match=named):
        enroller.enroll(photos(powells(shared_data, FRONTAL[2])), name="Impostor", actor=ACTOR, reveal_matches=True)


def test_someone_elses_face_is_not_added_to_an_enrolled_person(enroller: Enroller, shared_data: Path) -> None:
    ada = enroller.enroll(photos(powells(shared_data, *FRONTAL[:2])), name="Ada", actor=ACTOR)
    with pytest.raises(EnrollmentError, match="not the same person") as refused:
        enroller.enroll([("photo", bush(shared_data))], person_id=ada.person.id, actor=ACTOR)
    assert "Ada" not in str(refused.value) and not re.search(r"\d\.\d", str(refused.value))
    assert enroller.store.count_templates(ada.person.id, enroller.pipeline.embedder.info.model_id) == 2


def test_someone_elses_face_is_added_with_force_and_audited(enroller: Enroller, shared_data: Path) -> None:
    ada = enroller.enroll(photos(powells(shared_data, *FRONTAL[:2])), name="Ada", actor=ACTOR)
    forced = enroller.enroll(photos([bush(shared_data)]), person_id=ada.person.id, actor=ACTOR, force=True)
    assert forced.templates_added == 1
    record = next(r for r in enroller.store.audit_log() if r["action"] == "person.enroll")
    assert record["target"] == ada.person.id and record["details"]["forced"] is True
    assert record["details"]["mismatches_overridden"] == 1


def test_a_person_without_templates_of_the_current_model_takes_a_new_face(
    enroller: Enroller, shared_data: Path
) -> None:
    """Re-enrollment after a model change: there is nothing of this model to compare with."""
    person = enroller.store.add_person("Ada")
    result = enroller.enroll(photos([bush(shared_data)]), person_id=person.id, actor=ACTOR)
    assert result.templates_added == 1


def test_near_duplicates_are_skipped(enroller: Enroller, shared_data: Path) -> None:
    (photo,) = powells(shared_data, FRONTAL[0])
    result = enroller.enroll([("a.jpg", photo), ("b.jpg", photo.read_bytes())], name="Colin Powell", actor=ACTOR)
    assert result.templates_added == 1
    assert "near-duplicate" in next(o.reason for o in result.photos if not o.accepted)


def test_templates_per_person_are_capped(pipeline: FacePipeline, tmp_path: Path, shared_data: Path) -> None:
    enroller = make_enroller(pipeline, tmp_path, max_templates_per_person=2)
    result = enroller.enroll(photos(powells(shared_data, *FRONTAL[:3])), name="Colin Powell", actor=ACTOR)
    assert result.templates_added == 2
    assert any("template limit" in (o.reason or "") for o in result.photos)
    more = powells(shared_data, FRONTAL[3])
    with pytest.raises(EnrollmentError, match="template limit"):
        enroller.enroll(photos(more), person_id=result.person.id, actor=ACTOR)


def test_turned_faces_fail_the_quality_gate(enroller: Enroller, shared_data: Path) -> None:
    turned = powells(shared_data, TURNED)[0]
    with pytest.raises(EnrollmentError, match="face turned sideways"):
        enroller.enroll(photos([turned]), name="Colin Powell", actor=ACTOR)


def test_small_faces_fail_the_quality_gate(enroller: Enroller, shared_data: Path) -> None:
    frame = Image.open(powells(shared_data, FRONTAL[0])[0]).resize((100, 100))
    buffer = io.BytesIO()
    frame.save(buffer, format="PNG")
    with pytest.raises(EnrollmentError, match="face too small"):
        enroller.enroll([("small.png", buffer.getvalue())], name="Colin Powell", actor=ACTOR)


def test_more_photos_can_be_added_to_an_enrolled_person(enroller: Enroller, shared_data: Path) -> None:
    first = enroller.enroll(photos(powells(shared_data, FRONTAL[0])), name="Colin Powell", actor=ACTOR)
    more = enroller.enroll(photos(powells(shared_data, *FRONTAL[3:5])), person_id=first.person.id, actor=ACTOR)
    assert not more.created and more.person.id == first.person.id
    model_id = enroller.pipeline.embedder.info.model_id
    assert enroller.store.count_templates(first.person.id, model_id) == 1 + more.templates_added


def test_chips_are_kept_only_when_opted_in(pipeline: FacePipeline, tmp_path: Path, shared_data: Path) -> None:
    for keep in (False, True):
        (tmp_path / str(keep)).mkdir()
        enroller = make_enroller(pipeline, tmp_path / str(keep), keep_chips=keep)
        enroller.enroll(photos(powells(shared_data, FRONTAL[0])), name="C", actor=ACTOR)
        enroller.store.close()
        with sqlite3.connect(tmp_path / str(keep) / "g.db") as conn:
            (chips,) = conn.execute("SELECT COUNT(chip) FROM templates").fetchone()
        assert chips == (1 if keep else 0)


def test_enrollment_is_audited_without_biometric_data(enroller: Enroller, shared_data: Path) -> None:
    result = enroller.enroll(photos(powells(shared_data, *FRONTAL[:2])), name="Colin Powell", actor=ACTOR)
    records = [r for r in enroller.store.audit_log() if r["action"] == "person.enroll"]
    assert len(records) == 1 and records[0]["actor"] == ACTOR and records[0]["target"] == result.person.id
    assert "embedding" not in str(records[0]) and "Colin" not in str(records[0])
