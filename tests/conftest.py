"""Shared fixtures: the real models, the real pipeline, the real face photos in ../shared/data, a real Mosquitto
and its clients. The helpers behind them are in tests/support; this file holds fixtures and the one collection
rule (every test of the fault suite carries the `slow` marker)."""

from __future__ import annotations

import csv
import itertools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.link.mqtt import BrokerSettings, CommandRequest, MqttLink
from agent.link.outbox import OutboxPublisher
from agent.vision.image import load_image
from agent.vision.modelstore import default_models_dir
from agent.vision.pipeline import FacePipeline, PipelineOptions
from tests.support.agent_process import LinkProcess
from tests.support.broker import FAST_LINK, Broker, Certs, Observer, make_certs
from tests.support.commands import write_operator_key
from tests.support.data import SAMPLE, need_shared
from tests.support.factory import closing_factory
from tests.support.markers import require_marker

pytest_plugins = ["pytester"]  # tests/test_markers.py runs pytest on a tree of its own

FAULTS = Path(__file__).resolve().parent / "faults"
OFFLINE = {"schema": 1, "state": "offline"}  # the status a link stopped by a fixture leaves


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`-m "not slow"` is the fast loop: a fault test without the marker would slip into it, so none may."""
    require_marker(items, FAULTS, "slow")


# ------------------------------------------------------------------------------------ data and models


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return need_shared()


@pytest.fixture(scope="session")
def lfw_pairs(shared_data: Path) -> list[tuple[int, bool, Path, Path]]:
    with open(shared_data / "pairs.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [(int(r["fold"]), r["same"] == "1", shared_data / r["path_a"], shared_data / r["path_b"]) for r in rows]


@pytest.fixture(scope="session")
def lfw_faces(lfw_pairs: list[tuple[int, bool, Path, Path]]) -> list[Path]:
    """Every distinct LFW image the official pairs use, in a stable order."""
    return sorted({p for _, _, a, b in lfw_pairs for p in (a, b)})


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return default_models_dir()


@pytest.fixture(scope="session")
def pipeline() -> FacePipeline:
    """The default models on one inference thread: the same detections and embeddings, bit for bit, as the
    default two, and five to eight times faster on a shared 2-core machine, where a second TFLite thread waits
    for a core instead of working (40 LFW photos: 1.6-2.1 s against 9.7-15.6 s with tflite-runtime at load 3,
    2.0-3.2 s against 4.5-5.1 s with ai-edge-litert at a load of 200)."""
    return FacePipeline(PipelineOptions(threads=1))


@pytest.fixture(scope="session")
def fused() -> FacePipeline:
    """The fused embedder by name, whatever the manifest's default is."""
    return FacePipeline(PipelineOptions(embedder="fused-dlib-mobileface-mixed"))


@pytest.fixture(scope="session")
def dlib() -> FacePipeline:
    """dlib int8 by name, whatever the manifest's default is: the embedder today's galleries were enrolled with."""
    return FacePipeline(PipelineOptions(embedder="dlib-resnet29-int8"))


@pytest.fixture(scope="session")
def int8(models_dir: Path) -> bytes:
    """The shipped int8 embedder's bytes: the content of the model releases the update tests send."""
    return (models_dir / "dlib_resnet29_int8.tflite").read_bytes()


@pytest.fixture
def models_copy(tmp_path: Path, models_dir: Path) -> Path:
    """A private copy of the models directory that a test may tamper with."""
    target = tmp_path / "models"
    shutil.copytree(models_dir, target)
    return target


@pytest.fixture(scope="session")
def sample_frame():
    return load_image(SAMPLE)


@pytest.fixture(scope="session")
def operator_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test operator's command key as a PEM file, for `ctl --sign-key` (devices made by the fixtures trust it)."""
    return write_operator_key(tmp_path_factory.mktemp("operator"))


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    """A command key of the test module's own (not the operator's): for devices made to trust it."""
    return Ed25519PrivateKey.generate()


# ------------------------------------------------------------------------------------ broker and clients


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Factory: `start_broker(persistence=True, tls=..., passwords=..., acl_file=...)`; all killed afterwards."""
    numbers = itertools.count()

    def start(**options: Any) -> Broker:
        return Broker(tmp_path / f"broker{next(numbers)}", **options).start()

    with closing_factory(start, Broker.kill) as factory:
        yield factory


@pytest.fixture
def broker(start_broker: Callable[..., Broker]) -> Broker:
    return start_broker()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def observe() -> Iterator[Callable[..., Observer]]:
    """Factory: `observe(broker, ["faceagent/#"], protocol="3.1.1", persistent=True)`; closed afterwards."""
    with closing_factory(Observer, Observer.close) as factory:
        yield factory


@pytest.fixture
def start_link() -> Iterator[Callable[..., MqttLink]]:
    """Factory: `start_link(device, on_command, url=..., protocol=..., tls/credentials...)`: a started MqttLink
    that reconnects fast (FAST_LINK); each is stopped afterwards. `on_command` defaults to ignoring commands."""

    def start(device: str, on_command: Callable[[CommandRequest], None] | None = None, **settings: Any) -> MqttLink:
        link = MqttLink(BrokerSettings(**(FAST_LINK | settings)), device, on_command or (lambda request: None))
        link.start()
        return link

    with closing_factory(start, lambda link: link.stop(OFFLINE, timeout=0.5)) as factory:
        yield factory


@pytest.fixture
def spawn_link() -> Iterator[Callable[..., LinkProcess]]:
    """Factory: `spawn_link(url, device, store)`: the link (and outbox) in a process of its own; killed afterwards."""
    with closing_factory(LinkProcess, LinkProcess.kill) as factory:
        yield factory


@pytest.fixture
def link_outbox() -> Iterator[Callable[..., tuple[MqttLink, OutboxPublisher]]]:
    """Factory for a started MqttLink + OutboxPublisher in this process (device "dev1"); both stopped afterwards."""

    def start(
        url: str, path: Path, *, max_events: int = 100000, protocol: str = "5", storage: Any = None
    ) -> tuple[MqttLink, OutboxPublisher]:
        link = MqttLink(BrokerSettings(url=url, protocol=protocol, **FAST_LINK), "dev1", lambda request: None)
        outbox = OutboxPublisher(path, link, max_events=max_events, poll_seconds=0.05, storage=storage)
        outbox.start()
        link.start()
        return link, outbox

    def stop(running: tuple[MqttLink, OutboxPublisher]) -> None:
        link, outbox = running
        outbox.stop(flush_timeout=0)
        link.stop(OFFLINE, timeout=0.5)

    with closing_factory(start, stop) as factory:
        yield factory
