"""Settings: one TOML file validated into typed, frozen dataclasses.

Every field has a default that works, so an empty file (or none) is a valid configuration.
Loading and validation (`load_settings`, `faceagent config check`) live below the dataclasses.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypedDict, get_args, get_type_hints
from urllib.parse import unquote, urlsplit

from agent.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSettings:
    dir: Path | None = None  # None: the bundled models
    detector: str | None = None  # manifest id; None: the manifest's default
    embedder: str | None = None
    runtime: str | None = None  # "ai-edge-litert" | "tflite-runtime" | None (first available)
    threads: int = 2
    # Ed25519 keys that may sign a model release (`model_update`), same forms as commands.public_keys. A role of
    # its own: a command key cannot sign a model, nor a release key a command. None: no model can be installed.
    release_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class GallerySettings:
    path: Path = Path("/var/lib/faceagent/gallery.db")
    # "euclidean" (raw dlib distance) | "cosine" (L2 between unit-normalised embeddings, sqrt(2 - 2cos)).
    # Chosen by scripts/bench_openset.py: stranger FPR <= 1% at 10, 50 and 200 enrolled people on LFW.
    metric: str = "cosine"
    # The three matching figures: unset (None), each is the active embedder's stated figure (its manifest
    # entry's `gallery`), else the built-in one (BUILT_IN_MATCHING); set, it wins whatever the embedder.
    threshold: float | None = None  # a match needs distance < threshold ...
    margin: float | None = None  # ... and second-best person at least this much further away
    max_templates_per_person: int = 10
    # The enrollment guard's and adaptation's distances, in the metric's units. Like the matching figures, each one
    # unset (None) is the active embedder's stated figure (its manifest entry's `gallery`), else the built-in one
    # (BUILT_IN_MATCHING, dlib's); set, it wins whatever the embedder.
    duplicate_distance: float | None = None  # a new template this close to an existing one of the person is skipped
    conflict_distance: float | None = None  # an enrollment photo this close to ANOTHER person is a conflict
    # A track's mean embedding sits a little closer to everyone than one photo does, so its decision
    # needs a stricter threshold (see BUILT_IN_MATCHING).
    track_threshold: float | None = None
    # A person with several templates is also scored by their mean template, this much further than it is (unset: the
    # embedder's stated figure; an embedder that states none, dlib's, has templates alone score). Fitted with the
    # threshold: with it, the fused embedder's 3-photo people are named more often and 1-photo people as before.
    mean_offset: float | None = None
    keep_chips: bool = False  # opt-in: keep aligned 150x150 chips so templates can be rebuilt
    # Templates that keep up (opt-in, agent/recognition/adaptation.py): a track recognized with a margin of at
    # least adapt_margin gives one view as an adaptive template of that person, if the view is at least
    # adapt_min_distance from all their templates (one they nearly missed), within adapt_max_distance of an enrolled
    # one (still clearly them), and at least adapt_guard_distance from everyone else's (0 turns the drift guard
    # off); at most adapt_templates per person, the oldest replaced first. Distances resolved as above; dlib's
    # from scripts/bench_adapt.py (docs/learning.md, "Adaptation").
    adapt: bool = False
    adapt_margin: float | None = None
    adapt_templates: int = 5
    adapt_min_distance: float | None = None
    adapt_max_distance: float | None = None
    adapt_guard_distance: float | None = None


MATCHING_KEYS = ("threshold", "margin", "track_threshold")  # what an embedder that states figures must state
# What it may state besides (each fitted on its own space; docs/recognition-v2.md, "Figures per embedder").
DISTANCE_KEYS = (
    "duplicate_distance",
    "conflict_distance",
    "adapt_margin",
    "adapt_min_distance",
    "adapt_max_distance",
    "adapt_guard_distance",
    "mean_offset",
)
FIGURE_KEYS = MATCHING_KEYS + DISTANCE_KEYS


@dataclass(frozen=True)
class GalleryFigures:
    """Figures in the cosine metric's units (L2 between unit vectors), as an embedder states them: the three
    matching ones, and the guard's and adaptation's distances it was fitted for (None: not stated)."""

    threshold: float
    margin: float
    track_threshold: float
    duplicate_distance: float | None = None
    conflict_distance: float | None = None
    adapt_margin: float | None = None
    adapt_min_distance: float | None = None
    adapt_max_distance: float | None = None
    adapt_guard_distance: float | None = None
    mean_offset: float | None = None  # None: templates alone score a person (the matcher keeps no mean templates)


# Fitted for dlib-resnet29-int8, and what its manifest entry states. Matching (scripts/bench_openset.py: stranger
# FPR <= 1% at 10, 50 and 200 enrolled people on LFW). A track's mean sits a little closer to everyone than one
# photo does: 0.32 kept stranger tracks (3 LFW photos each) at <= 0.9% false positives with 200 enrolled over 3
# seeds (88-90% identified); 0.35 let 1.2-2.1% through. duplicate 0.1: the same photo re-encoded, or a
# near-identical frame (about 0.14 raw dlib distance); conflict 0.35: the threshold that decides "this face is
# that person" (scripts/measure_enroll_guard.py); the adapt distances: scripts/bench_adapt.py (docs/learning.md).
BUILT_IN_MATCHING = GalleryFigures(
    threshold=0.35,
    margin=0.065,
    track_threshold=0.32,
    duplicate_distance=0.1,
    conflict_distance=0.35,
    adapt_margin=0.1,
    adapt_min_distance=0.3,
    adapt_max_distance=0.35,
    adapt_guard_distance=0.4,
)


@dataclass(frozen=True)
class Matching:
    """The figures a gallery decides with (the matcher, the enrollment guard, adaptation), and where each came
    from (`sources`, by key): "setting" (the settings file or set_config), "embedder <id>" (its manifest entry
    states it), "built-in", or "given" (a matcher made with explicit figures)."""

    threshold: float
    margin: float
    track_threshold: float
    duplicate_distance: float
    conflict_distance: float
    adapt_margin: float
    adapt_min_distance: float
    adapt_max_distance: float
    adapt_guard_distance: float
    mean_offset: float | None
    sources: dict[str, str]

    @classmethod
    def given(cls, threshold: float, margin: float, track_threshold: float) -> Matching:
        """Matching figures given outright (a bare `Matcher`); the distances built-in."""
        built_in = matching(GallerySettings())
        sources = dict(built_in.sources) | dict.fromkeys(MATCHING_KEYS, "given")
        return replace(built_in, threshold=threshold, margin=margin, track_threshold=track_threshold, sources=sources)

    def describe(self) -> dict[str, dict[str, Any]]:
        """`gallery.<key>` -> {value, source}: what get_config and status show."""
        return {f"gallery.{key}": {"value": getattr(self, key), "source": self.sources[key]} for key in FIGURE_KEYS}


def matching(gallery: GallerySettings, stated: GalleryFigures | None = None, stated_by: str = "") -> Matching:
    """Each figure from the first that has it: the setting, the embedder's stated figure, the built-in one.

    Stated figures are in cosine units, so a euclidean gallery takes only settings and built-in figures."""
    embedder = stated if gallery.metric == "cosine" else None
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for key in FIGURE_KEYS:
        setting: float | None = getattr(gallery, key)
        figure: float | None = getattr(embedder, key) if embedder is not None else None
        if setting is not None:
            values[key], sources[key] = setting, "setting"
        elif figure is not None:
            values[key], sources[key] = figure, f"embedder {stated_by}".strip()
        else:
            values[key], sources[key] = getattr(BUILT_IN_MATCHING, key), "built-in"
    return Matching(**values, sources=sources)


def with_matching(gallery: GallerySettings, figures: Matching | None = None) -> GallerySettings:
    """`gallery` with every figure set to `figures` (default: `matching(gallery)`, no embedder's): for the
    benchmarks and tools that read the figures off the settings."""
    figures = figures or matching(gallery)
    return replace(gallery, **{key: getattr(figures, key) for key in FIGURE_KEYS})


@dataclass(frozen=True)
class QualitySettings:
    min_face_px: float = 60.0  # eye-to-mouth scaled face size in frame pixels (box width)
    min_score: float = 0.75
    # Gate levels from the spread over 385 LFW photos: sharpness 15
    # refuses the blurriest ~1%, yaw 0.45 the most turned ~3%.
    min_sharpness: float = 15.0  # variance of the Laplacian on the grey chip
    max_yaw: float = 0.45  # |nose offset from the eye midline| / eye distance
    max_roll_degrees: float = 25.0


@dataclass(frozen=True)
class TrackingSettings:
    iou_threshold: float = 0.3
    max_age_frames: int = 15  # a track unseen this many frames is closed
    embed_every_frames: int = 5  # re-embed a track at most this often ...
    better_view_gain: float = 1.2  # ... or sooner when quality improves by this factor
    decision_embeddings: int = 3  # embeddings gathered before an identity decision
    max_embeddings_per_track: int = 10


@dataclass(frozen=True)
class EventSettings:
    camera_id: str = "cam0"
    cooldown_seconds: float = 60.0  # per person and camera
    unknown_events: bool = True
    unknown_cooldown_seconds: float = 10.0
    # false keeps names off the wire (events, the last_person topic, command replies): ids only; names stay here
    include_names: bool = True


@dataclass(frozen=True)
class RetentionSettings:
    events_days: float = 30.0
    audit_days: float = 365.0
    purge_interval_seconds: float = 3600.0


@dataclass(frozen=True)
class CommandSettings:
    """Limits and authority for commands arriving over MQTT (`agent/commands/`).

    Commands that change state or reveal personal data run only when signed by one of `public_keys` (the
    operator command keys); without a key a device answers only ping, get_status and get_config. Running
    them unsigned is an explicit choice, `allow_unsigned`, warned at start and shown in the status document.
    `signing_required` is what made signing opt-in before signing became the default: it still loads but
    changes nothing, except that it contradicts `allow_unsigned`.
    """

    signing_required: bool = False  # obsolete: signing is the default; true together with allow_unsigned is an error
    allow_unsigned: bool = False  # true: anyone on the broker may run every command unsigned (audited mqtt:unsigned)
    public_keys: tuple[str, ...] = ()  # Ed25519: absolute paths of PEM files, or base64 of the 32 raw bytes
    timestamp_window_seconds: float = 120.0  # a signed command's sent_at must be this close to the device clock
    # Refused before it is decoded; enroll photos count here. A payload costs 4-6x its size while it is received
    # and decoded, plus two in the queue: 8 MiB keeps the agent under 250 MB (scripts/bench_hostile.py).
    max_payload_bytes: int = 8 * 1024 * 1024
    max_image_bytes: int = 4 * 1024 * 1024  # one enrollment photo, decoded
    max_images: int = 10  # photos in one enroll command
    dedupe_entries: int = 256  # replies remembered so a repeated request id is answered, not run again


@dataclass(frozen=True)
class MqttSettings:
    """The broker connection (`agent/link/`); `--mqtt URL` on the command line overrides url and credentials."""

    url: str | None = None  # mqtt://host[:1883] or mqtts://[user:password@]host[:8883]; unset: no broker
    prefix: str = "faceagent"  # topics are <prefix>/<device_id>/...
    device_id: str | None = None  # unset: derived from /etc/machine-id, else the hostname
    protocol: str = "5"  # "5" | "3.1.1"
    keepalive: int = 30  # seconds; the broker declares the device offline after 1.5x this silence
    ca_file: Path | None = None  # mqtts: the CA that signed the broker's certificate (unset: the system CAs)
    cert_file: Path | None = None  # mqtts: optional client certificate ...
    key_file: Path | None = None  # ... and its private key
    username: str | None = None
    password: str | None = None  # a secret: redact_secrets() before showing settings to anyone
    tls_insecure: bool = False  # true skips the broker host name check (never in production)
    require_tls: bool = False  # true refuses a plain mqtt:// URL (file or --mqtt): events never travel in clear
    max_outbox_events: int = 10000  # beyond this the oldest unsent events are dropped and counted
    telemetry_interval_seconds: float = 60.0


@dataclass(frozen=True)
class HomeAssistantSettings:
    """Opt-in MQTT discovery, so Home Assistant shows the device without hand-written YAML."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"
    device_name: str | None = None  # the device page's title, and so the entity ids; unset: "faceagent <camera_id>"
    area: str | None = None  # Home Assistant's suggested area; unset: events.camera_id
    # 0: off. N: a binary sensor per enrolled person, on for N minutes after each recognition of them.
    person_presence_minutes: int = 0


@dataclass(frozen=True)
class CameraSettings:
    """Where frames come from (`agent/sources/`). Unset by default: `faceagent demo` brings its own clip."""

    # "picamera2[:N]" | "v4l2:/dev/video0" | "rtsp://..." | "file:PATH" (or *.mp4, *.mkv, *.avi) | "folder:PATH"
    source: str | None = None
    size: str = "1280x720"  # WIDTHxHEIGHT: the picamera2 main stream (sharp crops) or the v4l2 capture size
    lores_size: str = "640x360"  # picamera2 detection stream (YUV420), same aspect ratio as size
    fps: float = 15.0  # camera frame rate; file/folder replay pace; 0: camera default / as fast as possible
    loop: bool = False  # file/folder replay starts again at the end
    reconnect_max_seconds: float = 30.0  # a failed camera is reopened after 0.5 s, 1 s, 2 s ... at most this


@dataclass(frozen=True)
class FeedbackSettings:
    """Corrections by event id (`wrong_person`, `is_person`, `enroll_from_event`; agent/recognition/feedback.py).

    A decided track's embeddings stay in memory only, for `window_minutes` after its event (never on disk,
    never on the wire), at most `max_entries` tracks; a `wrong_person` negative is kept per person up to
    `negatives_per_person` (oldest dropped) for `negative_days`."""

    window_minutes: float = 15.0  # 0: no window, no corrections by event id
    max_entries: int = 2000  # 15 minutes at 133 decided tracks a minute; beyond it the oldest go first
    negatives_per_person: int = 20
    negative_days: float = 180.0


@dataclass(frozen=True)
class Settings:
    models: ModelSettings = field(default_factory=ModelSettings)
    gallery: GallerySettings = field(default_factory=GallerySettings)
    quality: QualitySettings = field(default_factory=QualitySettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    events: EventSettings = field(default_factory=EventSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    commands: CommandSettings = field(default_factory=CommandSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    homeassistant: HomeAssistantSettings = field(default_factory=HomeAssistantSettings)
    camera: CameraSettings = field(default_factory=CameraSettings)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)


# ------------------------------------------------------------------------------------ validation

DEFAULT_CONFIG = Path("/etc/faceagent/faceagent.toml")


@dataclass(frozen=True)
class Range:
    """Inclusive bounds, except `low` itself when `above` (a threshold of 0 would never match)."""

    low: float
    high: float
    above: bool = False

    def admits(self, value: float) -> bool:
        return (value > self.low if self.above else value >= self.low) and value <= self.high

    def describe(self, kind: str) -> str:
        if self.above:
            return f"must be {kind} greater than {self.low:g} and at most {self.high:g}"
        return f"must be {kind} between {self.low:g} and {self.high:g}"


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    def admits(self, value: str) -> bool:
        return value in self.options

    def describe(self, kind: str) -> str:
        return "must be one of " + ", ".join(f'"{o}"' for o in self.options)


@dataclass(frozen=True)
class Pattern:
    regex: str
    meaning: str

    def admits(self, value: str) -> bool:
        return re.fullmatch(self.regex, value) is not None

    def describe(self, kind: str) -> str:
        return f"must be {self.meaning}"


_DAY = 86400.0
_LABEL = r"(?=.{1,64}\Z)[^\x00-\x1f\x7f\s](?:[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s])?"
_TOPIC_PATH = r"(?=.{1,100}\Z)[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*"
_BROKER_URL = r"mqtts?://([^@/\s]+@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:[0-9]{1,5})?/?"
SECRET_KEYS = frozenset({"mqtt.password"})
# The audit log cannot be shortened remotely below the local file's retention.audit_days nor below this:
# an intrusion is often found weeks later, and the log is what shows what a stolen operator key did.
# 90 days is the usual "immediately available" security-log window (PCI DSS 10.7: three months of one
# year). Audit records hold ids and counts, never faces, so keeping them costs little privacy.
AUDIT_DAYS_MINIMUM = 90.0
# What an operator may change over MQTT (set_config): how faces are judged, tracked, reported and kept.
# Never paths, models, the metric (the matcher is built for one), keep_chips (it stores biometric data),
# the broker connection or the command security.
REMOTE_SECTIONS = ("quality", "tracking", "events", "retention")
REMOTE_GALLERY = (
    "threshold",
    "margin",
    "track_threshold",
    "duplicate_distance",
    "conflict_distance",
    "max_templates_per_person",
)
REMOTE_NAME = "settings.remote.toml"  # in the state directory, beside the gallery
_SIZE = r"[1-9][0-9]{0,4}[02468]x[1-9][0-9]{0,4}[02468]|[2468]x[2468]"
# Every number has a range and every enumerated string its options; tests check none is missing.
RULES: dict[str, Range | Choice | Pattern] = {
    "models.runtime": Choice(("ai-edge-litert", "tflite-runtime")),
    "models.threads": Range(1, 64),
    "gallery.metric": Choice(("euclidean", "cosine")),
    "gallery.mean_offset": Range(0, 4),
    "gallery.threshold": Range(0, 4, above=True),
    "gallery.margin": Range(0, 4),
    "gallery.max_templates_per_person": Range(1, 1000),
    "gallery.duplicate_distance": Range(0, 4),
    "gallery.conflict_distance": Range(0, 4),
    "gallery.track_threshold": Range(0, 4),
    "gallery.adapt_margin": Range(0, 4),
    "gallery.adapt_templates": Range(1, 100),
    "gallery.adapt_min_distance": Range(0, 4),
    "gallery.adapt_max_distance": Range(0, 4, above=True),
    "gallery.adapt_guard_distance": Range(0, 4),
    "quality.min_face_px": Range(0, 10000),
    "quality.min_score": Range(0, 1),
    "quality.min_sharpness": Range(0, 1e6),
    "quality.max_yaw": Range(0, 10),
    "quality.max_roll_degrees": Range(0, 180),
    "tracking.iou_threshold": Range(0, 1),
    "tracking.max_age_frames": Range(1, 100000),
    "tracking.embed_every_frames": Range(1, 100000),
    "tracking.better_view_gain": Range(1, 100),
    "tracking.decision_embeddings": Range(1, 1000),
    "tracking.max_embeddings_per_track": Range(1, 1000),
    "events.camera_id": Pattern(r"[A-Za-z0-9_.-]{1,64}", "1-64 letters, digits, '_', '.' or '-' (used in MQTT topics)"),
    "events.cooldown_seconds": Range(0, 7 * _DAY),
    "events.unknown_cooldown_seconds": Range(0, 7 * _DAY),
    "retention.events_days": Range(0, 36500),
    "retention.audit_days": Range(0, 36500),
    "retention.purge_interval_seconds": Range(1, 7 * _DAY),
    "commands.timestamp_window_seconds": Range(1, _DAY),
    "commands.max_payload_bytes": Range(1024, 256 * 1024 * 1024),
    "commands.max_image_bytes": Range(1024, 64 * 1024 * 1024),
    "commands.max_images": Range(1, 100),
    "commands.dedupe_entries": Range(1, 100000),
    "mqtt.url": Pattern(
        _BROKER_URL,
        "an mqtt:// or mqtts:// URL: scheme://[user[:password]@]host[:port] (write @ / : in them as %40 %2F %3A)",
    ),
    "mqtt.prefix": Pattern(_TOPIC_PATH, "1-100 of A-Z a-z 0-9 _ . - in levels separated by '/'"),
    "mqtt.device_id": Pattern(r"[A-Za-z0-9_-]{1,64}", "1-64 letters, digits, '_' or '-' (an MQTT topic level)"),
    "mqtt.protocol": Choice(("5", "3.1.1")),
    "mqtt.keepalive": Range(5, 3600),
    "mqtt.max_outbox_events": Range(1, 10_000_000),
    "mqtt.telemetry_interval_seconds": Range(1, 7 * _DAY),
    "homeassistant.discovery_prefix": Pattern(_TOPIC_PATH, "1-100 of A-Z a-z 0-9 _ . - in levels separated by '/'"),
    "homeassistant.device_name": Pattern(_LABEL, "1-64 printable characters, not starting or ending with a space"),
    "homeassistant.area": Pattern(_LABEL, "1-64 printable characters, not starting or ending with a space"),
    "homeassistant.person_presence_minutes": Range(0, 1440),
    "camera.size": Pattern(_SIZE, 'WIDTHxHEIGHT, even numbers of pixels, e.g. "1280x720"'),
    "camera.lores_size": Pattern(_SIZE, 'WIDTHxHEIGHT, even numbers of pixels, e.g. "640x360"'),
    "camera.fps": Range(0, 240),
    "camera.reconnect_max_seconds": Range(0.5, 3600),
    "feedback.window_minutes": Range(0, 1440),
    "feedback.max_entries": Range(1, 100_000),
    "feedback.negatives_per_person": Range(1, 1000),
    "feedback.negative_days": Range(0, 36500, above=True),
}


def find_config(explicit: Path | None) -> Path | None:
    """The file to load: the one asked for, else /etc/faceagent/faceagent.toml if present, else none."""
    if explicit is not None:
        return explicit
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def load_settings(path: Path | None) -> Settings:
    """Settings from a TOML file (None: the defaults); ConfigError names the bad `section.key`.

    Relative paths in the file are relative to the file's own folder, so a service started from / and a
    user in their checkout read the same configuration the same way.
    """
    if path is None:
        return Settings()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} is unreadable: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return settings_from_dict(data, source=str(path), base_dir=Path(path).resolve().parent)


def settings_from_dict(data: dict[str, Any], *, source: str = "config", base_dir: Path | None = None) -> Settings:
    """Validate a parsed TOML document; every problem is reported, each as `section.key: what is wrong`."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    known = _section_types()
    for name, table in data.items():
        section_type = known.get(name)
        if section_type is None:
            problems.append(f"{name}: unknown section{_suggest(name, known)}")
        elif not isinstance(table, dict):
            problems.append(f"{name}: must be a table ([{name}]), got {_show(table)}")
        else:
            sections[name] = _section(name, section_type, table, base_dir, problems)
    problems += _cross_problems(Settings(**sections))  # every value in `sections` is valid on its own
    if problems:
        listed = problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(problems)
        raise ConfigError(f"{source}: {listed}")
    return Settings(**sections)


def _cross_problems(settings: Settings) -> list[str]:
    """Rules that tie two keys together, each reported under the key to change."""
    problems = []
    try:
        require_tls(settings.mqtt)
    except ConfigError as exc:
        problems.append(str(exc))
    low, high = settings.gallery.adapt_min_distance, settings.gallery.adapt_max_distance
    if low is not None and high is not None and low >= high:  # one unset: its embedder's figure, known at start
        problems.append(f"gallery.adapt_min_distance: must be below gallery.adapt_max_distance ({high:g}), got {low:g}")
    if settings.commands.signing_required and settings.commands.allow_unsigned:
        problems.append(
            "commands.allow_unsigned: cannot be true while commands.signing_required is true "
            "(signing is now the default: remove signing_required, and allow_unsigned unless you mean it)"
        )
    return problems


def require_tls(mqtt: MqttSettings, override: str | None = None) -> None:
    """ConfigError when `mqtt.require_tls` is on and the broker URL in use (`--mqtt`, else `mqtt.url`) is
    plain mqtt://: a fleet that sets it cannot send biometric events in clear text through a typo."""
    url = override or mqtt.url
    if mqtt.require_tls and url and not url.strip().lower().startswith("mqtts://"):  # as parse_broker_url reads it
        key = "--mqtt" if override else "mqtt.url"
        raise ConfigError(f"{key}: must be an mqtts:// URL while mqtt.require_tls is true, got {redact_url(url)!r}")


def _section_types() -> dict[str, type]:
    return {f.name: get_type_hints(Settings)[f.name] for f in fields(Settings)}


def _section(name: str, cls: type, table: dict[str, Any], base_dir: Path | None, problems: list[str]) -> Any:
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in hints:
            problems.append(f"{name}.{key}: unknown key{_suggest(key, hints)}")
            continue
        try:
            values[key] = _value(f"{name}.{key}", value, hints[key], base_dir)
        except ValueError as exc:
            problems.append(f"{name}.{key}: {exc}, got {_show(value, f'{name}.{key}')}")
    return cls(**values)


def _value(key: str, value: Any, hint: Any, base_dir: Path | None) -> Any:
    """`value` converted to `hint`, or ValueError saying what it must be."""
    optional = type(None) in get_args(hint)
    if optional:
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
        if value == "":
            return None
    rule = RULES.get(key)
    if hint == tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ValueError("must be an array of non-empty strings")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if hint in (int, float):
        return _number(value, hint, rule)
    if hint is Path:
        return _path(value, base_dir, optional)
    unset = ' (or "" for the default)' if optional else ""
    if isinstance(rule, Choice | Pattern):
        if not isinstance(value, str) or not rule.admits(value):
            raise ValueError(rule.describe("a string") + unset)
    elif not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string{unset}")
    return value


def _number(value: Any, hint: type, rule: Range | Choice | Pattern | None) -> float | int:
    kind = "an integer" if hint is int else "a number"
    ok_type = not isinstance(value, bool) and isinstance(value, int if hint is int else int | float)
    finite = ok_type and (isinstance(value, int) or math.isfinite(value))  # huge ints are finite, not floats
    if not (finite and (not isinstance(rule, Range) or rule.admits(value))):
        raise ValueError(rule.describe(kind) if isinstance(rule, Range) else f"must be {kind}")
    return hint(value)


def _path(value: Any, base_dir: Path | None, optional: bool) -> Path:
    """A path; relative ones are taken from `base_dir` (the config file's folder)."""
    unset = ' (or "" for the default)' if optional else ""
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ValueError(f"must be a non-empty path{unset}")
    try:
        path = Path(value).expanduser()
    except RuntimeError as exc:  # "~user" with no such user
        raise ValueError(f"must be a path whose ~ can be expanded{unset}") from exc
    problem = path_problem(path)
    if problem:
        raise ValueError(f"must be a path the filesystem can hold ({problem}){unset}")
    return path if path.is_absolute() or base_dir is None else base_dir / path


NAME_MAX, PATH_MAX = 255, 4095  # bytes, Linux: longer makes every file call fail with ENAMETOOLONG


def path_problem(path: Path) -> str | None:
    """Why no filesystem call can take `path`, else None: checked where paths come in, since `Path.is_dir()`
    and friends raise on a name too long instead of answering False."""
    encoded = os.fsencode(path)
    if len(encoded) > PATH_MAX:
        return f"{len(encoded)} bytes, over {PATH_MAX}"
    longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
    return f"a name of {longest} bytes, over {NAME_MAX}" if longest > NAME_MAX else None


def _show(value: Any, key: str = "") -> str:
    """A value as the user wrote it in TOML, shortened; a secret is never shown, and a URL loses its
    user-info before it is shortened (a cut first would leave the password's first characters)."""
    if key in SECRET_KEYS:
        return "a value not shown (a secret)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(redact_url(value), ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{value} (a {type(value).__name__})"


def _suggest(name: str, known: Iterable[str]) -> str:
    options = sorted(known)
    close = difflib.get_close_matches(name, options, n=1)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    return f" (known: {', '.join(options)}){hint}"


class BrokerAddress(TypedDict):
    tls: bool
    host: str
    port: int
    username: str | None
    password: str | None


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://` or `mqtts://`, optional `user:password@` (percent-encoded), host, optional port."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # a port that is no number or out of range; its text may be a mis-split password
        raise ConfigError(
            f"broker URL {redact_url(url)!r}: expected scheme://[user[:password]@]host[:port] with a port "
            "from 1 to 65535 (write @ / : # ? in a user name or password as %40 %2F %3A %23 %3F)"
        ) from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"broker URL {redact_url(url)!r}: the scheme must be mqtt:// or mqtts://")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"broker URL {redact_url(url)!r}: expected scheme://[user[:password]@]host[:port]")
    if port == 0:
        raise ConfigError(f"broker URL {redact_url(url)!r}: port 0 is not a broker port")
    tls = parts.scheme == "mqtts"
    return {
        "tls": tls,
        "host": parts.hostname,
        "port": (8883 if tls else 1883) if port is None else port,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
    }


def redact_url(text: str) -> str:
    """`text` without the user-info of a URL in it: everything from `scheme://` to the last `@` becomes `***`.

    Found by position, not by a pattern of the characters a password may hold, so a password with @ / : %
    quotes or anything else goes whole, whether or not the URL parses (urlsplit itself stops the
    authority at a `/`, `?` or `#`, so it would leave the rest of such a password in the "path").
    A text without `://` is no URL and comes back as it is.
    """
    scheme, separator, rest = text.partition("://")
    if not separator or "@" not in rest:
        return text
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def url_userinfo(text: str) -> str | None:
    """The user-info of a URL in `text` (as `redact_url` finds it), else None: a secret to keep out of messages."""
    _, separator, rest = text.partition("://")
    return rest.rpartition("@")[0] if separator and "@" in rest else None


# ------------------------------------------------------------------------------------ output


def settings_to_dict(settings: Settings) -> dict[str, dict[str, Any]]:
    """Plain JSON-able values: paths as strings, unset optionals as None."""
    return {
        f.name: {k: str(v) if isinstance(v, Path) else v for k, v in asdict(getattr(settings, f.name)).items()}
        for f in fields(Settings)
    }


def redact_secrets(values: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`settings_to_dict` output with every set secret (SECRET_KEYS), and any password written into a
    URL, replaced by "***": what may be shown to a person or sent over MQTT."""
    redacted = {
        section: {k: redact_url(v) if isinstance(v, str) else v for k, v in keys.items()}
        for section, keys in values.items()
    }
    for key in SECRET_KEYS:
        section, name = key.split(".")
        if redacted.get(section, {}).get(name) is not None:
            redacted[section][name] = "***"
    return redacted


def settings_to_toml(settings: Settings) -> str:
    """The effective settings as a TOML file that loads back to the same settings."""
    return values_to_toml(settings_to_dict(settings))


def values_to_toml(sections: dict[str, dict[str, Any]], notes: dict[str, str] | None = None) -> str:
    """`settings_to_dict` output (redacted or not) as TOML; `notes` puts a comment after a `section.key`."""
    notes = notes or {}
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None and section == "gallery" and key in MATCHING_KEYS:
                lines.append(f'# {key} = ""  (not set: the embedder\'s stated figure, else the built-in one)')
            elif value is None:
                lines.append(f'# {key} = ""  (not set: the built-in default)')
            elif isinstance(value, tuple):
                lines.append(f"{key} = {json.dumps(list(value), ensure_ascii=False)}")
            elif isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
            else:
                lines.append(f"{key} = {value!r}")
            if f"{section}.{key}" in notes:
                lines[-1] += f"  # {notes[f'{section}.{key}']}"
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ remote overlay


def remote_keys() -> frozenset[str]:
    """Every `section.key` a remote set_config may change (and the overlay may hold)."""
    defaults = Settings()
    keys = {f"gallery.{name}" for name in REMOTE_GALLERY if hasattr(defaults.gallery, name)}
    for section in REMOTE_SECTIONS:
        keys.update(f"{section}.{f.name}" for f in fields(getattr(defaults, section)))
    return frozenset(keys)


def remote_settings_path(gallery_path: Path) -> Path:
    """The overlay of remotely changed settings: in the state directory (beside the gallery), which the
    service user may write, while /etc/faceagent stays read-only and the operator's."""
    return Path(gallery_path).parent / REMOTE_NAME


def audit_floor(local: Settings) -> float:
    """Audit retention that no remote command can go below: the local file's value, at least the minimum."""
    return max(local.retention.audit_days, AUDIT_DAYS_MINIMUM)


@dataclass(frozen=True)
class LayeredSettings:
    """The effective settings: the local file with the remote overlay laid over it."""

    settings: Settings
    local: Settings  # the local file alone
    overlay: Path  # where the overlay is (or would be)
    remote: dict[str, Any]  # `section.key` -> value, the overlay's keys that were applied
    problem: str | None = None  # why the overlay was ignored (it is then not applied at all)


def read_remote(path: Path) -> dict[str, Any]:
    """The overlay's values by `section.key` ({} when there is none); ConfigError for a file that is not
    TOML or holds a key a remote command may not set."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    allowed = remote_keys()
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section}: must be a table")
        for key, value in table.items():
            if f"{section}.{key}" not in allowed:
                raise ConfigError(f"{path}: {section}.{key}: not a remotely settable key")
            values[f"{section}.{key}"] = value
    return values


def with_values(base: Settings, values: dict[str, Any], *, source: str) -> Settings:
    """`base` with `section.key` values replaced, all validated together (paths of `base` kept as they are)."""
    document = {s: {k: v for k, v in keys.items() if v is not None} for s, keys in settings_to_dict(base).items()}
    for key, value in values.items():
        section, name = key.split(".")
        document[section][name] = value
    return settings_from_dict(document, source=source)


def apply_remote(local: Settings, remote: dict[str, Any], *, source: str) -> Settings:
    """The local settings with the remote values over them; ConfigError for a value out of range or an
    audit retention below `audit_floor(local)`."""
    settings = with_values(local, remote, source=source)
    floor = audit_floor(local)
    if "retention.audit_days" in remote and settings.retention.audit_days < floor:
        raise ConfigError(
            f"{source}: retention.audit_days: may not be set remotely below {floor:g} days (the local file's "
            f"value, at least {AUDIT_DAYS_MINIMUM:g}), got {settings.retention.audit_days:g}"
        )
    return settings


def load_layered(path: Path | None, *, db: Path | None = None) -> LayeredSettings:
    """The local file (ConfigError when it is invalid, as `load_settings`), then the overlay beside the
    gallery (`db` overrides gallery.path); an overlay that is corrupt or invalid is logged and ignored."""
    local = load_settings(path)
    overlay = remote_settings_path(db or local.gallery.path)
    try:
        remote = read_remote(overlay)
        settings = apply_remote(local, remote, source=str(overlay))
    except ConfigError as exc:
        log.warning("remote settings ignored, the local ones apply: %s", exc)
        return LayeredSettings(local, local, overlay, {}, str(exc))
    return LayeredSettings(settings, local, overlay, remote)
