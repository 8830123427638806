"""Erasure: after `person delete`, not one 16-byte run of the person's embeddings is left in any gallery file.

Real embeddings of real LFW faces go in through the real pipeline; the test then reads the raw bytes of
the .db, -wal and -shm files. A control run with `secure_delete` off shows the probe finds deleted rows
when they linger, and that it is `secure_delete`, not a VACUUM, that removes them.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agent.gallery.store import GalleryStore
from agent.identity import new_event_id, utc_now
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline, most_central
from tests.support.agent_process import faceagent
from tests.support.data import EMBEDDER_ID as MODEL

WINDOW = 16


@dataclass(frozen=True)
class Enrolee:
    name: str
    embeddings: list[np.ndarray]
    chips: list[bytes]

    @property
    def blobs(self) -> list[bytes]:
        return [e.astype("<f4").tobytes() for e in self.embeddings]


def _embed(pipeline: FacePipeline, path: Path) -> tuple[np.ndarray, bytes]:
    frame = load_image(path)
    analysed = pipeline.analyse(frame)
    face = most_central([a.face for a in analysed], frame.shape[1], frame.shape[0])
    best = next(a for a in analysed if a.face is face)
    return best.embedding, best.chip.tobytes()


@pytest.fixture(scope="module")
def enrolees(lfw_faces: list[Path], pipeline: FacePipeline) -> list[Enrolee]:
    """The first LFW person with four photos (to be erased), then two bystanders with two photos each."""
    by_person: dict[str, list[Path]] = defaultdict(list)
    for path in lfw_faces:
        by_person[path.parent.name].append(path)
    target = next(name for name, paths in by_person.items() if len(paths) >= 4)
    others = [name for name, paths in by_person.items() if len(paths) >= 2 and name != target][:2]
    chosen = [(target, by_person[target][:4])] + [(name, by_person[name][:2]) for name in others]
    enrolees = []
    for name, paths in chosen:
        embedded = [_embed(pipeline, path) for path in paths]
        enrolees.append(Enrolee(name.replace("_", " "), [e for e, _ in embedded], [c for _, c in embedded]))
    return enrolees


def fill(store: GalleryStore, enrolees: list[Enrolee]) -> list[str]:
    """Enroll everyone with chips, plus recognition events naming them; returns their ids."""
    ids = []
    for enrolee in enrolees:
        with store.transaction():
            person = store.add_person(enrolee.name, external_ref=f"hr-{enrolee.name}-ref")
            for embedding, chip in zip(enrolee.embeddings, enrolee.chips, strict=True):
                store.add_template(person.id, embedding, model_id=MODEL, model_sha256="ab" * 32, quality={}, chip=chip)
        for _ in range(3):
            payload = {"person_id": person.id, "name": enrolee.name, "distance": 0.3}
            store.add_event(
                "face_recognized", payload, event_id=new_event_id(), person_id=person.id, created_at=utc_now()
            )
        ids.append(person.id)
    return ids


def gallery_bytes(db_path: Path) -> dict[str, bytes]:
    files = [db_path, db_path.with_name(db_path.name + "-wal"), db_path.with_name(db_path.name + "-shm")]
    return {path.name: path.read_bytes() for path in files if path.exists()}


def leaks(files: dict[str, bytes], secrets: list[bytes]) -> list[str]:
    """Every (file, secret, offset) whose 16-byte window of a secret occurs in a file."""
    found = []
    for name, data in files.items():
        for index, secret in enumerate(secrets):
            found.extend(
                f"{name}: secret {index} bytes {offset}..{offset + WINDOW}"
                for offset in range(len(secret) - WINDOW + 1)
                if secret[offset : offset + WINDOW] in data
            )
    return found


def chip_samples(chips: list[bytes], per_chip: int = 64) -> list[bytes]:
    """Textured 16-byte runs of each chip (flat runs, such as the warp's black border, occur anywhere)."""
    samples = []
    for chip in chips:
        runs = [chip[i : i + WINDOW] for i in range(0, len(chip) - WINDOW, WINDOW)]
        textured = [run for run in runs if len(set(run)) >= 12]
        samples.extend(textured[:: max(1, len(textured) // per_chip)][:per_chip])
    return samples


def test_probe_finds_the_embeddings_before_the_delete(tmp_path: Path, enrolees: list[Enrolee]) -> None:
    with GalleryStore.open(tmp_path / "g.db") as store:
        fill(store, enrolees)
        files = gallery_bytes(tmp_path / "g.db")
    blobs = enrolees[0].blobs
    assert all(any(blob in data for data in files.values()) for blob in blobs)
    assert len(leaks(files, blobs)) >= len(blobs) * (len(blobs[0]) - WINDOW + 1)


def test_delete_leaves_no_16_byte_run_of_any_embedding(tmp_path: Path, enrolees: list[Enrolee]) -> None:
    path = tmp_path / "g.db"
    with GalleryStore.open(path) as store:
        target = fill(store, enrolees)[0]
        counts = store.delete_person(target, actor="test")
        files_while_open = gallery_bytes(path)
    assert counts["templates"] == 4 and counts["chips"] == 4 and counts["events"] == 3 and counts["wal_truncated"]
    assert leaks(files_while_open, enrolees[0].blobs) == []
    assert leaks(gallery_bytes(path), enrolees[0].blobs) == []
    assert all(blob in files_while_open["g.db"] for e in enrolees[1:] for blob in e.blobs)  # the others are intact


def test_an_erasure_behind_a_long_read_is_finished_once_the_reader_is_done(
    tmp_path: Path, enrolees: list[Enrolee]
) -> None:
    """The truncating checkpoint holds the write lock while it waits for readers, so it does not wait out a
    long read (a matcher reload): the erasure stays pending and `finish_erasures` completes it later."""
    path = tmp_path / "g.db"
    with GalleryStore.open(path) as store:
        target = fill(store, enrolees)[0]
        reader = sqlite3.connect(path)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM templates").fetchone()  # a snapshot from before the erasure
        counts = store.delete_person(target, actor="test")
        still_reading = store.finish_erasures()
        reader.rollback()
        reader.close()
        finished = store.finish_erasures()
        files = gallery_bytes(path)
        pending_after = store.db.execute("SELECT COUNT(*) FROM meta WHERE key = 'erasure_in_wal'").fetchone()[0]
    assert counts["wal_truncated"] == 0 and not still_reading
    assert finished and pending_after == 0
    assert leaks(files, enrolees[0].blobs) == []


def test_delete_leaves_no_trace_of_chips_name_or_reference(tmp_path: Path, enrolees: list[Enrolee]) -> None:
    path = tmp_path / "g.db"
    with GalleryStore.open(path) as store:
        target = fill(store, enrolees)[0]
        assert leaks(gallery_bytes(path), chip_samples(enrolees[0].chips))  # control: present before
        store.delete_person(target, actor="test")
        files = gallery_bytes(path)
    assert leaks(files, chip_samples(enrolees[0].chips)) == []
    name = enrolees[0].name.encode()
    assert not any(name in data or b"hr-" + name in data for data in files.values())


def test_without_secure_delete_the_rows_would_linger(tmp_path: Path, enrolees: list[Enrolee]) -> None:
    """Control: the same erasure with secure_delete off leaves the embeddings in the file."""
    path = tmp_path / "g.db"
    with GalleryStore.open(path) as store:
        target = fill(store, enrolees)[0]
        store.db.conn.execute("PRAGMA secure_delete = OFF")
        store.delete_person(target, actor="test")
        files = gallery_bytes(path)
    assert leaks(files, enrolees[0].blobs)


def test_no_vacuum_is_needed_freed_pages_stay_but_are_zeroed(tmp_path: Path, enrolees: list[Enrolee]) -> None:
    path = tmp_path / "g.db"
    with GalleryStore.open(path) as store:
        target = fill(store, enrolees)[0]
        pages_before = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.delete_person(target, actor="test")
        freelist = store.db.execute("PRAGMA freelist_count").fetchone()[0]
        pages_after = store.db.execute("PRAGMA page_count").fetchone()[0]
        files = gallery_bytes(path)
    assert freelist > 0 and pages_after == pages_before  # the file did not shrink: no VACUUM ran
    assert leaks(files, enrolees[0].blobs) == []


@pytest.mark.slow  # the faceagent command as a real process
def test_cli_person_delete_erases_the_bytes(tmp_path: Path, enrolees: list[Enrolee]) -> None:
    path = tmp_path / "g.db"
    with GalleryStore.open(path) as store:
        target = fill(store, enrolees)[0]
    result = faceagent("person", "delete", "--db", str(path), target, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "4 templates, 3 events" in result.stdout
    assert leaks(gallery_bytes(path), enrolees[0].blobs) == []
