"""Switching a device's embedder: who is still named before anyone is re-enrolled, and who after?

Run from the repository root, in the project venv (two to four minutes on a 2-core machine):

    .venv/bin/python scripts/measure_model_switch.py [--from fused-dlib-mobileface-int8]
        [--to fused-dlib-mobilefacenet] [--people 200] [--strangers 600]

Data: ../shared/data/ident_split.tsv, the first `--people` identities with a gallery photo (file order; the
photo enrolled), all their probe photos, and the first `--strangers` distractors (never enrolled). A real
gallery file is written through `GalleryStore` with one template a person of the `--from` model, the way a
device enrolled under it holds them; then the real matcher is built the way a device builds it:

- before: under `--from`, on its own templates;
- switched: under `--to`, nobody re-enrolled: only the fallback (`agent.gallery.matcher.Fallback`: the first
  member's templates, or a kin fused model's cut to that member's part) can name anyone;
- carried: under `--to`, after `carry_templates` (what the agent runs at start) copied the templates of a model
  `--to` states it carries (`carries_templates_of`), then taken out again; only for such a pair;
- rebuilt: under `--to`, after `rebuild_templates` (what a model update or `faceagent gallery rebuild` runs)
  embedded the chip kept with each person's template (`gallery.keep_chips`);
- re-enrolled: under `--to`, each person given a template of it from the same photo instead.

Each line: probes named as their own person, probes named as someone else, strangers named. The figures are
each model's stated ones (nothing set in [gallery]). The face is the most central one the detector finds; a
photo with none is left out of all three.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_openset import DEFAULT_DATA, read_split

from agent.config import GallerySettings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.gallery.sync import load_gallery
from agent.modelupdate.install import carry_templates, rebuild_sources, rebuild_templates
from agent.vision.image import load_image
from agent.vision.pipeline import FaceEmbedding, FacePipeline, PipelineOptions, most_central


def split(people: int, strangers: int) -> tuple[dict[str, Path], list[tuple[str, Path]], list[Path]]:
    """(identity -> gallery photo, (identity, probe photo) of those identities, stranger photos)."""
    ident = read_split(DEFAULT_DATA / "ident_split.tsv")
    gallery = {who: DEFAULT_DATA / photo for who, photo in list(ident.gallery.items())[:people]}
    probes = [(who, DEFAULT_DATA / photo) for who in gallery for photo in ident.probes.get(who, [])]
    return gallery, probes, [DEFAULT_DATA / photo for photo in ident.distractors[:strangers]]


def embed_all(pipeline: FacePipeline, photos: list[Path]) -> dict[Path, FaceEmbedding]:
    found = {}
    for photo in photos:
        frame = load_image(photo)
        face = most_central(pipeline.detect(frame), frame.shape[1], frame.shape[0])
        if face is not None:
            found[photo] = pipeline.embed_face(frame, face)
    return found


def score(
    matcher: Matcher,
    faces: dict[Path, FaceEmbedding],
    probes: list[tuple[str, Path]],
    strangers: list[Path],
    ids: dict[str, str],
) -> str:
    vectors = {photo: face.embedding for photo, face in faces.items()}
    usable = [(who, photo) for who, photo in probes if photo in vectors]
    found = matcher.search_many(np.stack([vectors[photo] for _, photo in usable]))
    right = sum(m.accepted and m.person_id == ids[who] for (who, _), m in zip(usable, found, strict=True))
    wrong = sum(m.accepted and m.person_id != ids[who] for (who, _), m in zip(usable, found, strict=True))
    others = [photo for photo in strangers if photo in vectors]
    named = sum(m.accepted for m in matcher.search_many(np.stack([vectors[photo] for photo in others])))
    return (
        f"probes named right {right}/{len(usable)} ({100 * right / len(usable):.1f}%), "
        f"wrong {wrong} ({100 * wrong / len(usable):.2f}%); strangers named {named}/{len(others)} "
        f"({100 * named / len(others):.2f}%)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="old", default="fused-dlib-mobileface-int8")
    parser.add_argument("--to", dest="new", default="fused-dlib-mobilefacenet")
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--strangers", type=int, default=600)
    args = parser.parse_args()
    if not (DEFAULT_DATA / "ident_split.tsv").is_file():
        print(f"skipped: {DEFAULT_DATA} is absent (the labelled photos live beside the checkout)")
        return 0
    gallery, probes, strangers = split(args.people, args.strangers)
    photos = [*gallery.values(), *(photo for _, photo in probes), *strangers]
    old, new = (FacePipeline(PipelineOptions(embedder=model, threads=2)) for model in (args.old, args.new))
    old_faces, new_faces = embed_all(old, photos), embed_all(new, photos)
    enrolled = {who: photo for who, photo in gallery.items() if photo in old_faces and photo in new_faces}
    print(f"{len(enrolled)} people enrolled under {args.old}, {len(probes)} probes, {len(strangers)} strangers")
    with tempfile.TemporaryDirectory() as folder, GalleryStore.open(Path(folder) / "gallery.db") as store:
        ids = {who: store.add_person(who).id for who in enrolled}
        info = old.embedder.info
        for who, photo in enrolled.items():
            face = old_faces[photo]
            chip = face.chip.tobytes()
            store.add_template(
                ids[who], face.embedding, model_id=info.model_id, model_sha256=info.sha256, quality={}, chip=chip
            )

        def report(label: str, pipeline: FacePipeline, faces: dict[Path, FaceEmbedding]) -> None:
            matcher = Matcher.for_gallery(GallerySettings(), pipeline.embedder)
            load_gallery(matcher, store, pipeline.embedder.info.model_id)
            fallback = f" (fallback on {', '.join(matcher.fallback.model_ids)})" if matcher.fallback else ""
            figures = score(matcher, faces, probes, strangers, ids)
            print(f"{label:11} {pipeline.embedder.info.model_id}: {figures}{fallback}")

        def drop_new_templates() -> None:
            for template_id, person_id, _, _ in store.person_templates(new_info.model_id, ids.values()):
                store.delete_templates(person_id, [template_id])

        report("before", old, old_faces)
        report("switched", new, new_faces)
        new_info = new.embedder.info
        new_spec = new.store.spec(new_info.model_id, "embedder")
        if carry_templates(store, new.store, new_spec, "measure_model_switch"):
            report("carried", new, new_faces)
            drop_new_templates()  # the copies out: the rebuild starts from the switch
        for old_id in rebuild_sources(new.store, new_spec):
            rebuild_templates(store, new.embedder, old_id, "measure_model_switch")
        report("rebuilt", new, new_faces)
        drop_new_templates()  # the rebuilt templates out, the photo's in
        for who, photo in enrolled.items():
            face = new_faces[photo]
            store.add_template(
                ids[who], face.embedding, model_id=new_info.model_id, model_sha256=new_info.sha256, quality={}
            )
        report("re-enrolled", new, new_faces)
    return 0


if __name__ == "__main__":
    sys.exit(main())
