"""Settings: one TOML file validated into typed, frozen dataclasses.

Every field has a default that works, so an empty file (or none) is a valid configuration.
Loading and validation (`load_settings`, `faceagent config check`) live below the dataclasses.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from agent.errors import ConfigError


@dataclass(frozen=True)
class ModelSettings:
    dir: Path | None = None  # None: the bundled models
    detector: str | None = None  # manifest id; None: the manifest's default
    embedder: str | None = None
    runtime: str | None = None  # "ai-edge-litert" | "tflite-runtime" | None (first available)
    threads: int = 2


@dataclass(frozen=True)
class GallerySettings:
    path: Path = Path("/var/lib/faceagent/gallery.db")
    # "euclidean" (raw dlib distance) | "cosine" (L2 between unit-normalised embeddings, sqrt(2 - 2cos)).
    # Chosen by scripts/bench_openset.py: stranger FPR <= 1% at 10, 50 and 200 enrolled people on LFW.
    metric: str = "cosine"
    threshold: float = 0.35  # a match needs distance < threshold ...
    margin: float = 0.065  # ... and second-best person at least this much further away
    max_templates_per_person: int = 10
    # Both in the metric's units. 0.1 cosine-distance is about 0.14 raw dlib distance: the same photo
    # re-encoded, or a near-identical frame, adds nothing.
    duplicate_distance: float = 0.1  # a new template this close to an existing one of the person is skipped
    conflict_distance: float = 0.35  # an enrolment photo this close to ANOTHER person is a conflict
    # A track's mean embedding sits a little closer to everyone than one photo does, so its decision
    # needs a stricter threshold: 0.32 kept stranger tracks (3 LFW photos each) at <= 0.9% false
    # positives with 200 enrolled over 3 seeds (88-90% identified); 0.35 let 1.2-2.1% through.
    track_threshold: float = 0.32
    keep_chips: bool = False  # opt-in: keep aligned 150x150 chips so templates can be rebuilt


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


@dataclass(frozen=True)
class RetentionSettings:
    events_days: float = 30.0
    audit_days: float = 365.0
    purge_interval_seconds: float = 3600.0


@dataclass(frozen=True)
class Settings:
    models: ModelSettings = field(default_factory=ModelSettings)
    gallery: GallerySettings = field(default_factory=GallerySettings)
    quality: QualitySettings = field(default_factory=QualitySettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    events: EventSettings = field(default_factory=EventSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)


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
# Every number has a range and every enumerated string its options; tests check none is missing.
RULES: dict[str, Range | Choice | Pattern] = {
    "models.runtime": Choice(("ai-edge-litert", "tflite-runtime")),
    "models.threads": Range(1, 64),
    "gallery.metric": Choice(("euclidean", "cosine")),
    "gallery.threshold": Range(0, 4, above=True),
    "gallery.margin": Range(0, 4),
    "gallery.max_templates_per_person": Range(1, 1000),
    "gallery.duplicate_distance": Range(0, 4),
    "gallery.conflict_distance": Range(0, 4),
    "gallery.track_threshold": Range(0, 4),
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
    if problems:
        listed = problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(problems)
        raise ConfigError(f"{source}: {listed}")
    return Settings(**sections)


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
            problems.append(f"{name}.{key}: {exc}, got {_show(value)}")
    return cls(**values)


def _value(key: str, value: Any, hint: Any, base_dir: Path | None) -> Any:
    """`value` converted to `hint`, or ValueError saying what it must be."""
    optional = type(None) in get_args(hint)
    if optional:
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
        if value == "":
            return None
    rule = RULES.get(key)
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
    return path if path.is_absolute() or base_dir is None else base_dir / path


def _show(value: Any) -> str:
    """A value as the user wrote it in TOML, shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
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


# ------------------------------------------------------------------------------------ output


def settings_to_dict(settings: Settings) -> dict[str, dict[str, Any]]:
    """Plain JSON-able values: paths as strings, unset optionals as None."""
    return {
        f.name: {k: str(v) if isinstance(v, Path) else v for k, v in asdict(getattr(settings, f.name)).items()}
        for f in fields(Settings)
    }


def settings_to_toml(settings: Settings) -> str:
    """The effective settings as a TOML file that loads back to the same settings."""
    lines: list[str] = []
    for section, values in settings_to_dict(settings).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                lines.append(f'# {key} = ""  (not set: the built-in default)')
            elif isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
            else:
                lines.append(f"{key} = {value!r}")
        lines.append("")
    return "\n".join(lines)
