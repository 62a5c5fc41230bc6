"""A trained sparse ResNet as an MLflow model: a pyfunc for images, and the torch module beneath.

One logged model carries two flavors. `python_function` is `ImageClassifier`, a `PythonModel`
that takes RGB images (a uint8 array (N, H, W, 3) of any size, or a DataFrame whose `image`
column holds encoded PNG/JPEG bytes, base64 text over HTTP), resizes and normalises them as in
training, and answers one row per image: the predicted class, its probability, every class's
probability, and the cue-conflict category where the classes map to the 16 categories. `pytorch`
points at the same weights, so `mlflow.pytorch.load_model` gives the `torch.nn.Module`.

The signature records outputs only: MLflow cannot describe "an image array or a column of
bytes" as one input schema, and an input schema would make it refuse one of the two forms.
`predict` checks its input itself. The model's classes (`trainables`) must be importable where
it is loaded: serve it with `--env-manager local` in an environment with this package installed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import tempfile
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import pandas as pd
import torch
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema
from PIL import Image

from trainables.checkpoint import mapping_of
from trainables.label_spaces import CATEGORIES
from trainables.models import preprocess

MODEL_NAME = "model"  # the logged model's name in a run's Models tab
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
    if isinstance(value, str):  # the scoring server passes bytes as base64 text
        value = base64.b64decode(value)
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
        return predict_images(self.model, self.labels, self.image_size, to_images(model_input))


def signature(labels: dict[str, list]) -> ModelSignature:
    """Outputs only (see the module docstring)."""
    types_ = {"label": "string", "category": "string"}
    return ModelSignature(
        inputs=None, outputs=Schema([ColSpec(types_.get(c, "double"), c) for c in output_columns(labels)])
    )


def log_model(
    model: torch.nn.Module,
    labels: dict[str, list],
    image_size: int,
    run_id: str,
    experiment_id: str,
    extra_files: Sequence[Path] = (),
    name: str = MODEL_NAME,
) -> ModelInfo:
    """Log `model` as an MLflow model of run `run_id` (its Models tab), with both flavors."""
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        meta = Path(tmp) / "labels.json"
        meta.write_text(json.dumps({"labels": labels, "image_size": image_size}))
        flavor = _flavor(model, meta, list(extra_files))
        # Created here, in the run's experiment: Model.log alone would file it under the current
        # experiment of the process (or of MLFLOW_EXPERIMENT_ID / _NAME), not the run's.
        logged = MlflowClient(mlflow.get_tracking_uri()).create_logged_model(
            experiment_id=experiment_id, name=name, source_run_id=run_id
        )
        return Model.log(
            artifact_path=None,
            name=name,
            flavor=flavor,
            run_id=run_id,
            model_id=logged.model_id,
            signature=signature(labels),
            input_example=np.zeros((1, image_size, image_size, 3), dtype=np.uint8),
            pip_requirements=_requirements(),
        )


def _flavor(model: torch.nn.Module, meta: Path, extra_files: list[Path]) -> types.SimpleNamespace:
    """What `Model.log(flavor=...)` calls: writes the pyfunc, adds the pytorch flavor beside it."""

    def save_model(path: str, mlflow_model: Model, **kwargs: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="torch-") as tmp:
            torch_dir = os.path.join(tmp, "torch")
            # pickle keeps the model's own class (pt2 would return an fx GraphModule).
            mlflow.pytorch.save_model(
                model.cpu().eval(), torch_dir, serialization_format="pickle", pip_requirements=_requirements()
            )
            mlflow.pyfunc.save_model(
                path,
                python_model=ImageClassifier(),
                mlflow_model=mlflow_model,
                artifacts={"torch": torch_dir, "labels": str(meta)},
                **kwargs,
            )
        torch_flavor = Model.load(os.path.join(path, "artifacts", "torch")).flavors["pytorch"]
        mlflow_model.add_flavor(
            "pytorch",
            model_data=f"artifacts/torch/{torch_flavor['model_data']}",
            pytorch_version=torch_flavor["pytorch_version"],
            code=None,
        )
        mlflow_model.save(os.path.join(path, "MLmodel"))
        for extra in extra_files:
            shutil.copy(extra, path)

    return types.SimpleNamespace(__name__="pytorch", save_model=save_model)


def _requirements() -> list[str]:
    from importlib import metadata

    return [f"{name}=={metadata.version(name)}" for name in ("mlflow", "torch", "torchvision", "pandas", "pillow")]
