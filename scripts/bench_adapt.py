"""Templates that keep up (`gallery.adapt`): recognition with and without adaptation, and the drift guard.

Run from the repository root, in the project venv (embeddings come from bench_openset.py's cache, made on the
first run of either script: a few minutes):

    .venv/bin/python scripts/bench_adapt.py --out /tmp/bench_adapt.json

Data: the LFW photos in ../shared/data (PROVENANCE.md), each image's most central face embedded by the
agent's pipeline. LFW files are numbered Name_0001.jpg, Name_0002.jpg, ...: that order stands for time.

Stream: every identity with at least `--min-photos` photos is enrolled from its first `--enroll` photo(s); its
later photos arrive in file order, cut into tracks of 1-3 photos (sizes drawn per seed), interleaved at random
with the other people's tracks and with strangers' tracks: identities that are not enrolled, each one's
photos in tracks of 1-3 as well. Half the strangers (alternate identities in name order) are streamed; the
other half are held out and searched only at the end, against the gallery the stream left. A track is
decided as the recognizer decides (`decide`: the mean embedding, `gallery.track_threshold`), and with
adaptation on its decision goes through the policy (`agent.recognition.adaptation.consider`; the photos
carry no detector output, so every view scores 1.0 and the first qualifying one is taken) and what it
accepts goes into the matcher at once. Figures per run: identification rate (the right person named) over
all genuine tracks and over the later half of each person's tracks, wrong names, stranger FPR over the
streamed and the held-out stranger tracks, the adaptive templates added (and how many went to the wrong
person), and the refusals by reason. Seeds vary the track cuts and the interleaving.

Wrong feed (the drift guard): for each enrolled person A, B is the enrolled person nearest A (enrollment
templates). B's later photos are split in two: the first half is fed in tracks as if decided for A with an
infinite margin, the second half is then searched. Reported: B's held-out tracks named A (A has drifted
to B), A's and B's own tracks still named right, and the fed templates taken, for the policy with the guard
(the settings as given), without it (`adapt_guard_distance` 0: no per-view guard, no centroid check), with
the guard alone (no distance window: `adapt_min_distance` 0, `adapt_max_distance` 4), and with no policy
at all (every fed track's first view taken). The same with B not enrolled (a stranger's photos fed as A).

Embedder: the manifest's default (the one the cache was embedded with); the settings start from the figures it
states (its manifest entry's `gallery`, else dlib's built-in ones), so a fused default is judged on its own.

`--sweep` varies one setting at a time around the given ones, by the same ratios for every embedder (SWEEP:
around dlib's figures, the values that tuned them; around another embedder's stated ones, what fitted those).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bench_openset import DEFAULT_CACHE, DEFAULT_DATA, embed_all, read_split

from agent.config import GallerySettings, matching, with_matching
from agent.gallery.matcher import Matcher
from agent.identity import Match
from agent.recognition.adaptation import AdaptiveTemplate, RecognizedTrack, consider
from agent.tracking.decision import decide
from agent.vision.embedder import stated_gallery
from agent.vision.modelstore import ModelStore

Vector = np.ndarray


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class People:
    """Each identity's embedded photos in file (time) order, and who is enrolled or a stranger."""

    photos: dict[str, list[Vector]]
    enrolled: list[str]  # at least min_photos photos with a face
    streamed_strangers: list[str]
    held_out_strangers: list[str]


def load_people(data: Path, cache: Path, min_photos: int, enroll: int) -> People:
    split = read_split(data / "ident_split.tsv")
    embeddings, _ = embed_all(split.images(), data, cache, False)
    by_identity: dict[str, list[str]] = {}
    for image in split.images():
        by_identity.setdefault(Path(image).parent.name, []).append(image)
    photos = {
        identity: [embeddings[image] for image in sorted(images) if embeddings[image] is not None]
        for identity, images in by_identity.items()
    }
    enrolled = sorted(i for i, p in photos.items() if len(p) >= min_photos and len(p) > enroll)
    strangers = sorted(i for i, p in photos.items() if i not in set(enrolled) and p)
    return People(photos, enrolled, strangers[0::2], strangers[1::2])


def cut_tracks(photos: Sequence[Vector], rng: np.random.Generator) -> list[list[Vector]]:
    """Consecutive photos in tracks of 1-3."""
    tracks, start = [], 0
    while start < len(photos):
        size = int(rng.integers(1, 4))
        tracks.append(list(photos[start : start + size]))
        start += size
    return tracks


@dataclass
class Gallery:
    """The matcher and, beside it, what the store would know: each template's vector and which are adaptive."""

    matcher: Matcher
    rows: dict[str, list[tuple[int, Vector]]] = field(default_factory=dict)
    adaptive: dict[str, list[int]] = field(default_factory=dict)  # oldest first
    next_id: int = 0

    @classmethod
    def enrolled(cls, people: People, who: Sequence[str], enroll: int, settings: GallerySettings) -> Gallery:
        gallery = cls(Matcher.for_gallery(settings))
        for identity in who:
            for vector in people.photos[identity][:enroll]:
                gallery.add(identity, vector)
        return gallery

    def add(self, identity: str, vector: Vector) -> int:
        template_id, self.next_id = self.next_id, self.next_id + 1
        self.rows.setdefault(identity, []).append((template_id, vector))
        self.matcher.add(template_id, identity, identity, vector)
        return template_id

    def adapt(self, update: AdaptiveTemplate) -> None:
        person = update.person_id
        kept = [(t, v) for t, v in self.rows[person] if t not in update.replaces]
        template_id, self.next_id = self.next_id, self.next_id + 1
        self.rows[person] = [*kept, (template_id, update.embedding)]
        self.matcher.replace_people([person], [(t, person, person, v) for t, v in self.rows[person]])
        adaptive = [t for t in self.adaptive.get(person, []) if t not in update.replaces]
        self.adaptive[person] = [*adaptive, template_id]


# ------------------------------------------------------------------------------------------------ stream


@dataclass
class StreamFigures:
    genuine: int = 0
    identified: int = 0
    later: int = 0  # genuine tracks in the later half of their person's stream
    later_identified: int = 0
    wrong: int = 0  # a genuine track named as someone else
    strangers: int = 0
    strangers_accepted: int = 0
    held_out: int = 0
    held_out_accepted: int = 0
    added: int = 0
    added_wrong: int = 0  # an adaptive template given to someone it does not show
    refusals: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        return {
            "identification_rate": self.identified / self.genuine,
            "later_half_identification_rate": self.later_identified / self.later,
            "wrong_name_rate": self.wrong / self.genuine,
            "stranger_fpr_streamed": self.strangers_accepted / self.strangers,
            "stranger_fpr_held_out": self.held_out_accepted / self.held_out,
            "identified_tracks": self.identified,
            "strangers_accepted_streamed": self.strangers_accepted,
            "strangers_accepted_held_out": self.held_out_accepted,
            "genuine_tracks": self.genuine,
            "stranger_tracks_streamed": self.strangers,
            "stranger_tracks_held_out": self.held_out,
            "templates_added": self.added,
            "templates_added_to_wrong_person": self.added_wrong,
            "refusals": dict(self.refusals.most_common()),
        }


def run_stream(people: People, settings: GallerySettings, enroll: int, seed: int, adapt: bool) -> StreamFigures:
    rng = np.random.default_rng(seed)
    gallery = Gallery.enrolled(people, people.enrolled, enroll, settings)
    arrivals: list[tuple[float, str, bool, int, int, list[Vector]]] = []  # time, who, genuine, index, count, views
    for identity in people.enrolled:
        tracks = cut_tracks(people.photos[identity][enroll:], rng)
        times = np.sort(rng.random(len(tracks)))
        arrivals += [(t, identity, True, i, len(tracks), v) for i, (t, v) in enumerate(zip(times, tracks, strict=True))]
    for identity in people.streamed_strangers:
        tracks = cut_tracks(people.photos[identity], rng)
        times = np.sort(rng.random(len(tracks)))
        arrivals += [
            (t, identity, False, i, len(tracks), v) for i, (t, v) in enumerate(zip(times, tracks, strict=True))
        ]
    arrivals.sort(key=lambda arrival: arrival[0])
    figures = StreamFigures()
    for _, identity, genuine, index, count, views in arrivals:
        match = decide(views, gallery.matcher, settings.track_threshold)
        if genuine:
            right = match.accepted and match.person_id == identity
            figures.genuine += 1
            figures.identified += right
            figures.wrong += match.accepted and match.person_id != identity
            if 2 * index >= count:
                figures.later += 1
                figures.later_identified += right
        else:
            figures.strangers += 1
            figures.strangers_accepted += match.accepted
        if adapt and match.accepted and match.person_id is not None:
            decided = RecognizedTrack(match, views, [1.0] * len(views))
            outcome = consider(decided, gallery.matcher, gallery.adaptive.get(match.person_id, []), settings)
            if isinstance(outcome, AdaptiveTemplate):
                gallery.adapt(outcome)
                figures.added += 1
                figures.added_wrong += outcome.person_id != identity
            else:
                figures.refusals[outcome.reason] += 1
    for identity in people.held_out_strangers:
        for views in cut_tracks(people.photos[identity], rng):
            figures.held_out += 1
            figures.held_out_accepted += decide(views, gallery.matcher, settings.track_threshold).accepted
    return figures


def stream_comparison(people: People, settings: GallerySettings, enroll: int, seeds: int) -> dict[str, Any]:
    """Without and with adaptation, per seed and averaged."""
    result: dict[str, Any] = {}
    for label, adapt in (("without", False), ("with", True)):
        runs = [run_stream(people, settings, enroll, seed, adapt).summary() for seed in range(seeds)]
        result[label] = {"runs": runs, "mean": _mean(runs)}
    return result


def _mean(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        key: float(np.mean([run[key] for run in runs])) for key, value in runs[0].items() if not isinstance(value, dict)
    }


# ---------------------------------------------------------------------------------------------- wrong feed


def nearest_enrolled(people: People, enroll: int, settings: GallerySettings) -> dict[str, str]:
    """Each enrolled person's nearest other enrolled person, by their enrollment templates."""
    gallery = Gallery.enrolled(people, people.enrolled, enroll, settings)
    pairs = {}
    for identity in people.enrolled:
        _, own = gallery.matcher.templates_of(identity)
        best = min(
            (other for other in people.enrolled if other != identity),
            key=lambda other: float(
                np.linalg.norm(own[:, None, :] - gallery.matcher.templates_of(other)[1][None, :, :], axis=2).min()
            ),
        )
        pairs[identity] = best
    return pairs


@dataclass
class FeedFigures:
    pairs: int = 0
    fed_views: int = 0
    taken: int = 0
    probes_b: int = 0
    b_named_a: int = 0
    pairs_drifted: int = 0  # A names at least one of B's held-out tracks
    probes_a: int = 0
    a_named_a: int = 0
    a_named_a_before: int = 0
    b_named_a_before: int = 0
    b_named_b_before: int = 0
    b_named_b: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "fed_views": self.fed_views,
            "fed_templates_taken": self.taken,
            "b_held_out_named_a_before": self.b_named_a_before / self.probes_b,
            "b_held_out_named_a_after": self.b_named_a / self.probes_b,
            "pairs_where_a_names_b": self.pairs_drifted,
            "a_identified_before": self.a_named_a_before / self.probes_a,
            "a_identified_after": self.a_named_a / self.probes_a,
            "b_identified_before": self.b_named_b_before / self.probes_b,
            "b_identified_after": self.b_named_b / self.probes_b,
        }


def run_wrong_feed(
    people: People, settings: GallerySettings, enroll: int, pairs: dict[str, str], b_enrolled: bool, policy: bool
) -> FeedFigures:
    """Feed B's early tracks as decided for A (margin inf) into a fresh gallery for each pair."""
    rng = np.random.default_rng(0)
    figures = FeedFigures()
    for a, b in pairs.items():
        later = people.photos[b][enroll:]
        if len(later) < 2:
            continue
        fed, held = later[: len(later) // 2], later[len(later) // 2 :]
        who = people.enrolled if b_enrolled else [p for p in people.enrolled if p != b]
        gallery = Gallery.enrolled(people, who, enroll, settings)
        a_tracks = cut_tracks(people.photos[a][enroll:], rng)
        b_tracks = cut_tracks(held, rng)
        before_a = sum(_names(gallery, views, a, settings) for views in a_tracks)
        before_b = sum(_names(gallery, views, a, settings) for views in b_tracks)
        figures.b_named_b_before += sum(_names(gallery, views, b, settings) for views in b_tracks)
        for views in cut_tracks(fed, rng):
            figures.fed_views += 1
            forced = Match(a, a, 0.0, float("inf"), True)
            if not policy:
                gallery.adapt(AdaptiveTemplate(a, views[0], None, _surplus(gallery, a, settings), 0))
                figures.taken += 1
                continue
            outcome = consider(
                RecognizedTrack(forced, views, [1.0] * len(views)),
                gallery.matcher,
                gallery.adaptive.get(a, []),
                settings,
            )
            if isinstance(outcome, AdaptiveTemplate):
                gallery.adapt(outcome)
                figures.taken += 1
        after_b = sum(_names(gallery, views, a, settings) for views in b_tracks)
        figures.b_named_b += sum(_names(gallery, views, b, settings) for views in b_tracks)
        figures.pairs += 1
        figures.probes_b += len(b_tracks)
        figures.b_named_a_before += before_b
        figures.b_named_a += after_b
        figures.pairs_drifted += after_b > 0
        figures.probes_a += len(a_tracks)
        figures.a_named_a_before += before_a
        figures.a_named_a += sum(_names(gallery, views, a, settings) for views in a_tracks)
    return figures


def _names(gallery: Gallery, views: list[Vector], person: str, settings: GallerySettings) -> bool:
    match = decide(views, gallery.matcher, settings.track_threshold)
    return match.accepted and match.person_id == person


def _surplus(gallery: Gallery, person: str, settings: GallerySettings) -> tuple[int, ...]:
    adaptive = gallery.adaptive.get(person, [])
    return tuple(adaptive[: max(0, len(adaptive) - settings.adapt_templates + 1)])


def wrong_feed(people: People, settings: GallerySettings, enroll: int) -> dict[str, Any]:
    pairs = nearest_enrolled(people, enroll, settings)
    unguarded = dataclasses.replace(settings, adapt_guard_distance=0.0)
    unlimited = dataclasses.replace(settings, adapt_min_distance=0.0, adapt_max_distance=4.0)
    variants = {
        "with_guard": (settings, True),
        "without_guard": (unguarded, True),
        "guard_only": (unlimited, True),  # no distance window: what the drift guard alone stops
        "no_policy": (settings, False),
    }
    return {
        b_label: {
            name: run_wrong_feed(people, varied, enroll, pairs, b_enrolled, policy).summary()
            for name, (varied, policy) in variants.items()
        }
        for b_label, b_enrolled in (("b_enrolled", True), ("b_not_enrolled", False))
    }


# ------------------------------------------------------------------------------------------------- sweep

# Each setting's values as ratios of the one given (the embedder's figure): around dlib's figures they are the
# values that tuned them (adapt_min_distance 0.15 / 0.25 / 0.28 / 0.3 / 0.32 around 0.3, and so on).
SWEEP: dict[str, tuple[float, ...]] = {
    "adapt_margin": (0.65, 1.0, 1.5, 2.0, 2.5),
    "adapt_min_distance": (0.5, 0.25 / 0.3, 0.28 / 0.3, 1.0, 0.32 / 0.3),
    "adapt_max_distance": (0.32 / 0.35, 1.0, 0.38 / 0.35, 0.4 / 0.35, 0.45 / 0.35),
    "adapt_guard_distance": (0.0, 0.35 / 0.4, 1.0, 0.45 / 0.4, 0.5 / 0.4),
    "adapt_templates": (0.2, 0.6, 1.0, 2.0, 4.0),
}


def sweep(people: People, settings: GallerySettings, enroll: int, seeds: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, values in SWEEP.items():
        rows = []
        for ratio in values:
            given = getattr(settings, name)
            value = round(given * ratio) if isinstance(given, int) else round(given * ratio, 4)
            varied = dataclasses.replace(settings, **{name: value})
            if varied.adapt_min_distance >= varied.adapt_max_distance:
                continue
            runs = [run_stream(people, varied, enroll, seed, True).summary() for seed in range(seeds)]
            rows.append({"value": value, **_mean(runs)})
            progress(f"  sweep {name}={value}: {_line(rows[-1])}")
        result[name] = rows
    return result


# ------------------------------------------------------------------------------------------------ output


def _line(figures: dict[str, Any]) -> str:
    return (
        f"ID {100 * figures['identification_rate']:.1f}%  "
        f"later {100 * figures['later_half_identification_rate']:.1f}%  "
        f"wrong {100 * figures['wrong_name_rate']:.2f}%  FPR streamed {100 * figures['stranger_fpr_streamed']:.2f}%  "
        f"held-out {100 * figures['stranger_fpr_held_out']:.2f}%  added {figures['templates_added']:.0f} "
        f"(wrong person {figures['templates_added_to_wrong_person']:.1f})"
    )


def print_report(result: dict[str, Any]) -> None:
    setup = result["setup"]
    print(
        f"\n{setup['enrolled']} people enrolled from their first {setup['enroll']} photo(s) "
        f"(>= {setup['min_photos']} photos each), {setup['streamed_strangers']} + {setup['held_out_strangers']} "
        f"stranger identities streamed + held out, {setup['seeds']} seeds"
    )
    print("settings:", json.dumps(setup["settings"]))
    for label in ("without", "with"):
        runs = result["stream"][label]["runs"]
        print(f"  {label:7} adaptation: {_line(result['stream'][label]['mean'])}")
        total = {key: sum(run[key] for run in runs) for key in runs[0] if not isinstance(runs[0][key], dict | float)}
        print(
            f"  {'':7}   all seeds: {total['identified_tracks']}/{total['genuine_tracks']} genuine tracks identified, "
            f"strangers accepted {total['strangers_accepted_streamed']}/{total['stranger_tracks_streamed']} streamed, "
            f"{total['strangers_accepted_held_out']}/{total['stranger_tracks_held_out']} held out"
        )
    refusals = Counter[str]()
    for run in result["stream"]["with"]["runs"]:
        refusals.update(run["refusals"])
    print("  refusals (all seeds):", dict(refusals.most_common()))
    print("\nwrong feed: B's early tracks fed as decided for A (margin inf), B = A's nearest enrolled person")
    for b_label, variants in result["wrong_feed"].items():
        for variant, f in variants.items():
            print(
                f"  {b_label:14} {variant:13}: taken {f['fed_templates_taken']}/{f['fed_views']}  "
                f"B named A {100 * f['b_held_out_named_a_before']:.1f}% -> {100 * f['b_held_out_named_a_after']:.1f}% "
                f"({f['pairs_where_a_names_b']}/{f['pairs']} pairs)  "
                f"A identified {100 * f['a_identified_before']:.1f}% -> {100 * f['a_identified_after']:.1f}%  "
                f"B identified {100 * f['b_identified_before']:.1f}% -> {100 * f['b_identified_after']:.1f}%"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--min-photos", type=int, default=6, help="photos an identity needs to be enrolled")
    parser.add_argument("--enroll", type=int, default=1, help="photos each enrolled person is enrolled from")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--sweep", action="store_true", help="vary one adaptation setting at a time")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a [gallery] setting")
    parser.add_argument("--out", type=Path, help="write every figure as JSON here")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in (item.split("=", 1) for item in args.set)}
    embedder = ModelStore(None).spec(None, "embedder")  # the one bench_openset.py's cache embedded with
    stated = stated_gallery(embedder.raw)
    defaults = with_matching(GallerySettings(), matching(GallerySettings(), stated, embedder.id))
    settings = dataclasses.replace(
        defaults, **{key: type(getattr(defaults, key))(value) for key, value in overrides.items()}
    )
    started = time.perf_counter()
    people = load_people(args.data, args.cache_dir, args.min_photos, args.enroll)
    result: dict[str, Any] = {
        "setup": {
            "enrolled": len(people.enrolled),
            "enroll": args.enroll,
            "min_photos": args.min_photos,
            "streamed_strangers": len(people.streamed_strangers),
            "held_out_strangers": len(people.held_out_strangers),
            "seeds": args.seeds,
            "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "path"},
        }
    }
    result["stream"] = stream_comparison(people, settings, args.enroll, args.seeds)
    result["wrong_feed"] = wrong_feed(people, settings, args.enroll)
    if args.sweep:
        result["sweep"] = sweep(people, settings, args.enroll, args.seeds)
    result["seconds"] = time.perf_counter() - started
    print_report(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
