"""The writable models directory of a device, and every change a model update makes to it.

It lives in the state directory (`state_models_dir`, beside the gallery), never in the installed package,
and once it holds a manifest the service loads its models from there (`installed_models_dir`). The first
update seeds it with the models in use. Files are named by content (`<stem>.<sha256[:12]>.tflite`, or `.json`
for a fused definition), so no update overwrites a file: the previous model is still on disk when the manifest
(replaced atomically, the old one kept as `manifest.previous.json`) is rolled back. Files neither manifest
names are removed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.errors import ModelError
from agent.files import fsync_dir, write_atomically
from agent.modelupdate.entries import DEFINITION_SUFFIX, release_entry
from agent.vision.embedder import FaceEmbedder
from agent.vision.fusion import carried_models, chip_model, open_embedder
from agent.vision.modelstore import MANIFEST_NAME, ModelSpec, ModelStore
from agent.vision.runtime import InvokeClock, TfliteModel, select_runtime

if TYPE_CHECKING:
    from agent.config import ModelSettings
    from agent.gallery.store import GalleryStore

log = logging.getLogger(__name__)

PREVIOUS_MANIFEST = "manifest.previous.json"
RELEASE_FLOOR = "release-floor.json"  # role -> the highest version installed (agent.modelupdate.update.ReleaseFloor)


def state_models_dir(gallery_path: Path) -> Path:
    """Where updated models live: beside the gallery, in the state directory the agent may write."""
    return Path(gallery_path).parent / "models"


def installed_models_dir(gallery_path: Path) -> Path | None:
    """The state models directory once an update has installed a manifest there (it then wins)."""
    folder = state_models_dir(gallery_path)
    return folder if (folder / MANIFEST_NAME).is_file() else None


def stored_name(file: str, sha256: str) -> str:
    """The installed file's name: the publisher's, tagged with the content."""
    path = Path(file)
    return f"{path.stem}.{sha256[:12]}{path.suffix}"


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class ModelsFolder:
    """The state models directory. `candidate` prepares, `install` commits, `restore` undoes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST_NAME

    def candidate(self, live_dir: Path, meta: dict[str, Any], current: str, staged: Path, scratch: Path) -> dict:
        """Write into `scratch` a models directory of links with the manifest to be; returns that manifest.

        `meta` is the signed metadata plus `installed` (job, signer, time); the entry is `release_entry`'s (`current`
        is the model now used for the role). The release becomes the role's default unless it is on standby.
        """
        live = ModelStore(live_dir)
        self._seed(live, live_dir)
        name = stored_name(meta["file"], meta["sha256"])
        document = json.loads((live_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        entries: list[dict[str, Any]] = document["models"]
        ids = [entry["id"] for entry in entries]
        model_id, role = meta["model_id"], meta["role"]
        entry = release_entry(live, meta, live.specs[current])
        entry |= {"id": model_id, "role": role, "file": name, "sha256": meta["sha256"], "bytes": meta["size"]}
        entry |= {"version": meta["version"], "installed": meta["installed"]}
        position = ids.index(model_id) if model_id in ids else len(entries)
        document["models"] = [*entries[:position], entry, *entries[position + 1 :]]
        if not meta.get("standby"):
            document.setdefault("defaults", {})[role] = model_id
        scratch.mkdir()
        for item in document["models"]:
            target = scratch / item["file"]
            if not target.exists():
                _link(staged if item["file"] == name else self.path / item["file"], target)
        (scratch / MANIFEST_NAME).write_text(json.dumps(document, indent=2), encoding="utf-8")
        return document

    def _seed(self, live: ModelStore, live_dir: Path) -> None:
        """Copy the models in use (verified) into the state directory before its first manifest."""
        if live_dir.resolve() == self.path.resolve():
            return
        for spec in live.specs.values():
            target = self.path / spec.file
            if not (target.is_file() and target.stat().st_size == spec.bytes):
                write_atomically(target, live.read_verified(spec))

    def install(self, staged: Path, name: str, manifest: dict, live_dir: Path) -> bytes | None:
        """Move the model in, keep the manifest in use (`live_dir`'s, seeded here) as the previous one, and
        replace the manifest; returns the one replaced here (None: this is the first update)."""
        os.replace(staged, self.path / name)
        fsync_dir(self.path)
        previous = self.manifest.read_bytes() if self.manifest.is_file() else None
        write_atomically(self.path / PREVIOUS_MANIFEST, (live_dir / MANIFEST_NAME).read_bytes())
        write_atomically(self.manifest, json.dumps(manifest, indent=2).encode() + b"\n")
        return previous

    def restore(self, previous: bytes | None) -> None:
        """Put back the manifest `install` replaced; after a first update, none (the package's models run)."""
        if previous is None:
            self.manifest.unlink(missing_ok=True)
            (self.path / PREVIOUS_MANIFEST).unlink(missing_ok=True)
            fsync_dir(self.path)
        else:
            write_atomically(self.manifest, previous)

    def tidy(self) -> None:
        """Remove model files (and fused definitions) neither manifest names (all of them where no update is
        installed); the manifests and the release floor stay."""
        wanted = {MANIFEST_NAME, PREVIOUS_MANIFEST, RELEASE_FLOOR}
        for path in (self.manifest, self.path / PREVIOUS_MANIFEST):
            try:
                wanted.update(entry["file"] for entry in json.loads(path.read_text(encoding="utf-8"))["models"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        for path in [*self.path.glob("*.tflite"), *self.path.glob("*" + DEFINITION_SUFFIX)]:
            if path.name not in wanted:
                path.unlink(missing_ok=True)


def load_embedder(models_dir: Path, spec: ModelSpec, models: ModelSettings) -> FaceEmbedder:
    """The embedder `spec` describes, one model or a fused entry's members (`open_embedder`)."""
    store = ModelStore(models_dir)
    runtime = select_runtime(models.runtime)

    def load(member: ModelSpec, clock: InvokeClock) -> TfliteModel:
        return TfliteModel(runtime.load(store.read_verified(member), models.threads), clock)

    return open_embedder(store, spec, load)


def chips_fit(models: ModelStore, old: ModelSpec, new: ModelSpec) -> bool:
    """Whether chips kept under `old` are chips `new` embeds: both keep their (first member's) chip aligned the
    same way. A ModelError when either entry's chip model is not in `models`."""
    return chip_model(models, new).raw.get("alignment") == chip_model(models, old).raw.get("alignment")


def rebuild_sources(models: ModelStore, spec: ModelSpec) -> list[str]:
    """The other embedders of `models` whose kept chips `spec` can embed (`chips_fit`), in manifest order: what a
    rebuild after switching to `spec` reads. An entry whose chip model cannot be read is left out."""
    found = []
    for other in models.specs.values():
        if other.id == spec.id or other.role != "embedder":
            continue
        try:
            fits = chips_fit(models, other, spec)
        except ModelError:
            continue
        if fits:
            found.append(other.id)
    return found


def carry_templates(store: GalleryStore, models: ModelStore, spec: ModelSpec, actor: str) -> list[str]:
    """Templates of `spec` for everyone known only by templates of a model it carries (`carried_models`): copied,
    not re-embedded, so nobody needs re-enrollment or a rebuild; one audit row per model carried from, when it
    carried anyone. The people carried over (the caller tells the live matcher about them)."""
    carried: list[str] = []
    for old_id in carried_models(models, spec):
        with store.transaction():  # the copies and their audit row together
            people, templates, negatives = store.carry_templates(old_id, spec.id)
            if people:
                details = {"from_model": old_id, "model": spec.id, "people": len(people), "templates": templates}
                store.audit(actor, "templates.carry", None, details | {"negatives": negatives})
        if people:
            log.info("carried %d templates of %d people over from %s to %s", templates, len(people), old_id, spec.id)
        carried += people
    return carried


def rebuild_templates(store: GalleryStore, embedder: FaceEmbedder, old_id: str, actor: str) -> list[str]:
    """Templates of `embedder` from the chips kept with templates of `old_id`, each chip once, in one audited
    transaction; the person of each template added (the caller tells the live matcher about them)."""
    info = embedder.info
    shape = embedder.model.input_shape[1:]
    added: list[str] = []
    with store.transaction():
        for person_id, _, chip, quality in store.chips_to_rebuild(old_id, info.model_id):
            if len(chip) != math.prod(shape):
                continue
            vector = embedder.embed(np.frombuffer(chip, dtype=np.uint8).reshape(shape))
            quality_figures = json.loads(quality)
            store.add_template(
                person_id, vector, model_id=info.model_id, model_sha256=info.sha256, quality=quality_figures, chip=chip
            )
            added.append(person_id)
        details = {"from_model": old_id, "model": info.model_id, "templates": len(added)}
        store.audit(actor, "templates.rebuild", None, details)
    return added
