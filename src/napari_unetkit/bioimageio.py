"""bioimage.io model packages (format 0.5): export a model, and read such packages back safely.

Export (:func:`export_package`) writes one zip file that ``bioimageio test`` accepts:

- ``rdf.yaml``: the model description (inputs, outputs, pre-processing, weights, citations);
- ``weights.pt``: the ``pytorch_state_dict`` weights (a plain ``{name: tensor}`` dictionary),
  with ``unet.py`` (:mod:`napari_unetkit.standalone_unet`, needs only PyTorch) as their
  architecture;
- ``weights_torchscript.pt``: the same network traced to TorchScript;
- ``weights.onnx``: the same network as ONNX (opset 17, dynamic batch and size), checked with
  ``onnxruntime`` where that is installed; left out with a warning without the ``onnx`` package
  or if PyTorch cannot export it;
- ``test_input.npy`` / ``test_output.npy``: a raw image and the probabilities this package's
  :class:`~napari_unetkit.prediction.Predictor` computes for it (float32);
- ``cover.png`` and ``README.md`` (with a Validation section and how instances are obtained).

The input ``image`` has axes ``batch, channel, y, x``; ``y`` and ``x`` accept
``2 * halo + 2**depth + n * 2**depth`` pixels, where ``halo`` (a multiple of ``2**depth``) is the
context each output tile needs (the output's declared halo): the network itself accepts any
multiple of ``2**depth``, and the description's minimum is that of a tile with its halo.
Pre-processing is ``scale_range`` with the model's percentiles per channel over ``y, x`` (the
spec's linear percentile interpolation, that of :func:`numpy.percentile`; its fixed
``eps = 1e-6`` in the denominator is the only difference from
:func:`napari_unetkit.normalization.apply_percentiles`). The network ends in a softmax, so the
output ``probabilities`` (``batch, channel, y, x``, one channel per class) needs no
post-processing step, which every consumer runs alike. The model's whole description
(normalisation, mode, classes, weight-map and training settings, instance settings) is stored
under ``config.napari_unetkit.description``, with the instance settings the predictor uses
under ``config.napari_unetkit.instances``.

Reading (:func:`read_package`, used by :func:`napari_unetkit.modelfile.load_model` for every
front end) is as safe as reading a ``.unet`` file: the zip's entries are checked (no absolute or
``..`` paths, bounded count, sizes and compression ratios) before anything is read, nothing is
extracted to disk, the YAML is parsed with the safe loader, every file the description lists is
checked against its SHA-256, the weights are loaded with ``torch.load(weights_only=True)``, and
the package's Python source is never imported. Packages made by other programs are refused with
one sentence.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import io
import json
import math
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import yaml
from torch import nn

from napari_unetkit import __version__, standalone_unet
from napari_unetkit.io import atomic_write
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import ModelFileError, _json_default, load_model
from napari_unetkit.normalization import (
    NormalizationSettings,
    apply_percentiles,
    check_image_dtype,
    image_percentiles,
)
from napari_unetkit.progress import check_cancel

#: bioimage.io model description format written by :func:`export_package`.
SPEC_FORMAT_VERSION = "0.5.4"
#: Key under ``config`` holding what napari-unetkit needs, and its format marker and version.
CONFIG_KEY = "napari_unetkit"
CONFIG_FORMAT = "napari-unetkit-bioimageio"
CONFIG_FORMAT_VERSION = 1
#: Names of the description file inside a package, in the order they are looked for.
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml", "model.yaml")
#: File names inside exported packages.
RDF_FILE = "rdf.yaml"
WEIGHTS_FILE = "weights.pt"
TORCHSCRIPT_FILE = "weights_torchscript.pt"
ONNX_FILE = "weights.onnx"
#: ONNX operator set of the ``onnx`` weights.
ONNX_OPSET = 17
ARCHITECTURE_FILE = "unet.py"
TEST_INPUT_FILE = "test_input.npy"
TEST_OUTPUT_FILE = "test_output.npy"
SAMPLE_INPUT_FILE = "sample_input.tif"
SAMPLE_OUTPUT_FILE = "sample_output.tif"
COVER_FILE = "cover.png"
README_FILE = "README.md"
#: Tensor ids of the input and output.
INPUT_ID = "image"
OUTPUT_ID = "probabilities"
#: Package file name ending added when the output name does not end in ``.zip``.
PACKAGE_SUFFIX = ".bioimageio.zip"
#: Largest side of the test image (after cropping), unless the network needs more.
MAX_TEST_SIZE = 512
#: Side of the synthetic test image used when none is given (at least the network's minimum).
DEFAULT_TEST_SIZE = 256

#: Limits applied to a package before anything in it is read.
MAX_ENTRIES = 1000
MAX_RDF_BYTES = 16 * 1024**2
MAX_ENTRY_BYTES = 8 * 1024**3
MAX_TOTAL_BYTES = 16 * 1024**3
#: Entries larger than ``RATIO_CHECK_BYTES`` may not expand more than ``MAX_RATIO`` times.
MAX_RATIO = 200
RATIO_CHECK_BYTES = 1024**2
#: Slack allowed over the exact size of the weights' tensors (the torch.save container).
WEIGHTS_SLACK_BYTES = 4 * 1024**2

U_NET_DOI = "10.1007/978-3-319-24574-4_28"
PROJECT_URL = "https://github.com/napari-unetkit/napari-unetkit"


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def tile_halo(config: UNetConfig) -> int:
    """Return the output halo packages declare: the predictor's default tile margin (pixels).

    It is a multiple of ``2**depth`` (:func:`napari_unetkit.tiling.default_halo`), exact
    (tiles equal whole-image prediction) up to depth 5 with transposed convolutions.
    """
    from napari_unetkit.tiling import default_halo

    return default_halo(config)


def min_input_size(config: UNetConfig) -> int:
    """Smallest height and width a package declares: one ``2**depth`` block plus both halos."""
    return 2 * tile_halo(config) + config.downsampling_factor


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def _resolve_model(model: UNet | str | os.PathLike, description: Mapping | None):
    """Return a CPU eval copy of the network and its description."""
    if isinstance(model, (str, os.PathLike)):
        if description is not None:
            raise TypeError("Pass a description only with a UNet, not with a model file.")
        net, info = load_model(model, device="cpu")
        return net, dict(info)
    if not isinstance(model, UNet):
        raise TypeError(f"export_package expects a UNet or a model file, got {type(model)}.")
    if description is None:
        raise TypeError("export_package needs the model's description with a UNet.")
    net = copy.deepcopy(model).to("cpu").eval()
    try:  # plain JSON values (NumPy scalars, tensors, paths converted), as save_model stores
        info = json.loads(json.dumps(dict(description), default=_json_default))
    except (TypeError, ValueError) as error:
        raise ValueError(f"The model description is not JSON-serialisable: {error}.") from None
    info["architecture"] = net.config.to_dict()
    return net, info


def _normalization(description: Mapping) -> NormalizationSettings:
    data = description.get("normalization")
    settings = NormalizationSettings() if data is None else NormalizationSettings.from_dict(data)
    if settings.high <= 1.0:
        raise ValueError(
            f"bioimage.io packages need an upper normalisation percentile above 1; this model "
            f"uses {settings.high:g}, so it cannot be exported."
        )
    return settings


def _synthetic_test_image(config: UNetConfig, size: int) -> np.ndarray:
    """Return a synthetic nuclei image ``(C, size, size)``; extra channels are scaled copies."""
    from napari_unetkit.synthetic import synthetic_nuclei

    image, _ = synthetic_nuclei((size, size), seed=0)
    image = image.astype(np.float32)
    return np.stack([image * (1.0 + 0.25 * c) for c in range(config.in_channels)])


def prepare_test_image(
    config: UNetConfig, image: np.ndarray | None = None, channel_axis: int | None = None
) -> np.ndarray:
    """Return the package's raw test image: float32 ``(C, Y, X)`` of a size the package accepts.

    Parameters
    ----------
    config : UNetConfig
        The architecture.
    image : numpy.ndarray, optional
        A 2D image (with channels at ``channel_axis`` if the model reads several); its centre is
        cropped to sides that are a multiple of ``2**depth``, at least
        :func:`min_input_size` and at most ``max(MAX_TEST_SIZE, min_input_size)``. ``None``: a
        synthetic nuclei image.
    channel_axis : int, optional
        The channel axis of ``image``.

    Returns
    -------
    numpy.ndarray
        float32 ``(C, Y, X)``.

    Raises
    ------
    ValueError
        If the image has the wrong channel count, is not 2D or is too small.
    """
    factor = config.downsampling_factor
    smallest = min_input_size(config)
    if image is None:
        return _synthetic_test_image(config, max(DEFAULT_TEST_SIZE, smallest))
    image = np.asarray(image)
    check_image_dtype(image.dtype)
    image = image[None] if channel_axis is None else np.moveaxis(image, channel_axis, 0)
    if image.ndim != 3:
        raise ValueError(
            f"The test image must be one 2D image (with a channel axis for colour models), got "
            f"shape {image.shape}."
        )
    if image.shape[0] != config.in_channels:
        raise ValueError(
            f"The model reads {config.in_channels} channel(s) but the test image has "
            f"{image.shape[0]}; give the channel axis or another image."
        )
    largest = max(MAX_TEST_SIZE, smallest)
    sides = []
    for size in image.shape[1:]:
        if size < smallest:
            raise ValueError(
                f"The test image must be at least {smallest} x {smallest} pixels for this "
                f"network (depth {config.depth}), got {image.shape[1]} x {image.shape[2]}."
            )
        sides.append(min(size, largest) // factor * factor)
    top = (image.shape[1] - sides[0]) // 2
    left = (image.shape[2] - sides[1]) // 2
    crop = image[:, top : top + sides[0], left : left + sides[1]]
    return np.ascontiguousarray(crop, dtype=np.float32)


def reference_probabilities(model: UNet, description: Mapping, image_cyx: np.ndarray) -> np.ndarray:
    """Probabilities ``(K, Y, X)`` of a raw test image by this package's predictor (float32).

    The image is normalised as :meth:`~napari_unetkit.prediction.Predictor.predict` does (its
    own percentiles) and predicted in one tile, on the CPU, in float32.
    """
    from napari_unetkit.prediction import Predictor

    low, high = image_percentiles(image_cyx, channel_axis=0, settings=_normalization(description))
    normalised = apply_percentiles(image_cyx, low, high)
    predictor = Predictor(
        model,
        dict(description),
        device="cpu",
        precision="float32",
        tile_size=max(image_cyx.shape[1:]),
        border="network",
    )
    return predictor.predict_slice(normalised)


def standalone_network(model: UNet) -> nn.Module:
    """Return the package's architecture with ``model``'s weights, in eval mode on the CPU.

    The network is :class:`napari_unetkit.standalone_unet.UNet`; it returns probabilities.
    """
    config = model.config
    net = standalone_unet.UNet(**config.to_dict())
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    net.load_state_dict(state, strict=True)
    return net.eval()


def _tensor_bytes(save: Callable[[io.BytesIO], None]) -> bytes:
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


def _tiff_bytes(array: np.ndarray) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack")
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


_PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 159, 0],
        [86, 180, 233],
        [0, 158, 115],
        [240, 228, 66],
        [0, 114, 178],
        [213, 94, 0],
        [204, 121, 167],
    ],
    dtype=np.uint8,
)


def _cover_png(normalised_cyx: np.ndarray, probs: np.ndarray, mode: str) -> bytes:
    """Return a 2:1 PNG: the normalised test image (left) and the network's output (right)."""
    from matplotlib.image import imsave

    if normalised_cyx.shape[0] == 3:
        left = np.moveaxis(normalised_cyx, 0, -1)
    else:
        left = np.repeat(normalised_cyx[0][..., None], 3, axis=-1)
    left = (np.clip(left, 0.0, 1.0) * 255).round().astype(np.uint8)
    if mode == "instances":
        right = np.repeat((probs[-1] * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    else:
        classes = np.argmax(probs, axis=0)
        right = _PALETTE[(classes + 1) % len(_PALETTE)]
    buffer = io.BytesIO()
    imsave(buffer, np.concatenate([left, right], axis=1), format="png")
    return buffer.getvalue()


def _class_names(description: Mapping, config: UNetConfig) -> list[str]:
    if description.get("mode") == "instances":
        return ["background", "foreground"]
    names = description.get("class_names")
    if isinstance(names, (list, tuple)) and len(names) == config.n_classes:
        return [str(name) for name in names]
    return [f"class{k + 1}" for k in range(config.n_classes)]


def _channel_id(name: str, index: int, used: set[str]) -> str:
    """Return an identifier-like, unique channel name for the description."""
    text = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or f"class{index + 1}"
    if text[0].isdigit():
        text = f"c{text}"
    while text in used:
        text = f"{text}_{index}"
    used.add(text)
    return text


def instance_settings(description: Mapping) -> dict:
    """Return the instance settings the predictor uses for this model, as a plain dictionary.

    These are the description's stored settings (``"instances"``, chosen on validation data
    after training), or the legacy ones for models that store none
    (:func:`napari_unetkit.prediction.instance_settings_of`).
    """
    from napari_unetkit.prediction import instance_settings_of

    return instance_settings_of(description).to_dict()


def _instance_steps(instances: Mapping) -> list[str]:
    """Describe the instance pipeline of ``instances`` (``InstanceSettings.to_dict()``)."""
    if instances.get("method") == "watershed":
        return [
            "1. foreground = probability above `threshold`; seeds = 4-connected components of "
            "the probability above `seed_threshold` (the confident cores of the objects);",
            "2. each seed grows by a watershed of the probability over the foreground, so "
            "touching objects meet where the probability is lowest between them; a foreground "
            "component without a seed becomes an object of its own;",
            "3. objects smaller than `min_size` pixels are removed; ids are made sequential.",
        ]
    return [
        "1. foreground = probability above `threshold`;",
        "2. 4-connected components; components smaller than `min_size` pixels are removed;",
        "3. background pixels within `grow` pixels of two different objects (the ridges) "
        "are given to the nearest object; ids are made sequential.",
    ]


def _readme(
    name: str,
    description: Mapping,
    config: UNetConfig,
    settings: NormalizationSettings,
    classes: list[str],
    instances: Mapping,
) -> str:
    from napari_unetkit.modelfile import describe_model

    mode = description.get("mode")
    factor = config.downsampling_factor
    smallest = min_input_size(config)
    lines = [
        f"# {name}",
        "",
        "A 2D U-Net (Ronneberger, Fischer and Brox 2015) trained and exported with "
        f"[napari-unetkit]({PROJECT_URL}) {__version__}.",
        "",
        "```",
        describe_model(description),
        "```",
        "",
        "## Input",
        "",
        f"`{INPUT_ID}`: float32 `(batch, channel, y, x)` with {config.in_channels} channel(s). "
        f"Height and width: multiples of {factor}, at least {smallest} (one {factor} px block "
        f"plus the {tile_halo(config)} px halo on each side that tiled prediction needs).",
        "",
        f"Pre-processing: each channel is scaled so that its percentile {settings.low:g} maps "
        f"to 0 and its percentile {settings.high:g} to 1 (`scale_range` over `y, x`, linear "
        "percentile interpolation; values outside are kept). napari-unetkit takes these "
        "percentiles over the whole image or stack (estimated from a subsample above 4 million "
        "pixels per channel); a tile-by-tile consumer that computes them per tile gets "
        "slightly different inputs.",
        "",
        "## Output",
        "",
        f"`{OUTPUT_ID}`: float32 `(batch, channel, y, x)`, the softmax over the classes "
        f"({', '.join(classes)}): the network ends in a softmax, no post-processing step.",
        "",
    ]
    if mode == "instances":
        settings_text = ", ".join(f"`{k}={v}`" for k, v in instances.items())
        lines += [
            "## Instances",
            "",
            "This is an instance model trained with separated targets: touching objects are "
            "cut apart by background ridges during training (boundary weight map), so the "
            "`foreground` probability is low between touching objects. The bioimage.io "
            "description cannot express the instance post-processing; napari-unetkit obtains "
            "instances from the foreground probability as follows "
            f"(`napari_unetkit.postprocess.InstanceSettings`: {settings_text}):",
            "",
            *_instance_steps(instances),
            "",
            "Loading this package in napari-unetkit (`unetkit predict --model <package>.zip` or "
            "the napari Predict panel) runs exactly that pipeline. The settings and the whole "
            "napari-unetkit model description are under `config.napari_unetkit` in `rdf.yaml`.",
            "",
        ]
    else:
        lines += [
            "## Classes",
            "",
            "Semantic labels are the argmax over the output channels (napari-unetkit writes "
            "class `k` as label `k + 1`).",
            "",
        ]
    lines += [
        "## Validation",
        "",
        "The test tensors are a raw image and the probabilities napari-unetkit's predictor "
        "computed for it (float32, on the CPU). To validate the model on unseen data, predict "
        "annotated images it was not trained on and compare with the annotation, e.g. "
        "`unetkit predict --model <package>.zip --image img.tif --out pred.tif` followed by "
        "`unetkit evaluate --truth truth.tif --pred pred.tif` (foreground IoU, Dice, instance "
        "F1 and average precision at IoU 0.5).",
        "",
    ]
    metrics = description.get("metrics")
    if isinstance(metrics, Mapping) and metrics.get("best_validation_score") is not None:
        lines += [
            "Best validation score during training: "
            f"{metrics.get('best_validation_score')} ({metrics.get('best_validation_metric')}), "
            "on slices held out from the training images.",
            "",
        ]
    lines += [
        "## Citation",
        "",
        "- O. Ronneberger, P. Fischer and T. Brox. U-Net: Convolutional Networks for "
        f"Biomedical Image Segmentation. MICCAI 2015. doi:{U_NET_DOI}",
        f"- napari-unetkit: {PROJECT_URL}",
        "",
    ]
    return "\n".join(lines)


def _package_name(name: str | None, out: Path) -> str:
    if name is None:
        stem = out.name
        for suffix in (PACKAGE_SUFFIX, ".zip"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        name = f"{stem} U-Net"
    name = re.sub(r"[^A-Za-z0-9_+\- ()]", " ", name)
    name = " ".join(name.split())[:64].strip()
    if len(name) < 5:
        name = f"{name} U-Net".strip()
    return name


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file(name: str, files: Mapping[str, bytes]) -> dict:
    return {"source": name, "sha256": _sha256(files[name])}


def _rdf(
    *,
    name: str,
    description: Mapping,
    config: UNetConfig,
    settings: NormalizationSettings,
    classes: list[str],
    instances: Mapping,
    files: Mapping[str, bytes],
    authors: Sequence[str],
    license: str,
    tags: Sequence[str],
) -> dict:
    factor = config.downsampling_factor
    halo = tile_halo(config)
    used: set[str] = set()
    channel_names = [f"channel{c}" for c in range(config.in_channels)]
    output_names = [_channel_id(n, k, used) for k, n in enumerate(classes)]
    mode = description.get("mode")
    torch_version = torch.__version__.split("+")[0]
    text = (
        f"2D U-Net ({mode}) exported by napari-unetkit: {config.in_channels}-channel images in, "
        f"softmax probabilities of {config.n_classes} classes out."
    )
    space_in = [
        {"type": "space", "id": axis, "size": {"min": 2 * halo + factor, "step": factor}}
        for axis in ("y", "x")
    ]
    space_out = [
        {
            "type": "space",
            "id": axis,
            "size": {"tensor_id": INPUT_ID, "axis_id": axis},
            "halo": halo,
        }
        for axis in ("y", "x")
    ]
    return {
        "type": "model",
        "format_version": SPEC_FORMAT_VERSION,
        "name": name,
        "description": text,
        "authors": [{"name": author} for author in authors],
        "cite": [
            {
                "text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for "
                "Biomedical Image Segmentation. MICCAI 2015.",
                "doi": U_NET_DOI,
            },
            {"text": "napari-unetkit", "url": PROJECT_URL},
        ],
        "license": license,
        "tags": list(tags),
        "documentation": README_FILE,
        "covers": [COVER_FILE],
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [
            {
                "id": INPUT_ID,
                "description": "Raw image; percentile scaling per channel is the pre-processing.",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": channel_names},
                    *space_in,
                ],
                "test_tensor": _file(TEST_INPUT_FILE, files),
                "sample_tensor": _file(SAMPLE_INPUT_FILE, files),
                "data": {"type": "float32"},
                "preprocessing": [
                    {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                    {
                        "id": "scale_range",
                        "kwargs": {
                            "axes": ["y", "x"],
                            "min_percentile": settings.low,
                            "max_percentile": settings.high,
                        },
                    },
                ],
            }
        ],
        "outputs": [
            {
                "id": OUTPUT_ID,
                "description": f"Softmax probabilities of the classes {', '.join(classes)}.",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": output_names},
                    *space_out,
                ],
                "test_tensor": _file(TEST_OUTPUT_FILE, files),
                "sample_tensor": _file(SAMPLE_OUTPUT_FILE, files),
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                **_file(WEIGHTS_FILE, files),
                "architecture": {
                    **_file(ARCHITECTURE_FILE, files),
                    "callable": "UNet",
                    "kwargs": {**config.to_dict(), "probabilities": True},
                },
                "pytorch_version": torch_version,
            },
            "torchscript": {
                **_file(TORCHSCRIPT_FILE, files),
                "pytorch_version": torch_version,
                "parent": "pytorch_state_dict",
            },
            **(
                {
                    "onnx": {
                        **_file(ONNX_FILE, files),
                        "opset_version": ONNX_OPSET,
                        "parent": "pytorch_state_dict",
                    }
                }
                if ONNX_FILE in files
                else {}
            ),
        },
        "config": {
            "bioimageio": {
                "architecture_type": "U-Net",
                "architecture_description": (
                    f"U-Net, depth {config.depth}, {config.base_channels} base channels, "
                    f"{config.norm} norm, {config.upsampling} up-sampling, softmax output"
                ),
            },
            CONFIG_KEY: {
                "format": CONFIG_FORMAT,
                "format_version": CONFIG_FORMAT_VERSION,
                "package_version": __version__,
                "instances": dict(instances) if mode == "instances" else None,
                "description": dict(description),
            },
        },
    }


def _onnx_bytes(net: nn.Module, x: torch.Tensor, expected: np.ndarray) -> bytes | None:
    """Return ``net`` as ONNX (dynamic batch, height and width), or ``None`` with a warning.

    Uses PyTorch's TorchScript-based exporter, which needs the ``onnx`` package (in the
    ``bioimageio`` extra; without it the package has no ONNX weights). Where ``onnxruntime``
    is installed, the exported network must reproduce ``expected``.
    """
    axes = {0: "batch", 2: "y", 3: "x"}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (x,),
                buffer,
                dynamo=False,
                input_names=[INPUT_ID],
                output_names=[OUTPUT_ID],
                dynamic_axes={INPUT_ID: axes, OUTPUT_ID: axes},
                opset_version=ONNX_OPSET,
            )
    except Exception as error:  # an optional format: the package is complete without it
        warnings.warn(
            f"The package has no ONNX weights: PyTorch could not export them ({_short(error)}).",
            stacklevel=3,
        )
        return None
    data = buffer.getvalue()
    try:
        import onnxruntime
    except ImportError:
        return data
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {INPUT_ID: x.numpy()})
    _check_close(out[0], expected, "ONNX network")
    return data


def _check_close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=1e-5):
        worst = float(np.abs(a - b).max()) if a.shape == b.shape else math.inf
        raise RuntimeError(
            f"The exported {what} does not reproduce napari-unetkit's probabilities "
            f"(largest difference {worst:.3g}); please report this."
        )


def export_package(
    model: UNet | str | os.PathLike,
    out: str | os.PathLike,
    *,
    description: Mapping | None = None,
    test_image: np.ndarray | None = None,
    channel_axis: int | None = None,
    name: str | None = None,
    authors: Sequence[str] = ("napari-unetkit user",),
    license: str = "CC-BY-4.0",
    tags: Iterable[str] = (),
    cancel=None,
) -> Path:
    """Write a bioimage.io model package (format 0.5) of a model; see the module docstring.

    Parameters
    ----------
    model : UNet or path
        A network (then ``description`` is required) or a model file (``.unet`` or a package
        written by this function).
    out : str or os.PathLike
        The zip file to write (atomically); ``.bioimageio.zip`` is appended to a name that does
        not end in ``.zip``.
    description : mapping, optional
        The model description, with a ``UNet``.
    test_image : numpy.ndarray, optional
        A raw 2D image like the training images (see :func:`prepare_test_image`); default: a
        synthetic nuclei image.
    channel_axis : int, optional
        Channel axis of ``test_image``.
    name : str, optional
        Human-readable model name (letters, digits, spaces, ``_+-()``); default from ``out``.
    authors : sequence of str
        Names of the model's authors.
    license : str
        SPDX licence identifier of the weights (default CC-BY-4.0).
    tags : iterable of str
        Extra tags.
    cancel : threading.Event, optional
        Checked between the steps.

    Returns
    -------
    pathlib.Path
        The written package.

    Raises
    ------
    ValueError
        If the model cannot be expressed as a package (e.g. an upper percentile at or below 1)
        or the test image does not fit it.
    napari_unetkit.modelfile.ModelFileError
        If the model file cannot be read.
    """
    net, info = _resolve_model(model, description)
    config = net.config
    settings = _normalization(info)
    if info.get("mode") not in ("instances", "classes"):
        raise ValueError(
            f"The model's mode must be instances or classes, got {info.get('mode')!r}."
        )
    authors = [str(a).strip() for a in authors if str(a).strip()]
    if not authors:
        raise ValueError("Give at least one author name.")
    out = Path(out)
    if not out.name.lower().endswith(".zip"):
        out = out.with_name(out.name + PACKAGE_SUFFIX)

    raw = prepare_test_image(config, test_image, channel_axis)
    check_cancel(cancel)
    probs = reference_probabilities(net, info, raw)
    check_cancel(cancel)
    low, high = image_percentiles(raw, channel_axis=0, settings=settings)
    normalised = apply_percentiles(raw, low, high)
    standalone = standalone_network(net)
    x = torch.from_numpy(normalised[None])
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but it is the format
        # deepImageJ, QuPath and bioimageio.core run.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # group norm's size check
        _check_close(standalone(x)[0].numpy(), probs, "architecture and state dict")
        traced = torch.jit.trace(standalone, x, check_trace=False)
        torchscript = _tensor_bytes(lambda f: torch.jit.save(traced, f))
        onnx = _onnx_bytes(standalone, x, probs)
        _check_close(traced(x)[0].numpy(), probs, "TorchScript network")
    check_cancel(cancel)

    classes = _class_names(info, config)
    instances = instance_settings(info)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    files: dict[str, bytes] = {
        WEIGHTS_FILE: _tensor_bytes(lambda f: torch.save(state, f)),
        TORCHSCRIPT_FILE: torchscript,
        ARCHITECTURE_FILE: Path(standalone_unet.__file__).read_bytes(),
        TEST_INPUT_FILE: _npy_bytes(raw[None]),
        TEST_OUTPUT_FILE: _npy_bytes(probs[None].astype(np.float32)),
        SAMPLE_INPUT_FILE: _tiff_bytes(raw[None]),
        SAMPLE_OUTPUT_FILE: _tiff_bytes(probs[None].astype(np.float32)),
        COVER_FILE: _cover_png(normalised, probs, info["mode"]),
    }
    if onnx is not None:
        files[ONNX_FILE] = onnx
    name = _package_name(name, out)
    files[README_FILE] = _readme(name, info, config, settings, classes, instances).encode()
    mode_tag = "instance-segmentation" if info["mode"] == "instances" else "semantic-segmentation"
    all_tags = ["unet", "segmentation", mode_tag, "2d", "pytorch", "napari-unetkit", *tags]
    rdf = _rdf(
        name=name,
        description=info,
        config=config,
        settings=settings,
        classes=classes,
        instances=instances,
        files=files,
        authors=authors,
        license=license,
        tags=list(dict.fromkeys(all_tags)),
    )
    text = yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True)
    check_cancel(cancel)
    with atomic_write(out, "wb") as file, zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(RDF_FILE, text)
        for file_name, data in files.items():
            zf.writestr(file_name, data)
    return out


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _root_rdf_name(names: Iterable[str]) -> str | None:
    present = set(names)
    return next((name for name in RDF_NAMES if name in present), None)


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip file with a bioimage.io description at its root.

    ``.unet`` files (``torch.save`` archives, also zip files) keep their entries in a folder,
    so they are never taken for packages.
    """
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return _root_rdf_name(zf.namelist()) is not None
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip entry is refused (``None`` when it is acceptable)."""
    name = info.filename
    if "\\" in name or "\x00" in name or re.match(r"^[A-Za-z]:", name) or name.startswith("/"):
        return f"the entry {name!r} has an absolute or non-portable path"
    if ".." in PurePosixPath(name).parts:
        return f"the entry {name!r} points outside the package ('..')"
    if info.file_size > MAX_ENTRY_BYTES:
        return f"the entry {name!r} would expand to {info.file_size} bytes"
    if info.file_size > RATIO_CHECK_BYTES and info.file_size > MAX_RATIO * max(
        info.compress_size, 1
    ):
        return (
            f"the entry {name!r} expands {info.file_size // max(info.compress_size, 1)} times "
            "(a zip bomb)"
        )
    return None


def _check_entries(zf: zipfile.ZipFile, fail: Callable[[str], ModelFileError]) -> None:
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise fail(f"it has {len(infos)} entries, more than the {MAX_ENTRIES} allowed")
    seen: set[str] = set()
    total = 0
    for info in infos:
        problem = _entry_problem(info)
        if problem:
            raise fail(problem)
        if info.filename in seen:
            raise fail(f"the entry {info.filename!r} appears twice")
        seen.add(info.filename)
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise fail(f"it would expand to {total} bytes")


def _read_entry(
    zf: zipfile.ZipFile, name: str, limit: int, fail: Callable[[str], ModelFileError]
) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise fail(f"it lists {name!r} but the file is missing") from None
    if info.file_size > limit:
        raise fail(f"{name!r} is larger ({info.file_size} bytes) than this model can need")
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as error:
        raise fail(f"{name!r} is damaged ({_short(error)})") from None


def _short(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return (text[:117] + "...") if len(text) > 120 else text.rstrip(".")


def _file_entries(node: object) -> Iterable[tuple[str, object]]:
    """Every ``(source, sha256)`` pair in a description (any mapping with a ``source``)."""
    if isinstance(node, Mapping):
        source = node.get("source")
        if isinstance(source, str):
            yield source, node.get("sha256")
        for value in node.values():
            yield from _file_entries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _file_entries(value)


def _local_name(source: str) -> str | None:
    """Return the zip entry a description's ``source`` names, or ``None`` for a URL."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        return None
    return str(PurePosixPath(source.removeprefix("./")))


def _check_hashes(zf: zipfile.ZipFile, rdf: Mapping, fail: Callable[[str], ModelFileError]):
    """Every local file the description lists must exist and match its SHA-256."""
    for source, expected in _file_entries(rdf):
        name = _local_name(source)
        if name is None:
            continue
        try:
            info = zf.getinfo(name)
        except KeyError:
            raise fail(f"it lists {source!r} but the file is missing") from None
        if expected is None:
            continue
        digest = hashlib.sha256()
        try:
            with zf.open(info) as stream:
                for chunk in iter(lambda s=stream: s.read(1 << 20), b""):
                    digest.update(chunk)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as error:
            raise fail(f"{source!r} is damaged ({_short(error)})") from None
        if digest.hexdigest() != str(expected).lower():
            raise fail(f"{source!r} does not match its SHA-256 in the description (modified?)")


def _weights_limit(config: UNetConfig) -> int:
    with torch.device("meta"):
        state = UNet(config).state_dict()
    return sum(t.numel() * t.element_size() for t in state.values()) + WEIGHTS_SLACK_BYTES


def read_package(path: str | os.PathLike) -> tuple[dict, dict, UNetConfig]:
    """Read a bioimage.io package exported by :func:`export_package`, safely.

    Parameters
    ----------
    path : str or os.PathLike
        The package (a zip file).

    Returns
    -------
    description : dict
        The napari-unetkit model description stored in the package.
    state : dict
        The ``pytorch_state_dict`` weights, ``{name: tensor}`` (not yet checked against the
        architecture; :func:`napari_unetkit.modelfile.load_model` does that).
    config : UNetConfig
        The architecture.

    Raises
    ------
    ModelFileError
        If the file is not a zip, has hostile or oversized entries, lacks a file its description
        lists or a file does not match its SHA-256, or was not exported by napari-unetkit (then
        the sentence says so).
    """
    path = Path(path)

    def fail(reason: str) -> ModelFileError:
        return ModelFileError(f"{path} is not a usable bioimage.io model package ({reason}).")

    if not zipfile.is_zipfile(path):
        raise fail("it is not a zip file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise fail(f"it could not be opened: {_short(error)}") from None
    with zf:
        _check_entries(zf, fail)
        rdf_name = _root_rdf_name(zf.namelist())
        if rdf_name is None:
            raise fail(f"it has no {RDF_NAMES[0]} description at its top level")
        text = _read_entry(zf, rdf_name, MAX_RDF_BYTES, fail)
        try:
            rdf = yaml.safe_load(text.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as error:
            raise fail(f"its {rdf_name} is not valid YAML: {_short(error)}") from None
        if not isinstance(rdf, dict) or rdf.get("type") != "model":
            raise fail(f"its {rdf_name} does not describe a model")
        extra = rdf.get("config")
        ours = extra.get(CONFIG_KEY) if isinstance(extra, dict) else None
        if not isinstance(ours, dict) or ours.get("format") != CONFIG_FORMAT:
            raise ModelFileError(
                f"{path} is a bioimage.io model that napari-unetkit cannot run, because it was "
                "not exported by napari-unetkit; run it with bioimageio.core, deepImageJ or the "
                "program that made it."
            )
        version = ours.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise fail(f"its napari-unetkit format version {version!r} is invalid")
        if version > CONFIG_FORMAT_VERSION:
            raise ModelFileError(
                f"{path} was exported by a newer napari-unetkit (package format version "
                f"{version}, this version reads up to {CONFIG_FORMAT_VERSION}); update "
                "napari-unetkit to load it."
            )
        description = ours.get("description")
        if not isinstance(description, dict):
            raise fail("its napari-unetkit description is missing")
        try:
            config = UNetConfig.from_dict(description.get("architecture"))
        except (TypeError, ValueError) as error:
            raise fail(f"its architecture is invalid: {_short(error)}") from None
        weights = rdf.get("weights")
        entry = weights.get("pytorch_state_dict") if isinstance(weights, dict) else None
        source = entry.get("source") if isinstance(entry, dict) else None
        if not isinstance(source, str) or _local_name(source) is None:
            raise fail("it has no pytorch_state_dict weights file")
        if not entry.get("sha256"):
            raise fail("its pytorch_state_dict weights have no SHA-256")
        _check_hashes(zf, rdf, fail)
        data = _read_entry(zf, _local_name(source), _weights_limit(config), fail)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise fail(f"its weights could not be read safely: {_short(error)}") from None
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise fail("its weights are not a dictionary of tensors")
    return description, state, config
