"""The `faceagent` command: the argument parser and the offline commands run on the device's files.

`identify`, `compare`, `enroll`, `gallery list`, `person update|delete`, `config check` and `models verify`
live here, each a short function over the same objects the service and the MQTT commands use (`FacePipeline`,
`Matcher`, `Enroller`, `GalleryStore`, the settings loader), so a photo enrolled from the shell passes the same
gate as one sent over MQTT. The long-running commands are in `live`, the operator's `ctl` in `ctl` and its
web page in `console`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pwd
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from agent import __version__
from agent.cli.arguments import add_person_arguments
from agent.cli.console import add_console_commands
from agent.cli.ctl import add_ctl_commands
from agent.cli.live import add_live_commands
from agent.commands.signing import KeyRoles
from agent.config import (
    DEFAULT_CONFIG,
    FIGURE_KEYS,
    RULES,
    Matching,
    Range,
    Settings,
    find_config,
    load_layered,
    matching,
    path_problem,
    redact_secrets,
    settings_to_dict,
    values_to_toml,
)
from agent.errors import FaceagentError, GalleryError, ImageError, NoFaceError
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.gallery.sync import load_gallery
from agent.identity import Consent, Match, utc_now
from agent.modelupdate.install import (
    carry_templates,
    installed_models_dir,
    load_embedder,
    rebuild_sources,
    rebuild_templates,
)
from agent.recognition.enrollment import Enroller
from agent.vision.embedder import FaceEmbedder, distance, stated_gallery
from agent.vision.fusion import fallback_models
from agent.vision.image import load_image
from agent.vision.modelstore import ModelStore, default_models_dir
from agent.vision.pipeline import FacePipeline, PipelineOptions, most_central
from agent.vision.runtime import select_runtime

EXIT_INPUT = 2  # unreadable input, no face, bad model: a clear one-line message on stderr

log = logging.getLogger("faceagent")


def _as_setting(key: str, kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An option standing in for a setting takes what the settings file takes: `--threads 100000` would
    start that many interpreter threads, `--threshold nan` would print invalid JSON."""
    rule = RULES[key]
    assert isinstance(rule, Range)
    words = "an integer" if kind is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not {words}") from None
        if not (math.isfinite(value) and rule.admits(value)):
            raise argparse.ArgumentTypeError(f"{rule.describe(words)}, got {text[:40]}")
        return value

    return parse


def _add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=Path, help="models directory (default: models.dir, or the bundled models)")
    parser.add_argument("--detector", help="detector model id from the manifest (e.g. blazeface-full)")
    parser.add_argument("--embedder", help="embedder model id from the manifest")
    parser.add_argument("--runtime", choices=["ai-edge-litert", "tflite-runtime"], help="force a TFLite runtime")
    threads = _as_setting("models.threads", int)
    parser.add_argument("--threads", type=threads, help="interpreter threads (default: models.threads, 2)")
    parser.add_argument("--json", action="store_true", help="print JSON lines")


def _gallery_path(text: str) -> Path:
    """--db: a name too long for the filesystem makes the gallery's own checks raise, so it is refused here."""
    path = Path(text)
    problem = path_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(f"not a path the filesystem can hold ({problem})")
    return path


def _shared_options() -> argparse.ArgumentParser:
    """--config and --db, accepted before or after the subcommand (SUPPRESS keeps a global value)."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    shared.add_argument(
        "--db", type=_gallery_path, default=argparse.SUPPRESS, help="gallery file (default: gallery.path)"
    )
    return shared


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceagent", description="Edge face recognition agent.")
    parser.add_argument("--version", action="store_true", help="print version and TFLite runtime, then exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (runtime choice, timings)")
    parser.add_argument("--config", type=Path, help=f"settings file (default: {DEFAULT_CONFIG} if present)")
    parser.add_argument("--db", type=_gallery_path, help="gallery file (default: gallery.path from the settings)")
    commands = parser.add_subparsers(dest="command")
    shared = _shared_options()

    identify = commands.add_parser("identify", parents=[shared], help="find faces in images (--db: and who they are)")
    identify.add_argument("images", nargs="+", type=Path)
    _add_pipeline_args(identify)
    identify.set_defaults(handler=cmd_identify)

    compare = commands.add_parser("compare", help="compare the most central face of two images")
    compare.add_argument("image_a", type=Path)
    compare.add_argument("image_b", type=Path)
    threshold = _as_setting("gallery.threshold", float)
    compare.add_argument("--threshold", type=threshold, help="distance threshold (default: the embedder's)")
    _add_pipeline_args(compare)
    compare.set_defaults(handler=cmd_compare)

    models = commands.add_parser("models", help="model store operations")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    verify = models_commands.add_parser("verify", help="check every model's sha256 against the manifest")
    verify.add_argument("--models", type=Path, help="models directory (default: the bundled models)")
    verify.set_defaults(handler=cmd_models_verify)

    enroll = commands.add_parser("enroll", parents=[shared], help="enroll a person from photos (one face each)")
    enroll.add_argument("images", nargs="+", type=Path)
    add_person_arguments(enroll, person_id_help="add photos to this enrolled person")
    _add_pipeline_args(enroll)
    enroll.set_defaults(handler=cmd_enroll)

    _add_gallery_commands(commands, shared)
    add_ctl_commands(commands)
    add_console_commands(commands)
    add_live_commands(commands)
    return parser


def _add_gallery_commands(commands: argparse._SubParsersAction, shared: argparse.ArgumentParser) -> None:
    gallery = commands.add_parser("gallery", help="the enrolled people")
    gallery_commands = gallery.add_subparsers(dest="gallery_command", required=True)
    listing = gallery_commands.add_parser("list", parents=[shared], help="people, templates per model, re-enrollment")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(handler=cmd_gallery_list)
    rebuild = gallery_commands.add_parser(
        "rebuild", parents=[shared], help="templates of the embedder in use from kept chips (after a model switch)"
    )
    rebuild.add_argument("--models", type=Path, help="models directory (default: the agent's)")
    rebuild.add_argument("--json", action="store_true", help="print one JSON document")
    rebuild.set_defaults(handler=cmd_gallery_rebuild)

    person = commands.add_parser("person", help="change or erase one enrolled person")
    person_commands = person.add_subparsers(dest="person_command", required=True)
    delete = person_commands.add_parser("delete", parents=[shared], help="erase a person, their templates and events")
    delete.add_argument("person_id")
    delete.set_defaults(handler=cmd_person_delete)
    update = person_commands.add_parser("update", parents=[shared], help="change a person's name or reference")
    update.add_argument("person_id")
    update.add_argument("--name", help="new display name")
    update.add_argument("--external-ref", help='new external reference ("" clears it)')
    update.set_defaults(handler=cmd_person_update)

    config = commands.add_parser("config", help="settings file operations")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", parents=[shared], help="validate settings and print the effective ones")
    check.add_argument("file", nargs="?", type=Path, help="settings file (default: --config, else the default file)")
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    check.set_defaults(handler=cmd_config_check)


# ------------------------------------------------------------------------------ shared wiring


def _settings(args: argparse.Namespace) -> Settings:
    """What the running agent uses: the local file with the remote settings (set_config) laid over it."""
    return load_layered(find_config(args.config), db=getattr(args, "db", None)).settings


def _open_store(args: argparse.Namespace, settings: Settings, *, create: bool = False) -> GalleryStore:
    """The gallery named by --db, else gallery.path; reading commands never create one."""
    return GalleryStore.open(args.db or settings.gallery.path, create=create)


def cli_actor() -> str:
    """Who the audit log names for a CLI action: the real unix user, not a spoofable variable."""
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


def _models_dir(args: argparse.Namespace, settings: Settings) -> Path | None:
    """Models installed over MQTT beside the gallery win, as in the service: the CLI must make templates
    with the embedder the agent runs."""
    return installed_models_dir(getattr(args, "db", None) or settings.gallery.path) or settings.models.dir


def _pipeline(args: argparse.Namespace, settings: Settings) -> FacePipeline:
    models = settings.models
    options = PipelineOptions(
        models_dir=args.models or _models_dir(args, settings),
        detector=args.detector or models.detector,
        embedder=args.embedder or models.embedder,
        runtime=args.runtime or models.runtime,
        threads=args.threads or models.threads,
    )
    pipeline = FacePipeline(options)
    log.info("TFLite runtime: %s", pipeline.runtime.describe())
    return pipeline


def _gallery_matcher(args: argparse.Namespace, settings: Settings, embedder: FaceEmbedder) -> Matcher:
    """Every template of the loaded embedder, under the [gallery] metric and the figures in use (each set in
    [gallery], else the embedder's stated one, else built-in)."""
    matcher = Matcher.for_gallery(settings.gallery, embedder)
    model_id = embedder.info.model_id
    with _open_store(args, settings) as store:
        load_gallery(matcher, store, model_id)
        stale = store.people_needing_reenrollment(model_id)
    log.info("gallery %s: %d templates of %s", store.path, len(matcher), model_id)
    fallback = matcher.fallback
    if stale and fallback is not None:
        still = len(set(stale) & fallback.matcher.person_ids())
        log.warning(
            "%d enrolled people have no %s template (re-enroll them, or `faceagent gallery rebuild` from kept chips); "
            "%d of them are matched on their %s templates until then",
            len(stale),
            model_id,
            still,
            " or ".join(fallback.model_ids),
        )
    elif stale:
        log.warning(
            "%d enrolled people have no %s template and cannot be matched (re-enroll them)", len(stale), model_id
        )
    return matcher


def _match_json(match: Match) -> dict | str:
    if not match.accepted:
        return "unknown"
    margin = round(match.margin, 4) if math.isfinite(match.margin) else None  # None: only one person enrolled
    return {"person_id": match.person_id, "name": match.name, "distance": round(match.distance, 4), "margin": margin}


# ------------------------------------------------------------------------------ recognition


def cmd_identify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pipeline = _pipeline(args, settings)
    matcher = _gallery_matcher(args, settings, pipeline.embedder) if args.db else None
    status = 0
    for path in args.images:
        try:
            frame = load_image(path)
        except ImageError as exc:
            print(f"faceagent: {exc}", file=sys.stderr)
            status = EXIT_INPUT
            continue
        records = _identify_frame(pipeline, matcher, frame)
        if not records:
            print(f"faceagent: {path}: no face found", file=sys.stderr)
            status = EXIT_INPUT
        for index, record in enumerate(records):
            record = {"image": str(path), "face": index, **record}
            print(json.dumps(record) if args.json else _identify_line(path, index, record))
    return status


def _identify_frame(pipeline: FacePipeline, matcher: Matcher | None, frame: np.ndarray) -> list[dict]:
    if matcher is None:
        return [face.to_json() for face in pipeline.detect(frame)]
    analysed = pipeline.analyse(frame)
    if not analysed:
        return []
    matches = matcher.search_many(np.stack([item.embedding for item in analysed]))
    return [{**item.face.to_json(), "match": _match_json(m)} for item, m in zip(analysed, matches, strict=True)]


def _identify_line(path: Path, index: int, record: dict) -> str:
    x0, y0, x1, y1 = record["box"]
    line = f"{path}: face {index} at ({x0}, {y0})-({x1}, {y1}) score {record['score']}"
    match = record.get("match")
    if isinstance(match, dict):
        line += f": {match['name']} ({match['person_id']}, distance {match['distance']}, margin {match['margin']})"
    elif match is not None:
        line += ": unknown"
    return line


def cmd_compare(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args, _settings(args))
    embeddings = []
    for path in (args.image_a, args.image_b):
        frame = load_image(path)
        face = most_central(pipeline.detect(frame), frame.shape[1], frame.shape[0])
        if face is None:
            raise NoFaceError(f"{path}: no face found")
        embeddings.append(pipeline.embed_face(frame, face).embedding)
    info = pipeline.embedder.info
    threshold = info.threshold if args.threshold is None else args.threshold
    d = distance(embeddings[0], embeddings[1], info.metric)
    result = {"distance": round(d, 4), "same": d < threshold, "threshold": threshold}
    if args.json:
        print(json.dumps(result))
    else:
        verdict = "same person" if result["same"] else "different people"
        print(f"{verdict}: distance {result['distance']} (threshold {threshold}, {info.metric})")
    return 0


# ------------------------------------------------------------------------------ gallery management


def cmd_gallery_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    models = ModelStore(_models_dir(args, settings))
    spec = models.spec(settings.models.embedder, "embedder")
    model_id = spec.id
    # A fused embedder still matches people on their templates of its first member (or of a fused model with the
    # same first member) until they are re-enrolled.
    fallbacks = fallback_models(models, spec) if settings.gallery.metric == "cosine" else []
    with _open_store(args, settings) as store:
        listing = store.listing(model_id)
    if args.json:
        matched_on = {
            "matched_until_reenrolled_on": fallbacks[0] if fallbacks else None,
            "matched_on_templates_of": fallbacks,
        }
        print(json.dumps({"gallery": str(store.path), **listing, **matched_on}))
        return 0
    rows, stale = listing["people"], listing["people_needing_reenrollment"]
    still, used = 0, set[str]()
    for row in rows:
        templates = ", ".join(f"{n} {model}" for model, n in sorted(row["templates"].items())) or "no templates"
        flag = "  [needs re-enrollment]" if row["needs_reenrollment"] else ""
        held = [model for model in fallbacks if model in row["templates"]]
        if row["needs_reenrollment"] and held:
            flag = f"  [needs re-enrollment; matched on its {' and '.join(held)} templates until then]"
            still, used = still + 1, used | set(held)
        print(f"{row['id']}  {row['name']}  ({templates}){flag}")
    named = " and ".join(model for model in fallbacks if model in used)
    until = f" ({still} matched on their {named} templates until then)" if still else ""
    print(f"{len(rows)} people; {stale} need re-enrollment for {model_id}{until}")
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pipeline = _pipeline(args, settings)
    consent = None
    if args.consent_ref:
        given_by = args.consent_by or (args.name or args.person_id)
        consent = Consent(given_by=given_by, given_at=utc_now(), reference=args.consent_ref, purpose=args.purpose)
    with _open_store(args, settings, create=True) as store:
        matcher = Matcher.for_gallery(settings.gallery, pipeline.embedder)
        # The fallback's old templates too: a photo added to someone known only by them is vetted on them, and
        # a new person is checked against everyone.
        load_gallery(matcher, store, pipeline.embedder.info.model_id)
        result = Enroller(pipeline, store, matcher, settings).enroll(
            [(str(path), path) for path in args.images],
            actor=cli_actor(),
            name=args.name,
            person_id=args.person_id,
            external_ref=args.external_ref,
            consent=consent,
            force=args.force,
            reveal_matches=True,  # whoever runs this can read the gallery file anyway
        )
    for outcome in result.photos:
        if args.json:
            print(json.dumps({"image": outcome.label, "accepted": outcome.accepted, "reason": outcome.reason}))
        else:
            print(f"{outcome.label}: {'enrolled' if outcome.accepted else 'refused: ' + (outcome.reason or '')}")
    verb = "enrolled" if result.created else "updated"
    print(f"{verb} {result.person.name} ({result.person.id}): {result.templates_added} new templates", file=sys.stderr)
    return 0


def cmd_gallery_rebuild(args: argparse.Namespace) -> int:
    """What a model update does after an embedder change, for a switch made in the settings file: every chip kept
    with another embedder's templates, aligned as this one's chips are, embedded again; each chip once."""
    settings = _settings(args)
    models_dir = args.models or _models_dir(args, settings) or default_models_dir()
    models = ModelStore(models_dir)
    spec = models.spec(settings.models.embedder, "embedder")
    embedder = load_embedder(models_dir, spec, settings.models)
    rebuilt: dict[str, int] = {}
    with _open_store(args, settings) as store:
        carried = carry_templates(store, models, spec, cli_actor())  # taken as they are: nothing to re-embed
        people: set[str] = set()
        for old_id in rebuild_sources(models, spec):
            added = rebuild_templates(store, embedder, old_id, cli_actor())
            if added:
                rebuilt[old_id] = len(added)
                people.update(added)
        stale = store.people_needing_reenrollment(spec.id)
    summary = {
        "model_id": spec.id,
        "people_carried_over": len(carried),
        "templates_rebuilt": rebuilt,
        "people": len(people),
        "people_needing_reenrollment": len(stale),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    sources = ", ".join(f"{n} from {old_id}" for old_id, n in rebuilt.items()) or "none: no kept chip fits it"
    if carried:
        print(f"{spec.id}: templates carried over for {len(carried)} people (its build of the same members)")
    print(f"{spec.id}: templates rebuilt for {len(people)} people ({sources})")
    if stale:
        print(f"{len(stale)} people still need re-enrollment for {spec.id} (no kept chip): faceagent gallery list")
    return 0


def cmd_person_delete(args: argparse.Namespace) -> int:
    actor = cli_actor()
    with _open_store(args, _settings(args)) as store:
        counts = store.delete_person(args.person_id, actor=actor)
    print(
        f"deleted person {args.person_id}: {counts['templates']} templates, {counts['events']} events "
        f"(audited as {actor})"
    )
    if not counts["wal_truncated"]:
        print(
            "faceagent: a reader kept the WAL busy; the erasure's checkpoint is pending (the running agent "
            "finishes it within seconds; otherwise the next erasure does)",
            file=sys.stderr,
        )
    return 0


def cmd_person_update(args: argparse.Namespace) -> int:
    if args.name is None and args.external_ref is None:
        raise GalleryError("nothing to update: give --name and/or --external-ref")
    with _open_store(args, _settings(args)) as store:
        person = store.update_person(args.person_id, name=args.name, external_ref=args.external_ref, actor=cli_actor())
    print(f"updated person {person.id}: name {person.name!r}, external_ref {person.external_ref!r}")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """The effective settings: the local file with the remote overlay (set_config) laid over it; keys from
    the overlay are marked. Secrets are redacted before anything is formatted, so none reaches a terminal."""
    path = args.file or find_config(args.config)
    layered = load_layered(path, db=getattr(args, "db", None))
    hidden = redact_secrets(settings_to_dict(layered.settings))
    KeyRoles.from_settings(layered.settings)  # a key the agent could not load at start fails the check too
    in_force = _matching_in_force(args, layered.settings)
    if args.json:
        remote = {"file": str(layered.overlay), "keys": sorted(layered.remote), "problem": layered.problem}
        figures = (
            {"problem": in_force}
            if isinstance(in_force, str)
            else {key: getattr(in_force, key) for key in FIGURE_KEYS} | {"sources": in_force.sources}
        )
        print(json.dumps(hidden | {"remote": remote, "matching": figures}, indent=2))
        return 0
    print(f"# effective settings from {path or 'the built-in defaults'}")
    if isinstance(in_force, str):
        print(f"# matching figures: {in_force}")
    else:
        shown = ", ".join(f"{key} {getattr(in_force, key):g} ({in_force.sources[key]})" for key in FIGURE_KEYS)
        print(f"# matching figures in force (unset [gallery] figures come from the embedder): {shown}")
    if layered.remote:
        print(f"# with remote settings (set_config) from {layered.overlay}: marked 'remote' below")
    if layered.problem:
        print(f"# remote settings IGNORED: {layered.problem}")
    notes = {key: f"remote (local: {_local_value(layered.local, key)})" for key in layered.remote}
    print(values_to_toml(hidden, notes), end="")
    return 0


def _matching_in_force(args: argparse.Namespace, settings: Settings) -> Matching | str:
    """The gallery's figures as the agent would resolve them (set > stated by the embedder > built-in), read from
    the manifest without loading a model: an unset figure in [gallery] shows as null above."""
    try:
        spec = ModelStore(_models_dir(args, settings)).spec(settings.models.embedder, "embedder")
        figures = matching(settings.gallery, stated_gallery(spec.raw), spec.id)
    except FaceagentError as exc:
        return str(exc)
    return figures


def _local_value(settings: Settings, key: str) -> str:
    section, name = key.split(".")
    return json.dumps(getattr(getattr(settings, section), name), ensure_ascii=False)


def cmd_models_verify(args: argparse.Namespace) -> int:
    store = ModelStore(args.models)
    for spec in store.verify_all():
        print(f"ok  {spec.id:24} {spec.file}  sha256 {spec.sha256}")
    return 0


def cmd_version() -> int:
    try:
        runtime = select_runtime().describe()
    except FaceagentError as exc:
        runtime = f"none ({exc})"
    print(f"faceagent {__version__} (TFLite runtime: {runtime})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="faceagent: %(message)s")
    if args.version:
        return cmd_version()
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.error("no command given (faceagent -h lists them)")  # usage and this line on stderr, exit 2
    try:
        return handler(args)
    except FaceagentError as exc:
        print(f"faceagent: {exc}", file=sys.stderr)
        return EXIT_INPUT
