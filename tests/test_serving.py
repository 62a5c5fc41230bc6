"""The pyfunc's input handling and output table, without a registry (fast)."""

import io
import os
from pathlib import Path

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


def png_of(width, height):
    """A valid black RGB PNG of any size, written row by row: a few hundred KB for hundreds of megapixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)  # filter byte, then the pixels
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_images_over_the_pixel_limits_are_refused_from_their_headers():
    from trainables import predict

    small = png_of(64, 48)
    assert to_images(pd.DataFrame({"image": [small]}))[0].shape == (3, 48, 64)  # the writer makes real PNGs
    with pytest.raises(
        ValueError, match=r"row 1: the image is 5000x4000 pixels, over this model's limit of 16,777,216"
    ):
        to_images(pd.DataFrame({"image": [small, png_of(5000, 4000)]}))
    # Each image within the limit, together over it.
    count = predict.MAX_REQUEST_PIXELS // predict.MAX_IMAGE_PIXELS + 1
    arrays = [np.zeros((4096, 4096, 3), np.uint8)] * count
    with pytest.raises(ValueError, match=f"the request's {count} images hold .* over this model's limit"):
        to_images(arrays)
    with pytest.raises(ValueError, match="over this model's limit of 16,777,216 pixels per image"):
        to_images(pd.DataFrame({"image": [png_of(20000, 20000)]}))  # over PIL's own bomb limit too


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)],
            r"row 1: expected .*\(H, W, 3\), got shape \(8, 8\)",
        ),
        ([np.zeros((8, 8, 3), np.uint8), [[1, 2, 3], [4, 5]]], "row 1: .*nested lists of unequal lengths"),
        ([[[[1, 2, 3]], [[1, 2, 3], [4, 5, 6]]]], "row 0: .*unequal lengths"),
        (pd.DataFrame({"image": [png_of(4, 4), "@@@"]}), "row 1: the image is text but not base64"),
        (pd.DataFrame({"image": [png_of(4, 4), 7]}), "row 1: expected PNG/JPEG bytes .* got int"),
        (pd.DataFrame({"image": [png_of(4, 4)[:40]]}), "row 0: cannot decode"),
    ],
)
def test_every_bad_row_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        to_images(bad)


def test_images_of_different_sizes_are_answered_row_by_row(shared_data):
    files = sorted((shared_data / "cue-conflict").glob("*/*.png"))[:2]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    mixed = [arrays[0], arrays[1][:100, :150]]
    images = to_images(mixed)
    assert [tuple(i.shape) for i in images] == [(3, 224, 224), (3, 100, 150)]


BOMB_MEMORY = """
import resource, sys
import pandas as pd
from tests_bomb import png_of
from trainables.predict import ImageClassifier
from trainables.models import build_model
from mlflow.exceptions import MlflowException

model = ImageClassifier()
model.model = build_model(num_classes=3, stem="cifar", topk={}).eval()
model.labels = {"class_names": ["a", "b", "c"], "categories": ["a", "b", "c"], "members": [[0], [1], [2]]}
model.image_size = 32
bombs = pd.DataFrame({"image": [png_of(4096, 4096)] * 9 + [png_of(12000, 12000)]})
print("request bytes", sum(map(len, bombs["image"])), file=sys.stderr)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for request in (bombs, bombs.iloc[9:]):
    try:
        model.predict(None, request)
    except MlflowException as error:
        print("refused:", error.message[:80], file=sys.stderr)
    else:
        sys.exit("not refused")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_png_bomb_is_refused_with_bounded_memory(tmp_path):
    """Ten small PNGs that decode to 1.6 G pixels (4.8 GB): refused, the process's peak memory grows < 64 MB."""
    import inspect
    import subprocess
    import sys

    (tmp_path / "tests_bomb.py").write_text(inspect.getsource(png_of))
    project = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", BOMB_MEMORY],
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{project}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count("refused:") == 2, out.stderr
    grown_mb = int(out.stdout.split()[-1])
    assert grown_mb < 64, f"peak memory grew by {grown_mb} MB"
