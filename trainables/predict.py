"""What a served model runs: RGB images in, one row of class decisions per image out.

This module and the `trainables` package it imports are bundled with every logged model (MLflow's
`code_paths`), so `mlflow.pyfunc.load_model` and `mlflow models serve` need torch, torchvision,
MLflow and pydantic, not this project. It imports nothing of `orchestrator`, Ray or Optuna.

`predict` takes a uint8 array (N, H, W, 3) of any size, or a DataFrame whose `image` column holds
encoded PNG/JPEG bytes (base64 text over HTTP), or the dict `{"image": [...]}` that MLflow's
scoring server makes of `{"instances": [{"image": ...}, ...]}`. What it cannot use is refused
with the model's own message as an `MlflowException` of INVALID_PARAMETER_VALUE, which the scoring
server answers as a 400 carrying that message.
"""

from __future__ import annotations

import base64
import io
import json
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


def output_columns(labels: dict[str, list]) -> list[str]:
    """The prediction table's columns, in order."""
    columns = ["label", "probability"] + [f"prob_{name}" for name in labels["class_names"]]
    return columns + (["category"] if names_categories(labels) else [])


def names_categories(labels: dict[str, list]) -> bool:
    """True when the model's classes map onto the 16 cue-conflict categories (not the synthetic shapes)."""
    return set(labels["categories"]) <= set(CATEGORIES)


def to_images(model_input: Any) -> list[torch.Tensor]:
    """uint8 (N, H, W, 3) array, or a DataFrame of encoded images -> uint8 (3, H, W) tensors."""
    if isinstance(model_input, dict) and set(model_input) == {IMAGE_COLUMN}:
        model_input = pd.DataFrame({IMAGE_COLUMN: list(model_input[IMAGE_COLUMN])})  # {"instances": [{"image"...}]}
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(
                f"expected a DataFrame with an {IMAGE_COLUMN!r} column of PNG/JPEG bytes, "
                f"got columns {list(model_input.columns)}"
            )
        return [_decode(value, i) for i, value in enumerate(model_input[IMAGE_COLUMN])]
    array = np.asarray(model_input)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected RGB images as a uint8 array (N, H, W, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        # JSON carries integers: accept them when they are valid pixel values.
        if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
            raise ValueError(f"expected uint8 pixel values 0..255, got dtype {array.dtype}")
        array = array.astype(np.uint8)
    return [torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1) for image in array]


def _decode(value: Any, index: int) -> torch.Tensor:
    try:
        if isinstance(value, str):  # the scoring server passes bytes as base64 text
            value = base64.b64decode(value, validate=True)
    except ValueError:
        raise ValueError(f"row {index}: the image is text but not base64 (send PNG/JPEG bytes, base64)") from None
    try:
        with Image.open(io.BytesIO(bytes(value))) as image:
            return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    except Exception as error:  # PIL raises several unrelated types for broken files
        raise ValueError(f"row {index}: cannot decode the image bytes as PNG/JPEG: {error}") from error


@torch.no_grad()
def predict_images(
    model: torch.nn.Module, labels: dict[str, list], image_size: int, images: list[torch.Tensor]
) -> pd.DataFrame:
    """One row per image: label, probability, per-class probabilities, category where there is one."""
    model.eval()
    batches = []
    for start in range(0, len(images), BATCH):
        # Each image is resized to the training size on its own: the inputs may differ in size.
        batch = torch.cat([preprocess(image.unsqueeze(0), image_size) for image in images[start : start + BATCH]])
        batches.append(model(batch).float())
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
        try:
            images = to_images(model_input)
        except ValueError as error:  # the client's input: its message must reach the client
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None
        return predict_images(self.model, self.labels, self.image_size, images)
