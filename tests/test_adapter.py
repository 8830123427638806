"""Adaptation wired (`agent/service/adapter.py`): a recognized track's event offered from the frame loop, decided and
stored on the gallery thread's parts: a real gallery file, the live matcher following it, real faces (Colin
Powell enrolled from three photos, George W. Bush and Tony Blair the others)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from agent.config import BUILT_IN_MATCHING, FeedbackSettings, RetentionSettings, Settings
from agent.gallery.matcher import Matcher
from agent.gallery.retention import RetentionKeeper
from agent.gallery.store import GalleryStore
from agent.gallery.sync import GallerySync
from agent.identity import Match
from agent.recognition.events import build_event
from agent.recognition.feedback import FeedbackWindow
from agent.recognition.quality import view_score
from agent.service.adapter import ACTOR, CORRECTED, MAX_PENDING, Adapter
from agent.service.gallerythread import GalleryParts
from agent.service.jobs import JobQueue
from agent.tracking.decision import decide
from agent.tracking.tracker import Track
from agent.vision.detector import Face
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline, PipelineOptions, most_central
from agent.wire import FaceEvent
from tests.support.data import EMBEDDER_ID, POWELL

SHA = "0" * 64
# Adaptation on, with a diversity window Powell 0095 falls in (the default adapt_min_distance 0.3 refuses it).
ON = dataclasses.replace(
    Settings(), gallery=dataclasses.replace(Settings().gallery, adapt=True, adapt_min_distance=0.15)
)
T0 = datetime(2025, 1, 1, tzinfo=UTC)
View = tuple[Face, np.ndarray]


@pytest.fixture(scope="module")
def views(shared_data: Path) -> dict[str, View]:
    """Photo name -> (its face, its dlib embedding): the window above is in dlib's space (EMBEDDER_ID's)."""
    pipeline = FacePipeline(PipelineOptions(embedder=EMBEDDER_ID, threads=1))
    names = [f"Colin_Powell_{n}" for n in (*POWELL, "0095")] + ["George_W_Bush_0007", "Tony_Blair_0032"]
    found = {}
    for name in names:
        rgb = load_image(shared_data / "faces-lfw" / name.rsplit("_", 1)[0] / f"{name}.jpg")
        face = most_central(pipeline.detect(rgb), rgb.shape[1], rgb.shape[0])
        assert face is not None, name
        found[name] = (face, pipeline.embed_face(rgb, face).embedding)
    return found


@pytest.fixture
def parts(tmp_path: Path, views: dict[str, View]) -> Iterator[GalleryParts]:
    """The gallery thread's parts: Powell, Bush and Blair in the file, the matcher loaded from it."""
    store = GalleryStore.open(tmp_path / "gallery.db")
    enrolled = {"Colin Powell": [f"Colin_Powell_{n}" for n in POWELL]}
    enrolled |= {"George W Bush": ["George_W_Bush_0007"], "Tony Blair": ["Tony_Blair_0032"]}
    for name, photos in enrolled.items():
        person = store.add_person(name)
        for photo in photos:
            store.add_template(person.id, views[photo][1], model_id=EMBEDDER_ID, model_sha256=SHA, quality={})
    sync = GallerySync(store, Matcher.for_gallery(ON.gallery), EMBEDDER_ID)
    assert sync.reload()
    yield GalleryParts(store, sync, RetentionKeeper(store, RetentionSettings()))
    store.close()


def decided(parts: GalleryParts, *photos: View) -> tuple[Track, FaceEvent]:
    """A track of these views, decided on the live matcher as the recognizer decides, and its event."""
    track = Track(id=1, face=photos[0][0], first_frame=1, last_frame=1, first_seen=T0, last_seen=T0)
    for index, (face, embedding) in enumerate(photos):
        track.face = face
        track.add_embedding(embedding, view_score(face, ON.quality), index)
    track.decision = decide(track.embeddings, parts.sync.matcher, BUILT_IN_MATCHING.track_threshold)
    return track, build_event(track, track.decision, camera_id="door", model_id=EMBEDDER_ID, at=T0)


def powell_id(parts: GalleryParts) -> str:
    return next(p.id for p in parts.store.list_people() if p.name == "Colin Powell")


def adaptive_rows(parts: GalleryParts) -> list[tuple]:
    sql = "SELECT id, person_id, event_id FROM templates WHERE source = 'adaptive' ORDER BY id"
    return [tuple(row) for row in parts.store.db.execute(sql)]


@dataclass
class Offer:
    """Colin Powell's 0095 as a decided track and its event, and an adapter on a gallery thread's queue of jobs."""

    jobs: JobQueue[GalleryParts]
    adapter: Adapter
    track: Track
    match: Match
    event: FaceEvent

    def send(self, **changes: str) -> None:
        """From the frame loop: offer the track (its event with `changes`)."""
        self.adapter.offer(self.track, self.match, cast(FaceEvent, self.event | changes), SHA)


def offer(
    parts: GalleryParts, views: dict[str, View], settings: Settings = ON, window: FeedbackWindow | None = None
) -> Offer:
    jobs: JobQueue[GalleryParts] = JobQueue("the gallery thread")
    track, event = decided(parts, views["Colin_Powell_0095"])
    assert track.decision is not None and track.decision.person_id == powell_id(parts)
    return Offer(jobs, Adapter(jobs, lambda: settings, window), track, track.decision, event)


def test_a_recognized_track_becomes_an_adaptive_template_on_the_gallery_thread(
    parts: GalleryParts, views: dict[str, View]
) -> None:
    powell = offer(parts, views)
    powell.send()
    assert adaptive_rows(parts) == []  # the frame loop only queued it
    assert powell.jobs.run_pending(parts) == 1
    ((template_id, person_id, event_id),) = adaptive_rows(parts)
    assert (person_id, event_id, powell.adapter.added) == (powell_id(parts), powell.event["event_id"], 1)
    assert template_id in parts.sync.matcher.templates_of(person_id)[0].tolist()  # the live matcher holds it
    (audit,) = [entry for entry in parts.store.audit_log() if entry["action"] == "template.adapt"]
    assert (audit["actor"], audit["target"]) == (ACTOR, person_id)


def test_with_adaptation_off_nothing_is_queued(parts: GalleryParts, views: dict[str, View]) -> None:
    powell = offer(parts, views, Settings())
    powell.send()
    assert powell.jobs.run_pending(parts) == 0 and adaptive_rows(parts) == []


def test_a_track_corrected_before_its_job_runs_adds_nothing(parts: GalleryParts, views: dict[str, View]) -> None:
    window = FeedbackWindow(FeedbackSettings())
    powell = offer(parts, views, window=window)
    window.record(powell.track, powell.match, powell.event, metric="cosine", quality=ON.quality)
    powell.send()
    window.mark_wrong(powell.event["event_id"])  # wrong_person, before the gallery thread got to it
    powell.jobs.run_pending(parts)
    assert adaptive_rows(parts) == [] and powell.adapter.added == 0


def test_a_correction_committed_while_the_job_runs_stops_its_write(
    parts: GalleryParts, views: dict[str, View], tmp_path: Path
) -> None:
    """wrong_person's transaction commits on the command worker's connection after the job looked at the window
    (which `wrong_person` marks only after its commit): the job's own transaction sees its negative."""
    window = FeedbackWindow(FeedbackSettings())
    powell = offer(parts, views, window=window)
    window.record(powell.track, powell.match, powell.event, metric="cosine", quality=ON.quality)
    powell.send()
    event_id, person_id = powell.event["event_id"], powell_id(parts)
    worker = GalleryStore.open(tmp_path / "gallery.db")
    try:
        with worker.transaction():  # what wrong_person writes, before it marks the window
            mean = np.mean(powell.track.embeddings, axis=0)
            worker.add_negative(person_id, mean, model_id=EMBEDDER_ID, event_id=event_id, ttl_days=1, cap=5)
            worker.delete_event_templates(event_id, person_id=person_id)
    finally:
        worker.close()
    assert powell.jobs.run_pending(parts) == 1
    assert adaptive_rows(parts) == [] and powell.adapter.added == 0
    assert powell.adapter.refused == {CORRECTED: 1}


def test_a_track_of_an_embedder_no_longer_matched_adds_nothing(parts: GalleryParts, views: dict[str, View]) -> None:
    powell = offer(parts, views)
    powell.send(model_id="older-embedder")
    powell.jobs.run_pending(parts)
    assert adaptive_rows(parts) == []


def test_at_the_cap_the_oldest_adaptive_template_goes_in_the_same_write(
    parts: GalleryParts, views: dict[str, View]
) -> None:
    person = powell_id(parts)
    near_enrollment = views[f"Colin_Powell_{POWELL[0]}"][1] * 1.01
    old = parts.store.add_template(
        person, near_enrollment, model_id=EMBEDDER_ID, model_sha256=SHA, quality={}, source="adaptive", event_id="E0"
    )
    assert parts.sync.reload()
    powell = offer(parts, views, dataclasses.replace(ON, gallery=dataclasses.replace(ON.gallery, adapt_templates=1)))
    powell.send()
    powell.jobs.run_pending(parts)
    assert powell.adapter.added == 1, powell.adapter.refused
    ((template_id, _, event_id),) = adaptive_rows(parts)
    assert template_id != old and event_id == powell.event["event_id"]
    assert old not in parts.sync.matcher.templates_of(person)[0].tolist()


def test_offers_beyond_what_the_gallery_thread_has_queued_are_dropped(
    parts: GalleryParts, views: dict[str, View]
) -> None:
    powell = offer(parts, views)
    for _ in range(MAX_PENDING + 3):
        powell.send()
    assert powell.adapter.dropped == 3 and powell.jobs.run_pending(parts) == MAX_PENDING
    powell.send()  # the queue has room again
    assert powell.adapter.dropped == 3 and powell.jobs.run_pending(parts) == 1


def test_listing_and_status_count_adaptive_templates(parts: GalleryParts, views: dict[str, View]) -> None:
    powell = offer(parts, views)
    powell.send()
    powell.jobs.run_pending(parts)
    listing = {row["name"]: row for row in parts.store.listing(EMBEDDER_ID)["people"]}
    assert listing["Colin Powell"]["templates"] == {EMBEDDER_ID: 4}
    assert listing["Colin Powell"]["adaptive_templates"] == {EMBEDDER_ID: 1}
    assert listing["Tony Blair"]["adaptive_templates"] == {}
    assert parts.store.count_adaptive() == 1


def test_deleting_templates_leaves_other_peoples_alone(parts: GalleryParts) -> None:
    people = {p.name: p.id for p in parts.store.list_people()}
    blairs = [t for t, person, _, _ in parts.store.iter_templates(EMBEDDER_ID) if person == people["Tony Blair"]]
    assert parts.store.delete_templates(people["Colin Powell"], blairs) == 0
    assert parts.store.delete_templates(people["Tony Blair"], blairs) == 1


def test_adaptive_counts_come_from_the_index_alone(parts: GalleryParts) -> None:
    """The cap's lookup, list_people's and the status's counts never read template rows (embeddings)."""
    store, person = parts.store, powell_id(parts)
    queries = {
        "cap": lambda: store.adaptive_templates(person, EMBEDDER_ID),
        "listing": lambda: store.listing(EMBEDDER_ID),
        "page": lambda: store.listing(EMBEDDER_ID, offset=0, limit=10),
        "status": store.count_adaptive,
    }
    for name, query in queries.items():
        statements: list[str] = []
        store.db.conn.set_trace_callback(statements.append)
        try:
            query()
        finally:
            store.db.conn.set_trace_callback(None)
        for sql in (s for s in statements if "source = 'adaptive'" in s):
            plan = [row[3] for row in store.db.conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
            assert all("COVERING INDEX" in step for step in plan if "templates" in step), (name, sql, plan)
