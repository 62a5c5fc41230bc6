"""A trained sparse ResNet as an MLflow model: a pyfunc for images, and the torch module beneath.

One logged model carries two flavors. `python_function` is `trainables.predict.ImageClassifier`,
a `PythonModel` that takes RGB images, resizes and normalises them as in training, and answers
one row per image: the predicted class, its probability, every class's probability, and the
cue-conflict category where the classes map to the 16 categories. `pytorch` points at the same
weights, so `mlflow.pytorch.load_model` gives the `torch.nn.Module`.

The `trainables` package travels with the model (`code_paths`, under `code/`; both flavors put it
on `sys.path`): the model loads and serves where torch, torchvision and MLflow are installed and
this project is not. The signature records outputs only: MLflow cannot describe "an image array
or a column of bytes" as one input schema, and an input schema would make it refuse one of the
two forms. `predict` checks its input itself.
"""

from __future__ import annotations

import json
import os
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema

import trainables
from trainables.predict import ImageClassifier, output_columns

# The code a logged model needs, bundled with it (`code_paths`): the `trainables` package.
CODE = str(Path(trainables.__file__).parent)

MODEL_NAME = "model"  # the logged model's name in a run's Models tab


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
    name: str = MODEL_NAME,
    created: Callable[[str], None] | None = None,
) -> ModelInfo:
    """Log `model` as an MLflow model of run `run_id` (its Models tab), with both flavors.

    `created` is told the logged model's id as soon as it exists, before its upload: a caller
    that is interrupted during the upload can delete it.
    """
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        meta = Path(tmp) / "labels.json"
        meta.write_text(json.dumps({"labels": labels, "image_size": image_size}))
        flavor = _flavor(model, meta)
        # Created here, in the run's experiment: Model.log alone would file it under the current
        # experiment of the process (or of MLFLOW_EXPERIMENT_ID / _NAME), not the run's.
        logged = MlflowClient(mlflow.get_tracking_uri()).create_logged_model(
            experiment_id=experiment_id, name=name, source_run_id=run_id
        )
        if created is not None:
            created(logged.model_id)
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


def _flavor(model: torch.nn.Module, meta: Path) -> types.SimpleNamespace:
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
                code_paths=[CODE],  # the pickled module's classes load where this project is not installed
                **kwargs,
            )
        torch_flavor = Model.load(os.path.join(path, "artifacts", "torch")).flavors["pytorch"]
        mlflow_model.add_flavor(
            "pytorch",
            model_data=f"artifacts/torch/{torch_flavor['model_data']}",
            pytorch_version=torch_flavor["pytorch_version"],
            code="code",  # the pyfunc's bundled code: mlflow.pytorch.load_model puts it on sys.path too
        )
        mlflow_model.save(os.path.join(path, "MLmodel"))

    return types.SimpleNamespace(__name__="pytorch", save_model=save_model)


def _requirements() -> list[str]:
    from importlib import metadata

    packages = ("mlflow", "torch", "torchvision", "pandas", "pillow", "pydantic")
    return [f"{name}=={metadata.version(name)}" for name in packages]
