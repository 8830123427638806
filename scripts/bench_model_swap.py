"""Model swap benchmark: what a `model_update` costs the frame loop of an agent with a large gallery.

    .venv/bin/python scripts/bench_model_swap.py                 # 20,000 people / 100,000 templates
    .venv/bin/python scripts/bench_model_swap.py --people 2000 --templates 10000

The agent runs in this process (as `faceagent run` builds it) over the Hamilton frames, on a gallery of
synthetic templates of the shipped embedder, with a local Mosquitto. An operator sends a signed release of
the model in use as version 2 (`begin`, 1 MiB chunks, `commit`): the candidate is checked in a child process,
installed, and the agent switches to it, which means a new pipeline and a matcher of every template of its
embedder. Measured, from the spans of `Recognizer.process`: the longest stall between two frames while the
commit runs (target < 100 ms: nothing that grows with the gallery on the frame loop), beside the same figure
over a quiet window before it; and the commit's round trip. Needs Mosquitto and ../shared/data.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench_common import resolve_data_dir
from _bench_service import FRAMES, build_gallery, frame_spans, run_in_thread, start_mosquitto
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli.releases import manifest_entry
from agent.commands.signing import public_key_text, request_signer
from agent.config import Settings, load_settings
from agent.link.mqtt import BrokerSettings
from agent.link.operator import Operator
from agent.modelupdate.update import sign_model
from agent.service.app import AgentService, RunOptions
from agent.vision.modelstore import MANIFEST_NAME, ModelStore, default_models_dir, embedder_id

DEVICE = "bench-swap"
CHUNK = 1024 * 1024
STALL_TARGET_MS = 100.0


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def stalls(spans: list[tuple[float, float]], start: float, end: float) -> dict[str, float]:
    inside = [span for span in list(spans) if start <= span[0] and span[1] <= end]
    gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(inside)]
    return {"frames": len(inside), "stall_max_ms": 1000 * max(gaps, default=float("nan"))}


def signed_release(key: Ed25519PrivateKey, content: bytes, model_id: str, file: str) -> dict[str, Any]:
    """The model in use as version 2: its file (a fused embedder's: its definition, which names its members) and
    its shipped manifest entry, as `faceagent ctl release` makes one (a fused release must state its whole entry)."""
    entry = manifest_entry(default_models_dir() / MANIFEST_NAME, model_id, content)
    meta = {"model_id": model_id, "role": "embedder", "file": file, "version": "2"}
    meta |= {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content), "entry": entry}
    return meta | {"signature": sign_model(key, meta)}


def call(operator: Operator, phase: str, **args: Any) -> dict[str, Any]:
    reply = operator.call([DEVICE], "model_update", {"phase": phase, **args})[DEVICE]
    if reply is None or reply.get("status") != "ok":
        raise SystemExit(f"error: model_update {phase} failed: {reply}")
    return reply["data"]


def measure(data: Path, people: int, templates: int, quiet_s: float) -> dict[str, Any]:
    settings = Settings()
    model_id = embedder_id(settings.models.dir, settings.models.embedder)
    model_file = ModelStore(None).spec(model_id, "embedder").file
    content = (default_models_dir() / model_file).read_bytes()
    command_key, release_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    figures: dict[str, Any] = {"people": people, "templates": templates, "model_id": model_id}
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as scratch, frame_spans() as spans:
        folder = Path(scratch)
        db = folder / "gallery.db"
        progress(f"writing {people} people / {templates} templates ({model_id}) to {db} ...")
        build_gallery(db, people, templates, model_id)
        broker, port = start_mosquitto(folder)
        url = f"mqtt://127.0.0.1:{port}"
        config = folder / "faceagent.toml"
        config.write_text(
            f'[mqtt]\nurl = "{url}"\ndevice_id = "{DEVICE}"\n[camera]\nfps = 0\nloop = true\n'
            f'[commands]\npublic_keys = ["{public_key_text(command_key)}"]\n'
            f'[models]\nrelease_keys = ["{public_key_text(release_key)}"]\n'
        )
        options = RunOptions(source=f"folder:{data / FRAMES}", db=db, settings_path=config)
        service, loop = run_in_thread(lambda: AgentService(load_settings(config), options))
        try:
            if not service.gallery_loaded.wait(180):
                raise SystemExit("error: the agent did not load the gallery within 180 s")
            with Operator(
                BrokerSettings(url=url, device_id=DEVICE), timeout=600, signer=request_signer(command_key)
            ) as operator:
                while operator.call([DEVICE], "ping", {})[DEVICE] is None:
                    time.sleep(0.5)
                time.sleep(2.0)
                quiet_start = time.monotonic()
                time.sleep(quiet_s)
                figures["quiet"] = stalls(spans, quiet_start, time.monotonic())
                release = signed_release(release_key, content, model_id, model_file)
                call(operator, "begin", job_id="swap-1", **release)
                for index, start in enumerate(range(0, len(content), CHUNK)):
                    piece = base64.b64encode(content[start : start + CHUNK]).decode()
                    call(operator, "chunk", job_id="swap-1", index=index, data=piece)
                commit_start = time.monotonic()
                outcome = call(operator, "commit", job_id="swap-1")
                figures["commit_s"] = time.monotonic() - commit_start
                time.sleep(1.0)
                figures["commit"] = stalls(spans, commit_start, time.monotonic())
                figures["status"] = outcome["status"]
                figures["templates_live"] = len(service.matcher)
        finally:
            service.stop()
            loop.join(timeout=120)
            broker.terminate()
            broker.wait(timeout=10)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--templates", type=int, default=100_000)
    parser.add_argument("--quiet-seconds", type=float, default=5.0)
    parser.add_argument("--data", type=Path, help="the shared data folder (default ../shared/data)")
    args = parser.parse_args()
    data = resolve_data_dir(args.data, [str(FRAMES)])
    figures = measure(data, args.people, args.templates, args.quiet_seconds)
    quiet, commit = figures["quiet"], figures["commit"]
    print(f"model swap on {figures['people']} people / {figures['templates']} templates ({figures['model_id']})")
    print(f"  commit {figures['status']} in {figures['commit_s']:.1f} s; {figures['templates_live']} templates live")
    print(f"  quiet: {quiet['frames']} frames, longest stall between frames {quiet['stall_max_ms']:.1f} ms")
    print(f"  commit: {commit['frames']} frames, longest stall between frames {commit['stall_max_ms']:.1f} ms")
    ok = figures["status"] == "SUCCEEDED" and commit["stall_max_ms"] < STALL_TARGET_MS
    print(f"{'PASS' if ok else 'FAIL'}  longest frame-loop stall during the swap (target < {STALL_TARGET_MS:g} ms)")
    one, five, _ = os.getloadavg()
    print(f"load average {one:.2f} / {five:.2f} (1 / 5 min) on {os.cpu_count()} CPUs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
