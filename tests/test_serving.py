"""The pyfunc's input handling and output table, without a registry (fast)."""

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from trainables.label_spaces import CIFAR10_CLASSES, cifar10_mapping
from trainables.models import build_model
from trainables.predict import output_columns, predict_images, to_images


def labels_for(mapping, class_names):
    return {
        "class_names": list(class_names),
        "categories": list(mapping.categories),
        "members": [list(m) for m in mapping.members],
    }


def test_arrays_and_encoded_bytes_of_any_size_give_the_same_rows(shared_data):
    files = sorted((shared_data / "cue-conflict").glob("*/*.png"))[:3]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    from_array = to_images(np.stack(arrays))
    from_bytes = to_images(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    assert all(torch.equal(a, b) for a, b in zip(from_array, from_bytes, strict=True))
    jpeg = io.BytesIO()
    Image.fromarray(arrays[0][:100, :150]).save(jpeg, format="JPEG")  # another size and format
    assert to_images(pd.DataFrame({"image": [jpeg.getvalue()]}))[0].shape == (3, 100, 150)
    # JSON carries pixel values as integers: accepted when they are valid pixels.
    assert to_images(np.stack(arrays).astype(np.int64))[0].dtype == torch.uint8


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 8, 8), np.uint8), r"uint8 array \(N, H, W, 3\), got shape \(2, 8, 8\)"),
        (np.full((1, 8, 8, 3), 300), "pixel values 0..255"),
        (pd.DataFrame({"picture": [b"x"]}), "an 'image' column"),
        (pd.DataFrame({"image": [b"not an image"]}), "row 0: cannot decode"),
    ],
)
def test_bad_input_is_one_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        to_images(bad)


def test_models_that_name_cue_conflict_categories_also_answer_the_category(shared_data):
    torch.manual_seed(0)
    model = build_model(num_classes=10, stem="cifar", topk={"layer2": 0.2}).eval()
    labels = labels_for(cifar10_mapping(), CIFAR10_CLASSES)
    files = sorted((shared_data / "cue-conflict").glob("*/*.png"))[:4]
    table = predict_images(model, labels, 32, to_images(pd.DataFrame({"image": [f.read_bytes() for f in files]})))
    assert list(table.columns) == output_columns(labels) and table.columns[-1] == "category"
    assert set(table["label"]) <= set(CIFAR10_CLASSES)
    assert set(table["category"]) <= {"airplane", "car", "bird", "cat", "dog", "boat", "truck"}
    assert np.allclose(table[[f"prob_{c}" for c in CIFAR10_CLASSES]].sum(axis=1), 1.0, atol=1e-5)
    # The synthetic benchmark's shapes are not cue-conflict categories: no category column.
    shapes = ["circle", "square", "triangle"]
    synthetic = {"class_names": shapes, "categories": shapes, "members": [[0], [1], [2]]}
    assert "category" not in output_columns(synthetic)
