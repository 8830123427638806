"""The model store: the manifest, and models that are only handed out after their sha256 checks out.

A model is read into memory once, hashed, and the interpreter is built from those same bytes, so a
file swapped between the check and the load cannot slip through.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ModelError

MANIFEST_NAME = "manifest.json"
SUPPORTED_SCHEMA = 1


@dataclass(frozen=True)
class ModelSpec:
    """One manifest entry. `raw` keeps the role-specific fields (anchors, alignment, metric...)."""

    id: str
    role: str
    file: str
    sha256: str
    bytes: int
    raw: dict[str, Any]

    @classmethod
    def from_entry(cls, entry: Any) -> ModelSpec:
        if not isinstance(entry, dict):
            raise ModelError(f"manifest entry is not an object: {entry!r:.80}")
        missing = [k for k in ("id", "role", "file", "sha256", "bytes") if k not in entry]
        if missing:
            raise ModelError(f"manifest entry {entry.get('id', '?')!r} lacks {', '.join(missing)}")
        ident = entry["id"]
        for key in ("id", "role", "file", "sha256"):
            if not isinstance(entry[key], str) or not entry[key] or "\0" in entry[key]:
                raise ModelError(
                    f"manifest entry {ident!r:.80}: {key} must be a non-empty string, got {entry[key]!r:.80}"
                )
        if isinstance(entry["bytes"], bool) or not isinstance(entry["bytes"], int) or entry["bytes"] < 0:
            raise ModelError(f"manifest entry {ident!r}: bytes must be a whole number, got {entry['bytes']!r:.80}")
        if Path(entry["file"]).name != entry["file"] or entry["file"] in (".", ".."):
            raise ModelError(f"manifest entry {ident!r}: file must be a bare name, got {entry['file']!r}")
        return cls(
            id=ident,
            role=entry["role"],
            file=entry["file"],
            sha256=entry["sha256"].lower(),
            bytes=entry["bytes"],
            raw=entry,
        )


def default_models_dir() -> Path:
    """Models shipped in the wheel (`agent/_models`), else the source checkout's `models/`."""
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "_models", package_dir.parent / "models"):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    return package_dir.parent / "models"


class ModelStore:
    """Reads `manifest.json` in a models directory and verifies each model before use."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory else default_models_dir()
        manifest_path = self.directory / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"model manifest not found: {manifest_path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"model manifest {manifest_path} is unreadable: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("schema_version") != SUPPORTED_SCHEMA:
            raise ModelError(f"model manifest {manifest_path} is not schema_version {SUPPORTED_SCHEMA}")
        entries = manifest.get("models")
        if not isinstance(entries, list):
            raise ModelError(f"model manifest {manifest_path} has no 'models' list")
        self.specs = {spec.id: spec for spec in map(ModelSpec.from_entry, entries)}
        self.defaults: dict[str, str] = dict(manifest.get("defaults", {}))

    def spec(self, model_id: str | None, role: str) -> ModelSpec:
        """The spec for `model_id`, or the manifest's default for `role`."""
        chosen = model_id or self.defaults.get(role)
        if chosen is None:
            raise ModelError(f"the manifest names no default {role}")
        spec = self.specs.get(chosen)
        if spec is None:
            known = ", ".join(sorted(s.id for s in self.specs.values() if s.role == role))
            raise ModelError(f"no {role} model {chosen!r} in the manifest (known: {known})")
        if spec.role != role:
            raise ModelError(f"model {chosen!r} is a {spec.role}, not a {role}")
        return spec

    def read_verified(self, spec: ModelSpec) -> bytes:
        """The model's bytes, only if size and sha256 match the manifest."""
        path = self.directory / spec.file
        expect = f"expected sha256 {spec.sha256} ({spec.bytes} bytes)"
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"model file {path} is missing; {expect}") from None
        except OSError as exc:
            raise ModelError(f"model file {path} is unreadable ({exc}); {expect}") from exc
        digest = hashlib.sha256(content).hexdigest()
        if len(content) != spec.bytes or digest != spec.sha256:
            raise ModelError(
                f"model file {path} failed its integrity check: {expect}, "
                f"found sha256 {digest} ({len(content)} bytes); reinstall the models"
            )
        return content

    def verify_all(self) -> list[ModelSpec]:
        """Check every model in the manifest; raises on the first bad one."""
        for spec in self.specs.values():
            self.read_verified(spec)
        return list(self.specs.values())


def embedder_id(models_dir: Path | None, configured: str | None) -> str:
    """The embedder a pipeline would load, read from the manifest without loading any model."""
    return ModelStore(models_dir).spec(configured, "embedder").id
