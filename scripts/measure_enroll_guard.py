"""Adding photos to an enrolled person: does a genuine photo get in, and does someone else's stay out?

Run from the repository root, in the project venv (a minute or two):

    .venv/bin/python scripts/measure_enroll_guard.py [--people 40] [--photos 4]

Data: LFW identities under ../shared/data/faces-lfw with at least `--photos` images, sorted by name, the first
`--people`. Each identity's photos that pass the enrollment quality gate are used in file order. Every trial
runs the real `Enroller` on a fresh gallery holding one person, enrolled from their first usable photo:

- genuine: each of their other usable photos, added with `person_id` (must be accepted);
- impostor, next: the first usable photo of the next identity in the list (must be refused);
- impostor, look-alike: of every other identity's usable photos, the one nearest the person's template,
  the photo an attacker would choose (must be refused).

It also prints the distances (the gallery metric's units) and how many trials each limit would pass, the
evidence for the limit the check uses (`gallery.conflict_distance`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from agent.config import GallerySettings, Settings, with_matching
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.recognition.enrollment import Enroller, EnrollmentError
from agent.vision.pipeline import FacePipeline, PipelineOptions

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
LIMITS = (0.25, 0.30, 0.35, 0.40, 0.45, 0.50)


@dataclass
class Usable:
    person: str
    path: Path
    embedding: np.ndarray


def usable_photos(pipeline: FacePipeline, settings: Settings, folder: Path, limit: int) -> list[Usable]:
    """The photos the enrollment gate lets through, with the embedding it computes (its own `_candidate`)."""
    with tempfile.TemporaryDirectory() as scratch, GalleryStore.open(Path(scratch) / "g.db") as store:
        enroller = Enroller(pipeline, store, Matcher.for_gallery(settings.gallery), settings)
        found = []
        for path in sorted(folder.glob("*.jpg"))[:limit]:
            candidate = enroller._candidate(path.name, path)
            if not hasattr(candidate, "embedding"):
                continue
            found.append(Usable(folder.name, path, candidate.embedding))
        return found


def trial(pipeline: FacePipeline, settings: Settings, enrolled: Path, added: Path) -> tuple[bool, str | None]:
    """Enroll `enrolled` as a new person, then add `added` to them: accepted, and the reason if not."""
    with tempfile.TemporaryDirectory() as scratch:
        gallery = replace(settings.gallery, path=Path(scratch) / "g.db")
        with GalleryStore.open(gallery.path) as store:
            matcher = Matcher.for_gallery(gallery)
            enroller = Enroller(pipeline, store, matcher, replace(settings, gallery=gallery))
            person = enroller.enroll([("first", enrolled)], name="Person", actor="measure").person
            try:
                result = enroller.enroll([("added", added)], person_id=person.id, actor="measure")
            except EnrollmentError as exc:
                return False, str(exc)
            return result.templates_added == 1, result.photos[0].reason


def distance(metric: str, a: np.ndarray, b: np.ndarray) -> float:
    matcher = Matcher(metric=metric, threshold=1.0, margin=0.0)
    matcher.load([(1, "p", "p", a)])
    return matcher.search(b).distance


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--people", type=int, default=40)
    parser.add_argument("--photos", type=int, default=4, help="identities need at least this many images")
    args = parser.parse_args()
    lfw = args.data / "faces-lfw"
    if not lfw.is_dir():
        print(f"no LFW photos at {lfw}", file=sys.stderr)
        return 2
    settings = Settings(gallery=GallerySettings())
    gallery = with_matching(settings.gallery)
    pipeline = FacePipeline(PipelineOptions())
    folders = [f for f in sorted(lfw.iterdir()) if len(list(f.glob("*.jpg"))) >= args.photos]
    people: list[list[Usable]] = []
    for folder in folders:
        photos = usable_photos(pipeline, settings, folder, args.photos)
        if len(photos) >= 2:
            people.append(photos)
        if len(people) == args.people:
            break
    limits = f"conflict_distance {gallery.conflict_distance}, threshold {gallery.threshold}"
    print(f"{len(people)} identities with >= 2 usable photos (of the first {args.photos}); {gallery.metric}, {limits}")
    kinds: dict[str, list[tuple[float, bool, str | None]]] = {"genuine": [], "impostor, next": [], "look-alike": []}
    for index, photos in enumerate(people):
        first = photos[0]
        for other in photos[1:]:
            kinds["genuine"].append((distance(gallery.metric, first.embedding, other.embedding),
                                     *trial(pipeline, settings, first.path, other.path)))  # fmt: skip
        following = people[(index + 1) % len(people)][0]
        kinds["impostor, next"].append((distance(gallery.metric, first.embedding, following.embedding),
                                        *trial(pipeline, settings, first.path, following.path)))  # fmt: skip
        others = [u for j, group in enumerate(people) if j != index for u in group]
        nearest = min(others, key=lambda u: distance(gallery.metric, first.embedding, u.embedding))
        kinds["look-alike"].append((distance(gallery.metric, first.embedding, nearest.embedding),
                                    *trial(pipeline, settings, first.path, nearest.path)))  # fmt: skip
    print("\ntrials through the Enroller (gallery defaults):")
    for kind, rows in kinds.items():
        accepted = sum(ok for _, ok, _ in rows)
        print(f"  {kind:15s} {accepted:3d} accepted, {len(rows) - accepted:3d} refused of {len(rows)}")
        for reason, count in Counter(reason for _, ok, reason in rows if not ok).most_common():
            print(f"      {count:3d} refused: {reason}")
    print("\ndistance to the enrolled photo: min / median / max; trials under each limit")
    print("  " + " " * 15 + " " * 24 + "".join(f"{limit:>7.2f}" for limit in LIMITS))
    for kind, rows in kinds.items():
        d = np.array([row[0] for row in rows])
        spread = f"{d.min():.3f} / {np.median(d):.3f} / {d.max():.3f}"
        print(f"  {kind:15s} {spread:24s}" + "".join(f"{int((d < limit).sum()):>7d}" for limit in LIMITS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
