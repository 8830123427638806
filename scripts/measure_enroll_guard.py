"""Adding photos to an enrolled person: does a genuine photo get in, and does someone else's stay out? And what
is a near-copy of a photo in the embedder's space?

Run from the repository root, in the project venv (a minute or two per embedder):

    .venv/bin/python scripts/measure_enroll_guard.py [--people 40] [--photos 4] [--embedder ID]

Data: LFW identities under ../shared/data/faces-lfw with at least `--photos` images, sorted by name, the first
`--people`. Each identity's photos that pass the enrollment quality gate are used in file order. Every trial
runs the real `Enroller` (the manifest's default embedder, or `--embedder`, with the figures it states) on a
fresh gallery holding one person, enrolled from their first usable photo:

- genuine: each of their other usable photos, added with `person_id` (must be accepted);
- impostor, next: the first usable photo of the next identity in the list (must be refused);
- impostor, look-alike: of every other identity's usable photos, the one nearest the person's template,
  the photo an attacker would choose (must be refused).

It prints the distances (the gallery metric's units) and how many trials each limit would pass, the evidence
for the limit the check uses (`gallery.conflict_distance`): the limits are the embedder's conflict distance
scaled by the ratios that bracket dlib's 0.35 with 0.25-0.50. The rule that chose both embedders' figures: the
largest limit on that grid at which no look-alike gets in (dlib: 0.35, its gallery threshold).

Near-copies (`gallery.duplicate_distance`): each person's first usable photo re-encoded as JPEG quality 60 and
downscaled to 80% (what a re-sent or re-cropped copy of the same photo looks like), embedded again; printed with
the distance from each genuine photo to its nearest other photo of the same person. The rule: the duplicate
distance must lie above every near-copy's distance and below every genuine other photo's.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from agent.config import GallerySettings, Settings, matching, with_matching
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.recognition.enrollment import Candidate, Enroller, EnrollmentError
from agent.vision.pipeline import FacePipeline, PipelineOptions

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
RATIOS = (0.25 / 0.35, 0.30 / 0.35, 1.0, 0.40 / 0.35, 0.45 / 0.35, 0.50 / 0.35)  # dlib's grid around its 0.35
COPY_QUALITY, COPY_SCALE = 60, 0.8


@dataclass
class Usable:
    person: str
    path: Path
    embedding: np.ndarray


def usable_photos(pipeline: FacePipeline, settings: Settings, folder: Path, limit: int) -> list[Usable]:
    """The photos the enrollment gate lets through, with the embedding it computes (its own `_candidate`)."""
    with tempfile.TemporaryDirectory() as scratch, GalleryStore.open(Path(scratch) / "g.db") as store:
        enroller = Enroller(pipeline, store, Matcher.for_gallery(settings.gallery, pipeline.embedder), settings)
        found = []
        for path in sorted(folder.glob("*.jpg"))[:limit]:
            candidate = enroller._candidate(path.name, path)
            if not isinstance(candidate, Candidate) or candidate.refusal is not None:  # the gate's refusals too
                continue
            found.append(Usable(folder.name, path, candidate.embedding))
        return found


def trial(pipeline: FacePipeline, settings: Settings, enrolled: Path, added: Path) -> tuple[bool, str | None]:
    """Enroll `enrolled` as a new person, then add `added` to them: accepted, and the reason if not."""
    with tempfile.TemporaryDirectory() as scratch:
        gallery = replace(settings.gallery, path=Path(scratch) / "g.db")
        with GalleryStore.open(gallery.path) as store:
            matcher = Matcher.for_gallery(gallery, pipeline.embedder)
            enroller = Enroller(pipeline, store, matcher, replace(settings, gallery=gallery))
            person = enroller.enroll([("first", enrolled)], name="Person", actor="measure").person
            try:
                result = enroller.enroll([("added", added)], person_id=person.id, actor="measure")
            except EnrollmentError as exc:
                return False, str(exc)
            return result.templates_added == 1, result.photos[0].reason


def near_copy(pipeline: FacePipeline, settings: Settings, photo: Usable) -> np.ndarray | None:
    """The embedding of `photo` re-encoded (JPEG quality COPY_QUALITY) and downscaled to COPY_SCALE, as the
    enrollment gate computes it; None if the copy no longer passes the gate."""
    with Image.open(photo.path) as image:
        rgb = image.convert("RGB")
        rgb = rgb.resize((round(rgb.width * COPY_SCALE), round(rgb.height * COPY_SCALE)), Image.Resampling.BILINEAR)
    encoded = io.BytesIO()
    rgb.save(encoded, "JPEG", quality=COPY_QUALITY)
    with tempfile.TemporaryDirectory() as scratch, GalleryStore.open(Path(scratch) / "g.db") as store:
        enroller = Enroller(pipeline, store, Matcher.for_gallery(settings.gallery, pipeline.embedder), settings)
        candidate = enroller._candidate("copy", encoded.getvalue())
    return candidate.embedding if isinstance(candidate, Candidate) and candidate.refusal is None else None


def distance(metric: str, a: np.ndarray, b: np.ndarray) -> float:
    matcher = Matcher(metric=metric, threshold=1.0, margin=0.0)
    matcher.load([(1, "p", "p", a)])
    return matcher.search(b).distance


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--people", type=int, default=40)
    parser.add_argument("--photos", type=int, default=4, help="identities need at least this many images")
    parser.add_argument("--embedder", help="manifest id (default: the manifest's default embedder)")
    args = parser.parse_args()
    lfw = args.data / "faces-lfw"
    if not lfw.is_dir():
        print(f"no LFW photos at {lfw}", file=sys.stderr)
        return 2
    settings = Settings(gallery=GallerySettings())
    pipeline = FacePipeline(PipelineOptions(embedder=args.embedder))
    info = pipeline.embedder.info
    figures = matching(settings.gallery, info.gallery, info.model_id)  # what the Enroller resolves
    gallery = with_matching(settings.gallery, figures)
    limits_grid = [round(gallery.conflict_distance * ratio, 4) for ratio in RATIOS]
    for key in ("conflict_distance", "duplicate_distance"):
        print(f"embedder {info.model_id}: {key} {getattr(figures, key):g} ({figures.sources[key]})")
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
    print("  " + " " * 15 + " " * 24 + "".join(f"{limit:>7.3f}" for limit in limits_grid))
    for kind, rows in kinds.items():
        d = np.array([row[0] for row in rows])
        spread = f"{d.min():.3f} / {np.median(d):.3f} / {d.max():.3f}"
        print(f"  {kind:15s} {spread:24s}" + "".join(f"{int((d < limit).sum()):>7d}" for limit in limits_grid))
    copies = [near_copy(pipeline, settings, photos[0]) for photos in people]
    pairs = [(p[0].embedding, c) for p, c in zip(people, copies, strict=True) if c is not None]
    copied = np.array([distance(gallery.metric, a, b) for a, b in pairs])
    own = [(u, [v for v in photos if v is not u]) for photos in people for u in photos]
    nearest_own = np.array([min(distance(gallery.metric, u.embedding, v.embedding) for v in rest) for u, rest in own])
    print(f"\nnear-copies (JPEG q{COPY_QUALITY}, {COPY_SCALE:.0%} size) of {len(copied)} first photos, and")
    print(f"every usable photo's nearest other photo of the same person ({len(nearest_own)}): min / median / max")
    for label, d in (("near-copy", copied), ("nearest own", nearest_own)):
        spread = f"{d.min():.3f} / {np.median(d):.3f} / {d.max():.3f}"
        under = int((d < gallery.duplicate_distance).sum())
        print(f"  {label:15s} {spread:24s} under duplicate_distance {gallery.duplicate_distance:g}: {under}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
