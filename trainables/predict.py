"""What a served model runs: RGB images in, one row of class decisions per image out.

This module and the `trainables` package it imports are bundled with every logged model (MLflow's
`code_paths`), so `mlflow.pyfunc.load_model` and `mlflow models serve` need torch, torchvision,
MLflow and pydantic, not this project. It imports nothing of `orchestrator`, Ray or Optuna.

`predict` takes a uint8 array (N, H, W, 3) of any size, or a DataFrame whose `image` column holds
encoded PNG/JPEG bytes (base64 text over HTTP), or the dict `{"image": [...]}` that MLflow's
scoring server makes of `{"instances": [{"image": ...}, ...]}`, or (in process) a list of
(H, W, 3) arrays of different sizes. What it cannot use is refused with the model's own message,
naming the row, as an `MlflowException` of INVALID_PARAMETER_VALUE, which the scoring server
answers as a 400 carrying that message.

A request is bounded before anything is decoded in full: at most MAX_IMAGE_PIXELS per image and
MAX_REQUEST_PIXELS in all, read from each PNG/JPEG header (a small file can promise a huge image).
Images are then decoded and resized one at a time, so memory does not grow with the request.
Over HTTP, nested lists of unequal lengths never reach the model: MLflow's JSON parser refuses
them with its own 400 ("inhomogeneous shape"); send images of different sizes as encoded bytes.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import mlflow.pytorch
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from PIL import Image

from trainables.checkpoint import mapping_of
from trainables.label_spaces import CATEGORIES
from trainables.models import preprocess

IMAGE_COLUMN = "image"
BATCH = 64
# What one request may make the model decode. A 4096 x 4096 image is 16.8 M pixels: 50 MB decoded,
# 200 MB while it is resized; images are decoded one at a time, so that is the peak per request.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_REQUEST_PIXELS = 8 * MAX_IMAGE_PIXELS  # bounds the work of one request: 134 M pixels


def output_columns(labels: dict[str, list]) -> list[str]:
    """The prediction table's columns, in order."""
    columns = ["label", "probability"] + [f"prob_{name}" for name in labels["class_names"]]
    return columns + (["category"] if names_categories(labels) else [])


def names_categories(labels: dict[str, list]) -> bool:
    """True when the model's classes map onto the 16 cue-conflict categories (not the synthetic shapes)."""
    return set(labels["categories"]) <= set(CATEGORIES)


def to_images(model_input: Any) -> list[torch.Tensor]:
    """uint8 (N, H, W, 3) array, a list of (H, W, 3) arrays, or a DataFrame of encoded images -> uint8 (3, H, W)."""
    return list(iter_images(model_input))


def iter_images(model_input: Any) -> Iterator[torch.Tensor]:
    """The request's images one at a time, as uint8 (3, H, W), after checking every size against the limits.

    Every image's size is read first (a PNG/JPEG header is enough), so a request over the limits is
    refused before anything is decoded in full; then each is decoded only when it is consumed.
    """
    if isinstance(model_input, dict) and set(model_input) == {IMAGE_COLUMN}:
        model_input = pd.DataFrame({IMAGE_COLUMN: list(model_input[IMAGE_COLUMN])})  # {"instances": [{"image"...}]}
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(
                f"expected a DataFrame with an {IMAGE_COLUMN!r} column of PNG/JPEG bytes, "
                f"got columns {list(model_input.columns)}"
            )
        encoded = [_encoded_bytes(value, i) for i, value in enumerate(model_input[IMAGE_COLUMN])]
        _check_sizes([_header_size(data, i) for i, data in enumerate(encoded)])
        return (_decode(data, i) for i, data in enumerate(encoded))
    if isinstance(model_input, (list, tuple)):  # images of different sizes: one array per row
        rows = [_pixel_array(row, f"row {i}: ", ndim=3) for i, row in enumerate(model_input)]
    else:
        array = _pixel_array(model_input, "", ndim=4)
        rows = list(array)
    _check_sizes([(row.shape[1], row.shape[0]) for row in rows])
    return (torch.from_numpy(np.array(row)).permute(2, 0, 1) for row in rows)  # a copy: the input may be read-only


def _pixel_array(value: Any, where: str, ndim: int) -> np.ndarray:
    """`value` as uint8 RGB pixels of `ndim` dimensions ((N,) H, W, 3), or ValueError saying which row is wrong."""
    shape = "(N, H, W, 3)" if ndim == 4 else "(H, W, 3)"
    try:
        array = np.asarray(value)
    except ValueError:  # numpy refuses nested lists of unequal lengths
        raise ValueError(
            f"{where}expected RGB images as a uint8 array {shape}, got nested lists of unequal lengths (a ragged "
            "array); send images of different sizes as a list of arrays or as encoded PNG/JPEG bytes"
        ) from None
    if array.ndim != ndim or array.shape[-1] != 3:
        raise ValueError(f"{where}expected RGB images as a uint8 array {shape}, got shape {array.shape}")
    if array.dtype != np.uint8:
        # JSON carries integers: accept them when they are valid pixel values.
        if not np.issubdtype(array.dtype, np.integer) or (array.size and (array.min() < 0 or array.max() > 255)):
            raise ValueError(f"{where}expected uint8 pixel values 0..255, got dtype {array.dtype}")
        array = array.astype(np.uint8)
    return array


def _check_sizes(sizes: list[tuple[int, int]]) -> None:
    """Refuse a request whose images exceed MAX_IMAGE_PIXELS each or MAX_REQUEST_PIXELS together."""
    for i, (width, height) in enumerate(sizes):
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(
                f"row {i}: the image is {width}x{height} pixels, over this model's limit of {MAX_IMAGE_PIXELS:,} "
                f"per image; downscale it (the model sees it at its training size anyway)"
            )
    total = sum(width * height for width, height in sizes)
    if total > MAX_REQUEST_PIXELS:
        raise ValueError(
            f"the request's {len(sizes)} images hold {total:,} pixels, over this model's limit of "
            f"{MAX_REQUEST_PIXELS:,} per request; send them in smaller requests"
        )


def _encoded_bytes(value: Any, index: int) -> bytes:
    """One row's encoded image: bytes, or base64 text (how the scoring server passes bytes)."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise ValueError(f"row {index}: the image is text but not base64 (send PNG/JPEG bytes, base64)") from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise ValueError(f"row {index}: expected PNG/JPEG bytes (or base64 text), got {type(value).__name__}")


def _header_size(data: bytes, index: int) -> tuple[int, int]:
    """An encoded image's (width, height) from its header alone: nothing is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:  # lazy: PIL reads the header here, the pixels on load
            return image.size
    except Image.DecompressionBombError:  # PIL's own limit, far above ours, checked on the header too
        raise ValueError(
            f"row {index}: the image is over this model's limit of {MAX_IMAGE_PIXELS:,} pixels per image; downscale it"
        ) from None
    except Exception as error:  # PIL raises several unrelated types for broken files
        raise ValueError(f"row {index}: cannot decode the image bytes as PNG/JPEG: {error}") from None


def _decode(data: bytes, index: int) -> torch.Tensor:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    except Exception as error:  # a header that promised more than the data holds, among others
        raise ValueError(f"row {index}: cannot decode the image bytes as PNG/JPEG: {error}") from None


@torch.no_grad()
def predict_images(
    model: torch.nn.Module, labels: dict[str, list], image_size: int, images: Iterable[torch.Tensor]
) -> pd.DataFrame:
    """One row per image: label, probability, per-class probabilities, category where there is one."""
    model.eval()
    batches, batch = [], []
    for image in images:
        # Resized to the training size as it comes: the full-size image is dropped before the next is decoded.
        batch.append(preprocess(image.unsqueeze(0), image_size))
        if len(batch) == BATCH:
            batches.append(model(torch.cat(batch)).float())
            batch = []
    if batch:
        batches.append(model(torch.cat(batch)).float())
    logits = torch.cat(batches) if batches else torch.zeros(0, len(labels["class_names"]))
    probabilities = logits.softmax(dim=-1)
    best = probabilities.argmax(dim=-1)
    names = labels["class_names"]
    table: dict[str, Any] = {
        "label": [names[i] for i in best.tolist()],
        "probability": probabilities.gather(1, best.unsqueeze(1)).squeeze(1).double().numpy(),
    }
    for i, name in enumerate(names):
        table[f"prob_{name}"] = probabilities[:, i].double().numpy()
    if names_categories(labels):
        table["category"] = mapping_of(labels).decide(logits) if len(logits) else []
    return pd.DataFrame(table, columns=output_columns(labels))


class ImageClassifier(PythonModel):
    """The pyfunc flavor: images in, one row of class decisions per image out."""

    # predict checks its own input (see the module docstring): MLflow's type-hint validation,
    # and its warning that there are no hints, are switched off.
    _skip_type_hint_validation = True

    def load_context(self, context: PythonModelContext) -> None:
        self.model = mlflow.pytorch.load_model(context.artifacts["torch"], map_location="cpu").eval()
        meta = json.loads(Path(context.artifacts["labels"]).read_text())
        self.labels, self.image_size = meta["labels"], meta["image_size"]

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # hints would become a schema
        try:  # decoding happens as predict_images consumes the images: its errors are the client's too
            return predict_images(self.model, self.labels, self.image_size, iter_images(model_input))
        except ValueError as error:  # the client's input: its message must reach the client
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None
