"""Corrections benchmark (issue 13): what `wrong_person` and `is_person` do to recognition, on real LFW photos.

Run from the repository root, in the project venv (reads bench_openset.py's embedding cache; the first run
without it embeds 7,697 images, a few minutes):

    .venv/bin/python scripts/bench_corrections.py --out /tmp/bench_corrections.json

Data: `ident_split.tsv`. For each seed, `--enrolled` gallery identities (bench_openset.py's seeded choice) are
enrolled with their gallery photo (one template each) into a real GalleryStore and a Matcher loaded from it
with the `GallerySettings` defaults (cosine, threshold 0.35, margin 0.065). Each photo stands for a decided
track of one view: its embedding is the mean a track's decision searches, and its only view.

- wrong_person: every (stranger S, enrolled P) pair where a photo of a non-enrolled identity S with 2+
  photos is named P at the defaults. The correction stores that photo's embedding as a negative of P
  (`GalleryStore.add_negative`, loaded into the Matcher as `GallerySync` does). Reported over ALL pairs:
  S's OTHER photos named P before and after, and P's own probes identified (named P and accepted) before
  and after. Each pair is corrected alone, on the gallery as enrolled.
- is_person: every probe of an enrolled P that the defaults miss (not accepted as P). The correction adds
  the probe as a template of P through `Enroller.enroll_candidates`, the path the command takes (conflict
  and mismatch checks, near-duplicates, cap; source "event"), once without and once with `force`. The
  lift: P's LATER probes (higher file number) identified before and after, over every missed probe whose
  correction was taken; the cost: stranger photos (non-enrolled identities and distractors) named P before
  and after, summed over the corrections. Each correction is undone (`delete_event_templates`) before the
  next.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import Settings, with_matching
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.identity import new_event_id
from agent.recognition.enrollment import Candidate, Enroller, EnrollmentError
from agent.vision.embedder import EmbedderInfo
from scripts.bench_openset import DEFAULT_CACHE, DEFAULT_DATA, Split, embed_all, read_split

MODEL_ID = "dlib-resnet29-int8"


@dataclass(frozen=True)
class _Embedder:
    info: EmbedderInfo


@dataclass(frozen=True)
class Bookkeeping:
    """Enroller needs only the embedder's identity here: the faces come embedded already."""

    embedder: _Embedder

    def detect(self, frame: np.ndarray) -> list:  # pragma: no cover - never called by enroll_candidates
        raise NotImplementedError

    def embed_face(self, frame: Any, face: Any) -> Any:  # pragma: no cover
        raise NotImplementedError


@dataclass
class Gallery:
    store: GalleryStore
    matcher: Matcher
    people: dict[str, str]  # identity -> person id
    identities: dict[str, str]  # person id -> identity


def enrolled_gallery(path: Path, split: Split, embeddings: dict, chosen: list[str], settings: Settings) -> Gallery:
    store = GalleryStore.open(path)
    people: dict[str, str] = {}
    with store.transaction():
        for identity in chosen:
            vector = embeddings[split.gallery[identity]]
            if vector is None:
                continue
            person = store.add_person(identity)
            store.add_template(person.id, vector, model_id=MODEL_ID, model_sha256="0" * 64, quality={})
            people[identity] = person.id
    matcher = Matcher.for_gallery(settings.gallery)
    matcher.load(store.iter_templates(MODEL_ID), negatives=store.negatives(MODEL_ID))
    return Gallery(store, matcher, people, {v: k for k, v in people.items()})


def named(matcher: Matcher, vectors: list[np.ndarray]) -> list[str | None]:
    """Who each embedding is named as (accepted), else None."""
    if not vectors:
        return []
    return [m.person_id if m.accepted else None for m in matcher.search_many(np.stack(vectors))]


def refresh(gallery: Gallery, person_id: str) -> None:
    """What GallerySync.apply does after a recorded write: the person's rows and negatives, read again."""
    store = gallery.store
    rows = store.person_templates(MODEL_ID, [person_id])
    gallery.matcher.replace_people({person_id}, rows, store.negatives(MODEL_ID, [person_id]))


def wrong_person_pairs(gallery: Gallery, split: Split, embeddings: dict, settings: Settings) -> list[dict[str, Any]]:
    results = []
    strangers = [i for i in sorted(split.probes) if i not in gallery.people]
    for stranger in strangers:
        photos = [p for p in [split.gallery[stranger], *split.probes[stranger]] if embeddings[p] is not None]
        if len(photos) < 2:
            continue
        names = named(gallery.matcher, [embeddings[p] for p in photos])
        for person_id in sorted({n for n in names if n is not None}):
            first = names.index(person_id)
            others = [embeddings[p] for i, p in enumerate(photos) if i != first]
            own = [
                embeddings[p] for p in split.probes.get(gallery.identities[person_id], []) if embeddings[p] is not None
            ]
            before_others = sum(n == person_id for n in named(gallery.matcher, others))
            before_own = sum(n == person_id for n in named(gallery.matcher, own))
            event_id = new_event_id()
            feedback = settings.feedback
            gallery.store.add_negative(
                person_id,
                embeddings[photos[first]],
                model_id=MODEL_ID,
                event_id=event_id,
                ttl_days=feedback.negative_days,
                cap=feedback.negatives_per_person,
            )
            refresh(gallery, person_id)
            after_others = sum(n == person_id for n in named(gallery.matcher, others))
            after_own = sum(n == person_id for n in named(gallery.matcher, own))
            gallery.store.db.execute("DELETE FROM negatives WHERE event_id = ?", [event_id])
            refresh(gallery, person_id)
            results.append(
                {
                    "stranger": stranger,
                    "person": gallery.identities[person_id],
                    "other_photos": len(others),
                    "others_named_before": before_others,
                    "others_named_after": after_others,
                    "own_probes": len(own),
                    "own_identified_before": before_own,
                    "own_identified_after": after_own,
                }
            )
    return results


def is_person_lift(gallery: Gallery, split: Split, embeddings: dict, enroller: Enroller, force: bool) -> dict[str, Any]:
    missed = taken = later_total = later_before = later_after = strangers_before = strangers_after = 0
    refusals: dict[str, int] = {}
    others = [i for i in sorted(split.probes) if i not in gallery.people]
    stranger_photos = [p for i in others for p in [split.gallery[i], *split.probes[i]]] + split.distractors
    strangers = [embeddings[p] for p in stranger_photos if embeddings[p] is not None]
    stranger_names = named(gallery.matcher, strangers)
    for identity, person_id in gallery.people.items():
        probes = [p for p in split.probes.get(identity, []) if embeddings[p] is not None]
        names = named(gallery.matcher, [embeddings[p] for p in probes])
        for i, (probe, name) in enumerate(zip(probes, names, strict=True)):
            if name == person_id:
                continue
            missed += 1
            later = [embeddings[p] for p in probes[i + 1 :]]
            event_id = new_event_id()
            candidate = Candidate("view 1", embeddings[probe], 1.0, {})
            try:
                enroller.enroll_candidates(
                    [candidate], actor="bench", person_id=person_id, force=force, source="event", event_id=event_id
                )
            except EnrollmentError as exc:
                reason = str(exc).split("view 1: ")[-1].split(";")[0]
                refusals[reason] = refusals.get(reason, 0) + 1
                continue
            taken += 1
            before = sum(n == person_id for n in named(gallery.matcher, later))
            refresh(gallery, person_id)
            after = sum(n == person_id for n in named(gallery.matcher, later))
            strangers_before += sum(n == person_id for n in stranger_names)
            strangers_after += sum(n == person_id for n in named(gallery.matcher, strangers))
            gallery.store.delete_event_templates(event_id)
            refresh(gallery, person_id)
            later_total += len(later)
            later_before += before
            later_after += after
    return {
        "force": force,
        "missed_probes": missed,
        "corrections_taken": taken,
        "refused": refusals,
        "later_probes": later_total,
        "later_identified_before": later_before,
        "later_identified_after": later_after,
        "strangers": len(strangers),
        # summed over the corrections taken: stranger photos named the corrected person
        "strangers_named_before": strangers_before,
        "strangers_named_after": strangers_after,
    }


def rate(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.1f}%)" if whole else f"{part}/0"


def change(what: str, counts: dict[str, int], key: str, whole: str) -> str:
    before, after = counts[f"{key}_before"], counts[f"{key}_after"]
    return f"  {what}: before {rate(before, counts[whole])}, after {rate(after, counts[whole])}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--enrolled", type=int, default=200, help="identities enrolled per seed (default 200)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)
    split = read_split(args.data / "ident_split.tsv")
    embeddings, info = embed_all(split.images(), args.data, args.cache, fresh=False)
    settings = Settings()
    gallery_settings = with_matching(settings.gallery)  # dlib's figures: the embeddings are dlib's
    print(
        f"{info['images']} images ({info['no_face']} without a face), embedder {info['embedder']}; "
        f"{args.enrolled} enrolled per seed, seeds 0..{args.seeds - 1}; defaults: {gallery_settings.metric}, "
        f"threshold {gallery_settings.threshold}, margin {gallery_settings.margin}"
    )
    pairs: list[dict[str, Any]] = []
    lifts: list[dict[str, Any]] = []
    order = sorted(split.gallery)
    with tempfile.TemporaryDirectory(prefix="bench-corrections-") as scratch:
        for seed in range(args.seeds):
            chosen = [order[i] for i in np.random.default_rng(seed).permutation(len(order))][: args.enrolled]
            gallery = enrolled_gallery(Path(scratch) / f"seed{seed}.db", split, embeddings, chosen, settings)
            info_stub = EmbedderInfo(MODEL_ID, "0" * 64, 128, gallery_settings.metric, gallery_settings.threshold)
            enroller = Enroller(
                Bookkeeping(_Embedder(info_stub)), gallery.store, gallery.matcher, settings, add_to_matcher=False
            )
            pairs += [{"seed": seed} | pair for pair in wrong_person_pairs(gallery, split, embeddings, settings)]
            lifts += [
                {"seed": seed} | is_person_lift(gallery, split, embeddings, enroller, force) for force in (False, True)
            ]
            gallery.store.close()
    total = {key: sum(p[key] for p in pairs) for key in pairs[0] if key not in ("seed", "stranger", "person")}
    print(f"\nwrong_person: {len(pairs)} stranger/enrolled pairs where a stranger's photo is named the enrolled person")
    print(change("stranger's other photos named that person", total, "others_named", "other_photos"))
    print(change("the person's own probes identified", total, "own_identified", "own_probes"))
    for force in (False, True):
        runs = [lift for lift in lifts if lift["force"] == force]
        summed = {key: sum(r[key] for r in runs) for key in runs[0] if key not in ("seed", "force", "refused")}
        refused: dict[str, int] = {}
        for run in runs:
            for reason, count in run["refused"].items():
                refused[reason] = refused.get(reason, 0) + count
        sent = "with force" if force else "as sent (checks as for photos)"
        taken = f"{summed['corrections_taken']} of {summed['missed_probes']} missed probes taken"
        print(f"\nis_person {sent}: {taken}; refused: {refused}")
        print(change("the person's later probes identified", summed, "later_identified", "later_probes"))
        print(
            f"  stranger photos named the corrected person, summed over the corrections: "
            f"before {summed['strangers_named_before']}, after {summed['strangers_named_after']} "
            f"(of {runs[0]['strangers']} stranger photos per seed, seed 0)"
        )
    if args.out:
        args.out.write_text(json.dumps({"pairs": pairs, "is_person": lifts, "embeddings": info}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
