"""The gallery upgrade path: a gallery enrolled with dlib alone keeps recognising its people after the switch to
the fused embedder (their dlib templates, searched on the fused query's dlib part under dlib's figures) until
they are re-enrolled or rebuilt from kept chips; strangers stay strangers. The same holds between two fused
models with the same first member (the default and the MobileFaceNet option): the old fused templates' dlib part
serves.

The gallery is made as a device makes it today: the real Enroller, the real dlib pipeline, real LFW photos,
today's schema; probes and strangers are other real photos."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import GallerySettings, ModelSettings, Settings
from agent.errors import ModelError
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.gallery.sync import GallerySync, load_gallery
from agent.modelupdate.install import load_embedder, rebuild_sources, rebuild_templates
from agent.recognition.enrollment import Enroller, EnrollmentError
from agent.tracking.decision import decide
from agent.vision.fusion import carried_models, fallback_models, kin_models
from agent.vision.image import load_image
from agent.vision.modelstore import ModelStore
from agent.vision.pipeline import FacePipeline, PipelineOptions, most_central
from tests.support.agent_process import faceagent

FUSED = "fused-dlib-mobileface-mixed"
PREVIOUS = "fused-dlib-mobileface-int8"  # the default before MobileFace's mixed int8 build
FUSED_DIMENSIONS = 384
DLIB = "dlib-resnet29-int8"
ENROLLED = [
    "Tony_Blair",
    "Donald_Rumsfeld",
    "Gerhard_Schroeder",
    "Hugo_Chavez",
    "Jacques_Chirac",
    "John_Ashcroft",
    "Junichiro_Koizumi",
    "Jean_Chretien",
]
STRANGERS = ["Serena_Williams", "Vladimir_Putin", "Laura_Bush", "George_W_Bush"]
PROBES_EACH = 3


@dataclasses.dataclass
class OldGallery:
    """A dlib-only gallery file, who is in it, and what dlib named each probe before the switch."""

    path: Path
    people: dict[str, str]  # LFW name -> person id
    enrolled: dict[str, Path]  # LFW name -> the photo enrolled
    probes: list[tuple[str, Path]]  # (LFW name, photo) of enrolled people, not enrolled photos
    strangers: list[Path]
    named_by_dlib: dict[Path, str | None]  # probe -> person id the enrolling model named (None: nobody)


def photos(shared_data: Path, name: str) -> list[Path]:
    return sorted((shared_data / "faces-lfw" / name).glob("*.jpg"))


def embed(pipeline: FacePipeline, path: Path) -> np.ndarray:
    frame = load_image(path)
    face = most_central(pipeline.detect(frame), frame.shape[1], frame.shape[0])
    assert face is not None, f"{path}: no face"
    return pipeline.embed_face(frame, face).embedding


def make_old_gallery(
    folder: Path, pipeline: FacePipeline, shared_data: Path, keep_chips: bool, model_id: str = DLIB
) -> OldGallery:
    """A gallery enrolled through `pipeline` (whose embedder is `model_id`), as a device enrolls today."""
    settings = Settings(gallery=GallerySettings(path=folder / "gallery.db", keep_chips=keep_chips))
    people: dict[str, str] = {}
    enrolled: dict[str, Path] = {}
    probes: list[tuple[str, Path]] = []
    with GalleryStore.open(settings.gallery.path) as store:
        enroller = Enroller(pipeline, store, Matcher.for_gallery(settings.gallery, pipeline.embedder), settings)
        for name in ENROLLED:
            candidates = photos(shared_data, name)
            for index, photo in enumerate(candidates):  # the first photo the enrollment gate accepts
                try:
                    result = enroller.enroll([(photo.name, photo)], actor="test", name=name.replace("_", " "))
                except EnrollmentError:
                    continue
                people[name], enrolled[name] = result.person.id, photo
                probes += [(name, probe) for probe in candidates[index + 1 : index + 1 + PROBES_EACH]]
                break
    strangers = [photo for name in STRANGERS for photo in photos(shared_data, name)[:PROBES_EACH]]
    before = Matcher.for_gallery(GallerySettings(), pipeline.embedder)
    with GalleryStore.open(settings.gallery.path) as store:
        load_gallery(before, store, model_id)
    named = {probe: _named(before, embed(pipeline, probe)) for _, probe in probes}
    return OldGallery(settings.gallery.path, people, enrolled, probes, strangers, named)


def _named(matcher: Matcher, embedding: np.ndarray) -> str | None:
    match = matcher.search(embedding)
    return match.person_id if match.accepted else None


@pytest.fixture(scope="module")
def old(dlib: FacePipeline, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> OldGallery:
    return make_old_gallery(tmp_path_factory.mktemp("old"), dlib, shared_data, keep_chips=False)


def switched(gallery: Path, fused: FacePipeline) -> Matcher:
    """The matcher a device builds after the switch: nothing set in [gallery], the fused embedder."""
    matcher = Matcher.for_gallery(GallerySettings(), fused.embedder)
    with GalleryStore.open(gallery) as store:
        load_gallery(matcher, store, FUSED)
    return matcher


def test_the_old_gallery_holds_only_dlib_templates_and_dlib_names_its_probes(old: OldGallery) -> None:
    with GalleryStore.open(old.path) as store:
        assert set(store.stats(DLIB)["templates"]) == {DLIB}
        assert len(store.people_needing_reenrollment(FUSED)) == len(old.people) == len(ENROLLED)
    named = sum(person is not None for person in old.named_by_dlib.values())
    print(f"dlib named {named} of {len(old.probes)} probes of {len(old.people)} people")
    assert named >= len(old.probes) // 2


def test_after_the_switch_dlib_only_people_are_still_named(old: OldGallery, fused: FacePipeline) -> None:
    matcher = switched(old.path, fused)
    assert len(matcher) == 0 and matcher.fallback is not None and matcher.fallback.model_id == DLIB
    after = {probe: _named(matcher, embed(fused, probe)) for _, probe in old.probes}
    named_before = {probe: person for probe, person in old.named_by_dlib.items() if person is not None}
    assert {probe: after[probe] for probe in named_before} == named_before


def test_after_the_switch_a_dlib_only_person_is_still_held(old: OldGallery, fused: FacePipeline) -> None:
    """What the frame loop asks of every named track: a track named through old templates is not judged again
    as if its person had been erased."""
    matcher = switched(old.path, fused)
    assert all(matcher.holds(person_id) for person_id in old.people.values())
    matcher.remove_person(old.people[ENROLLED[0]])
    assert not matcher.holds(old.people[ENROLLED[0]])


def test_after_the_switch_a_stranger_is_still_nobody(old: OldGallery, fused: FacePipeline) -> None:
    matcher = switched(old.path, fused)
    assert [_named(matcher, embed(fused, photo)) for photo in old.strangers] == [None] * len(old.strangers)


def test_a_track_of_a_dlib_only_person_is_decided_under_dlibs_track_threshold(
    old: OldGallery, fused: FacePipeline
) -> None:
    matcher = switched(old.path, fused)
    assert matcher.fallback is not None and matcher.fallback.matcher.track_threshold == 0.32
    name = max(old.people, key=lambda n: sum(old.named_by_dlib[p] is not None for who, p in old.probes if who == n))
    views = [embed(fused, probe) for who, probe in old.probes if who == name]
    stranger = [embed(fused, photo) for photo in old.strangers[:PROBES_EACH]]
    assert decide(views, matcher).person_id == old.people[name] and decide(views, matcher).accepted
    assert not decide(stranger, matcher).accepted


def copied(old: OldGallery, folder: Path) -> Path:
    """A copy of the old gallery a test may write to."""
    copy = folder / "gallery.db"
    with GalleryStore.open(old.path) as source, GalleryStore.open(copy) as target:
        source.db.conn.backup(target.db.conn)
    return copy


def test_a_re_enrolled_person_is_matched_on_fused_templates_only(
    old: OldGallery, fused: FacePipeline, tmp_path: Path
) -> None:
    copy = copied(old, tmp_path)
    name, probe = next((n, p) for n, p in old.probes if old.named_by_dlib[p] is not None)
    photo = old.enrolled[name]  # enrolled again, now under the fused embedder
    settings = Settings(gallery=GallerySettings(path=copy))
    with GalleryStore.open(copy) as store:
        matcher = Matcher.for_gallery(settings.gallery, fused.embedder)
        load_gallery(matcher, store, FUSED)
        Enroller(fused, store, matcher, settings).enroll(
            [(photo.name, photo)], actor="test", person_id=old.people[name]
        )
        assert old.people[name] not in store.people_needing_reenrollment(FUSED)
    matcher = switched(copy, fused)
    assert matcher.own_person_ids() == {old.people[name]}
    assert _named(matcher, embed(fused, probe)) == old.people[name]


def test_someone_elses_photo_added_to_a_dlib_only_person_is_refused_on_their_dlib_templates(
    old: OldGallery, fused: FacePipeline, tmp_path: Path
) -> None:
    copy = copied(old, tmp_path)
    settings = Settings(gallery=GallerySettings(path=copy))
    impostor = old.strangers[0]
    with GalleryStore.open(copy) as store:
        matcher = Matcher.for_gallery(settings.gallery, fused.embedder)
        load_gallery(matcher, store, FUSED)
        enroller = Enroller(fused, store, matcher, settings)
        with pytest.raises(EnrollmentError, match="not the same person"):
            enroller.enroll([(impostor.name, impostor)], actor="test", person_id=old.people[ENROLLED[0]])
        assert old.people[ENROLLED[0]] in store.people_needing_reenrollment(FUSED)


def test_kept_chips_rebuild_fused_templates_that_name_the_same_probes(
    dlib: FacePipeline, fused: FacePipeline, shared_data: Path, tmp_path: Path, models_dir: Path
) -> None:
    kept = make_old_gallery(tmp_path, dlib, shared_data, keep_chips=True)
    embedder = load_embedder(models_dir, ModelStore(models_dir).spec(FUSED, "embedder"), ModelSettings())
    with GalleryStore.open(kept.path) as store:
        rebuilt = rebuild_templates(store, embedder, DLIB, "test")
        assert sorted(rebuilt) == sorted(kept.people.values()) and store.people_needing_reenrollment(FUSED) == []
    matcher = switched(kept.path, fused)
    assert matcher.own_person_ids() == set(kept.people.values())
    named = sum(_named(matcher, embed(fused, probe)) == kept.people[who] for who, probe in kept.probes)
    assert named >= sum(person is not None for person in kept.named_by_dlib.values())


def test_erasing_a_dlib_only_person_takes_them_out_of_the_fallback_at_once(
    old: OldGallery, fused: FacePipeline
) -> None:
    matcher = switched(old.path, fused)
    name, probe = next((n, p) for n, p in old.probes if old.named_by_dlib[p] is not None)
    matcher.remove_person(old.people[name])
    assert old.people[name] not in matcher.person_ids() and _named(matcher, embed(fused, probe)) is None


def switched_live(gallery: Path, before: FacePipeline, after: FacePipeline) -> Matcher:
    """The live matcher of a device on `before`, after the gallery thread's `switch_model` to `after`."""
    with GalleryStore.open(gallery) as store:
        live = Matcher.for_gallery(GallerySettings(), before.embedder)
        sync = GallerySync(store, live, before.embedder.info.model_id)
        sync.reload()
        sync.switch_model(after.embedder.info.model_id, live.take, after.embedder)
    return live


def test_a_model_switch_on_the_live_sync_brings_the_fallback(
    old: OldGallery, dlib: FacePipeline, fused: FacePipeline
) -> None:
    live = switched_live(old.path, dlib, fused)
    assert live.fallback is not None and live.person_ids() == set(old.people.values())
    name, probe = next((n, p) for n, p in old.probes if old.named_by_dlib[p] is not None)
    assert _named(live, embed(fused, probe)) == old.people[name]


def switched_config(folder: Path) -> Path:
    config = folder / "faceagent.toml"
    config.write_text(f'[models]\nembedder = "{FUSED}"\n')
    return config


def test_gallery_list_says_who_needs_re_enrollment_and_is_matched_on_dlib_until_then(
    old: OldGallery, tmp_path: Path
) -> None:
    result = faceagent("gallery", "list", "--db", str(old.path), config=switched_config(tmp_path))
    assert result.returncode == 0, result.stderr
    flagged = [line for line in result.stdout.splitlines() if f"matched on its {DLIB} templates until then" in line]
    assert len(flagged) == len(old.people)
    assert f"{len(old.people)} need re-enrollment for {FUSED} ({len(old.people)} matched on" in result.stdout


def test_identify_after_the_switch_names_a_dlib_only_person(old: OldGallery, tmp_path: Path) -> None:
    name, probe = next((n, p) for n, p in old.probes if old.named_by_dlib[p] is not None)
    result = faceagent("identify", "--db", str(old.path), "--json", str(probe), config=switched_config(tmp_path))
    assert result.returncode == 0, result.stderr
    assert old.people[name] in result.stdout and "matched on their" in result.stderr


# ------------------------------------------------------------- between fused models with the same first member

OPTION = "fused-dlib-mobilefacenet"


@pytest.fixture(scope="module")
def option() -> FacePipeline:
    return FacePipeline(PipelineOptions(embedder=OPTION, threads=1))


@pytest.fixture(scope="module")
def under_default(fused: FacePipeline, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> OldGallery:
    """A gallery enrolled with the default fused model, no chips kept: nothing to rebuild from."""
    return make_old_gallery(tmp_path_factory.mktemp("default"), fused, shared_data, keep_chips=False, model_id=FUSED)


def switched_to(gallery: Path, pipeline: FacePipeline, model_id: str) -> Matcher:
    matcher = Matcher.for_gallery(GallerySettings(), pipeline.embedder)
    with GalleryStore.open(gallery) as store:
        load_gallery(matcher, store, model_id)
    return matcher


def test_the_default_and_the_option_are_each_others_kin(models_dir: Path) -> None:
    models = ModelStore(models_dir)
    assert kin_models(models, models.specs[FUSED]) == [PREVIOUS, OPTION]
    assert kin_models(models, models.specs[OPTION]) == [FUSED, PREVIOUS]
    assert fallback_models(models, models.specs[OPTION]) == [DLIB, FUSED, PREVIOUS]
    assert fallback_models(models, models.specs[DLIB]) == []


def edited(models_copy: Path, model_id: str, edit: Callable[[dict[str, Any]], object]) -> ModelStore:
    """The copied models with `edit` applied to one manifest entry."""
    path = models_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(next(m for m in manifest["models"] if m["id"] == model_id))
    path.write_text(json.dumps(manifest))
    return ModelStore(models_copy)


def test_a_fused_model_whose_first_member_is_another_build_is_no_kin(models_copy: Path) -> None:
    """A template begins with its first member's vector only if that member is the same model, byte for byte."""
    models = edited(models_copy, OPTION, lambda entry: entry["members"][0].update(sha256="0" * 64))
    assert kin_models(models, models.specs[FUSED]) == [PREVIOUS]


def test_the_option_names_people_enrolled_under_the_default_on_their_dlib_part(
    under_default: OldGallery, option: FacePipeline
) -> None:
    matcher = switched_to(under_default.path, option, OPTION)
    assert len(matcher) == 0 and matcher.fallback is not None and matcher.fallback.model_ids == (DLIB, FUSED, PREVIOUS)
    assert len(matcher.fallback.matcher) == len(under_default.people)
    after = {probe: _named(matcher, embed(option, probe)) for _, probe in under_default.probes}
    truth = {probe: under_default.people[who] for who, probe in under_default.probes}
    named_before = [probe for probe, person in under_default.named_by_dlib.items() if person is not None]
    named_after = [probe for probe, person in after.items() if person is not None]
    print(f"the default named {len(named_before)}, the option on its dlib part {len(named_after)}, of {len(truth)}")
    assert all(after[probe] == truth[probe] for probe in named_after)
    assert len(named_after) >= len(named_before) * 3 // 4


def test_under_the_option_a_stranger_is_still_nobody_to_a_default_gallery(
    under_default: OldGallery, option: FacePipeline
) -> None:
    matcher = switched_to(under_default.path, option, OPTION)
    strangers = [_named(matcher, embed(option, photo)) for photo in under_default.strangers]
    assert strangers == [None] * len(under_default.strangers)


def test_a_negative_made_under_the_default_still_holds_under_the_option(
    under_default: OldGallery, fused: FacePipeline, option: FacePipeline, tmp_path: Path
) -> None:
    """ "Not this person", said under the default, is kept in the dlib part too: the probe it names stays unnamed."""
    copy = copied(under_default, tmp_path)
    matcher = switched_to(copy, option, OPTION)
    probe = next(p for p, person in under_default.named_by_dlib.items() if _named(matcher, embed(option, p)))
    person = _named(matcher, embed(option, probe))
    assert person is not None
    with GalleryStore.open(copy) as store:
        store.add_negative(person, embed(fused, probe), model_id=FUSED, event_id=None, ttl_days=30, cap=5)
    matcher = switched_to(copy, option, OPTION)
    assert matcher.fallback is not None and matcher.fallback.matcher.negative_count == 1
    assert _named(matcher, embed(option, probe)) is None


def test_back_on_the_default_people_enrolled_under_the_option_are_named(
    fused: FacePipeline, option: FacePipeline, shared_data: Path, tmp_path: Path
) -> None:
    under_option = make_old_gallery(tmp_path, option, shared_data, keep_chips=False, model_id=OPTION)
    matcher = switched_to(under_option.path, fused, FUSED)
    assert matcher.fallback is not None and matcher.fallback.model_ids == (DLIB, PREVIOUS, OPTION)
    named = [(who, _named(matcher, embed(fused, probe))) for who, probe in under_option.probes]
    assert all(person in (None, under_option.people[who]) for who, person in named)
    assert sum(person is not None for _, person in named) >= len(named) // 2


def test_a_model_switch_on_the_live_sync_brings_the_kin_templates(
    under_default: OldGallery, fused: FacePipeline, option: FacePipeline
) -> None:
    live = switched_live(under_default.path, fused, option)
    assert live.own_person_ids() == set() and live.person_ids() == set(under_default.people.values())


def test_erasing_a_person_known_by_kin_templates_takes_them_out_at_once(
    under_default: OldGallery, option: FacePipeline, tmp_path: Path
) -> None:
    """Erasure through the live sync's write path (`apply`): the fallback's rows of that person go too."""
    copy = copied(under_default, tmp_path)
    with GalleryStore.open(copy) as store:
        live = switched_to(copy, option, OPTION)
        sync = GallerySync(store, live, OPTION)
        victim = next(iter(under_default.people.values()))
        with sync.writing(store) as changed:
            store.delete_person(victim, actor="test")
            changed.add(victim)
        assert victim not in live.person_ids() and len(live.person_ids()) == len(under_default.people) - 1


def test_gallery_list_under_the_option_says_who_is_matched_on_their_default_templates(
    under_default: OldGallery, tmp_path: Path
) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text(f'[models]\nembedder = "{OPTION}"\n')
    result = faceagent("gallery", "list", "--db", str(under_default.path), config=config)
    assert result.returncode == 0, result.stderr
    flagged = [line for line in result.stdout.splitlines() if f"matched on its {FUSED} templates until then" in line]
    assert len(flagged) == len(under_default.people)
    listed = faceagent("gallery", "list", "--json", "--db", str(under_default.path), config=config)
    assert json.loads(listed.stdout)["matched_on_templates_of"] == [DLIB, FUSED, PREVIOUS]


# ------------------------------------------------------------- a switch made in the settings file


def option_config(folder: Path) -> Path:
    config = folder / "faceagent.toml"
    config.write_text(f'[models]\nembedder = "{OPTION}"\n')
    return config


def test_the_chips_a_rebuild_reads_are_those_aligned_as_the_new_models_chips(models_dir: Path) -> None:
    models = ModelStore(models_dir)
    sources = rebuild_sources(models, models.specs[OPTION])
    assert DLIB in sources and FUSED in sources and "fused-dlib-mobileface-int8" in sources
    assert "mobileface-v2-int8-mixed" not in sources and "mobilefacenet-float32" not in sources  # other shapes


def test_gallery_rebuild_gives_everyone_with_kept_chips_templates_of_the_embedder_in_use(
    fused: FacePipeline, option: FacePipeline, shared_data: Path, tmp_path: Path
) -> None:
    kept = make_old_gallery(tmp_path, fused, shared_data, keep_chips=True, model_id=FUSED)
    config = option_config(tmp_path)
    result = faceagent("gallery", "rebuild", "--json", "--db", str(kept.path), config=config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "model_id": OPTION,
        "people_carried_over": 0,
        "templates_rebuilt": {FUSED: len(kept.people)},
        "people": len(kept.people),
        "people_needing_reenrollment": 0,
    }
    matcher = switched_to(kept.path, option, OPTION)
    assert matcher.own_person_ids() == set(kept.people.values())
    named = [(who, _named(matcher, embed(option, probe))) for who, probe in kept.probes]
    assert all(person in (None, kept.people[who]) for who, person in named)
    # a rebuilt chip lacks some of the 112 chip's field (docs/recognition-v2.md, section 6): near, not always above
    assert (
        sum(person is not None for _, person in named)
        >= sum(p is not None for p in kept.named_by_dlib.values()) * 3 // 4
    )
    again = faceagent("gallery", "rebuild", "--json", "--db", str(kept.path), config=config)
    assert json.loads(again.stdout)["templates_rebuilt"] == {}  # each chip once
    with GalleryStore.open(kept.path) as store:
        assert [entry["action"] for entry in store.audit_log(3)].count("templates.rebuild") >= 2


def test_gallery_rebuild_without_kept_chips_says_who_still_needs_re_enrollment(
    under_default: OldGallery, tmp_path: Path
) -> None:
    copy = copied(under_default, tmp_path)
    result = faceagent("gallery", "rebuild", "--db", str(copy), config=option_config(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "templates rebuilt for 0 people (none: no kept chip fits it)" in result.stdout
    assert f"{len(under_default.people)} people still need re-enrollment for {OPTION}" in result.stdout


def test_enroll_on_the_cli_vets_a_photo_added_to_someone_known_only_by_old_templates(
    under_default: OldGallery, tmp_path: Path
) -> None:
    copy = copied(under_default, tmp_path)
    impostor, victim = under_default.strangers[0], under_default.people[ENROLLED[0]]
    result = faceagent(
        "enroll", "--db", str(copy), "--person-id", victim, str(impostor), config=option_config(tmp_path)
    )
    assert result.returncode != 0 and "not the same person" in result.stdout + result.stderr
    with GalleryStore.open(copy) as store:
        assert victim in store.people_needing_reenrollment(OPTION)


@pytest.fixture(scope="module")
def previous() -> FacePipeline:
    return FacePipeline(PipelineOptions(embedder=PREVIOUS, threads=1))


def test_after_the_default_changed_people_enrolled_under_the_previous_one_are_named_on_their_dlib_part(
    previous: FacePipeline, fused: FacePipeline, shared_data: Path, tmp_path: Path
) -> None:
    """A device upgraded to the mixed default keeps naming everyone its previous default enrolled."""
    before = make_old_gallery(tmp_path, previous, shared_data, keep_chips=False, model_id=PREVIOUS)
    matcher = switched(before.path, fused)
    assert len(matcher) == 0 and matcher.fallback is not None and PREVIOUS in matcher.fallback.model_ids
    after = {probe: _named(matcher, embed(fused, probe)) for _, probe in before.probes}
    named_after = [probe for probe, person in after.items() if person is not None]
    assert all(after[probe] == before.people[who] for who, probe in before.probes if probe in named_after)
    assert len(named_after) >= sum(person is not None for person in before.named_by_dlib.values()) * 3 // 4
    assert [_named(matcher, embed(fused, photo)) for photo in before.strangers] == [None] * len(before.strangers)


def test_the_default_carries_the_previous_defaults_templates_and_nothing_else(models_dir: Path) -> None:
    models = ModelStore(models_dir)
    assert carried_models(models, models.specs[FUSED]) == [PREVIOUS]
    assert carried_models(models, models.specs[OPTION]) == carried_models(models, models.specs[PREVIOUS]) == []


def test_a_carried_entry_of_another_build_is_not_carried(models_copy: Path) -> None:
    """The claim is about one build: a previous default rebuilt (another sha256) would have to be measured again."""
    models = edited(models_copy, FUSED, lambda entry: entry["carries_templates_of"][0].update(sha256="0" * 64))
    assert carried_models(models, models.specs[FUSED]) == []


@pytest.mark.parametrize("listed", [{"id": PREVIOUS}, [PREVIOUS], [{"id": PREVIOUS}], [{"id": 1, "sha256": "a"}]])
def test_a_malformed_carried_list_is_refused(models_copy: Path, listed: Any) -> None:
    models = edited(models_copy, FUSED, lambda entry: entry.update(carries_templates_of=listed))
    with pytest.raises(ModelError, match="carries_templates_of"):
        carried_models(models, models.specs[FUSED])


@pytest.fixture(scope="module")
def under_previous(previous: FacePipeline, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> OldGallery:
    """A gallery the previous default enrolled, chips kept, as a device in the field holds it."""
    folder = tmp_path_factory.mktemp("previous")
    return make_old_gallery(folder, previous, shared_data, keep_chips=True, model_id=PREVIOUS)


def test_carrying_copies_each_template_once_as_it_was_made(under_previous: OldGallery, tmp_path: Path) -> None:
    copy = copied(under_previous, tmp_path)
    with GalleryStore.open(copy) as store:
        before = list(store.iter_templates(PREVIOUS))
        people, templates, negatives = store.carry_templates(PREVIOUS, FUSED)
        assert sorted(people) == sorted(under_previous.people.values()) and (templates, negatives) == (len(before), 0)
        carried = list(store.iter_templates(FUSED))
        assert [(p, n, v.tobytes()) for _, p, n, v in carried] == [(p, n, v.tobytes()) for _, p, n, v in before]
        rows = store.db.execute(
            "SELECT a.model_sha256 = b.model_sha256, a.created_at = b.created_at, a.chip = b.chip, "
            "a.source = b.source FROM templates a JOIN templates b ON a.person_id = b.person_id "
            "AND a.embedding = b.embedding WHERE a.model_id = ? AND b.model_id = ?",
            [FUSED, PREVIOUS],
        ).fetchall()
        assert rows == [(1, 1, 1, 1)] * len(before)  # the build that made it, its age, its chip, its source
        assert store.carry_templates(PREVIOUS, FUSED) == ([], 0, 0)  # everyone has templates of FUSED now
        assert store.people_needing_reenrollment(FUSED) == []


def test_carrying_leaves_people_who_have_templates_of_the_embedder_alone(
    under_previous: OldGallery, fused: FacePipeline, tmp_path: Path
) -> None:
    copy = copied(under_previous, tmp_path)
    someone = under_previous.people[ENROLLED[0]]
    with GalleryStore.open(copy) as store:
        own = embed(fused, under_previous.enrolled[ENROLLED[0]])
        store.add_template(someone, own, model_id=FUSED, model_sha256="f" * 64, quality={})
        people, _, _ = store.carry_templates(PREVIOUS, FUSED)
        assert someone not in people and len(people) == len(under_previous.people) - 1
        assert store.template_counts()[someone][FUSED] == 1


def test_carrying_takes_a_persons_live_negatives_along(under_previous: OldGallery, tmp_path: Path) -> None:
    copy = copied(under_previous, tmp_path)
    someone = under_previous.people[ENROLLED[1]]
    with GalleryStore.open(copy) as store:
        vector = np.ones(FUSED_DIMENSIONS, dtype=np.float32) / np.sqrt(FUSED_DIMENSIONS)
        store.add_negative(someone, vector, model_id=PREVIOUS, event_id="e1", ttl_days=30, cap=5)
        _, _, negatives = store.carry_templates(PREVIOUS, FUSED)
        assert negatives == 1 and [p for _, p, _ in store.negatives(FUSED)] == [someone]


def test_gallery_rebuild_after_the_default_changed_carries_everyone_over(
    under_previous: OldGallery, fused: FacePipeline, tmp_path: Path
) -> None:
    """The default takes the previous default's templates as they are (bench_fusion.py --carried-from int8: the
    same figures as its own): nobody is left to re-enroll, nothing is re-embedded, and they are named."""
    copy = copied(under_previous, tmp_path)
    defaults = tmp_path / "faceagent.toml"
    defaults.write_text("")  # the manifest's default embedder
    result = faceagent("gallery", "rebuild", "--json", "--db", str(copy), config=defaults)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "model_id": FUSED,
        "people_carried_over": len(under_previous.people),
        "templates_rebuilt": {},
        "people": 0,
        "people_needing_reenrollment": 0,
    }
    matcher = switched(copy, fused)
    assert matcher.own_person_ids() == set(under_previous.people.values())
    named = [(who, _named(matcher, embed(fused, probe))) for who, probe in under_previous.probes]
    assert all(person in (None, under_previous.people[who]) for who, person in named)
    before = sum(p is not None for p in under_previous.named_by_dlib.values())
    assert sum(person is not None for _, person in named) >= before * 3 // 4
    assert [_named(matcher, embed(fused, p)) for p in under_previous.strangers] == [None] * len(
        under_previous.strangers
    )
    with GalleryStore.open(copy) as store:
        assert [entry["action"] for entry in store.audit_log(10)].count("templates.carry") == 1
