"""FaceNet from its frozen TF graph: parity with OpenCV DNN, gradients, identity sanity, errors."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guide_ray import weights
from guide_ray.models.facenet import FaceNet
from tests.helpers import require_weights

ORACLE = Path(__file__).parent / "oracles" / "facenet_opencv.py"
ORACLE_ENV = "GUIDE_RAY_ORACLE_PYTHON"
PROJECT_ORACLE = Path(__file__).parents[1] / ".venv-oracle" / "bin" / "python"  # what `make test` builds
PEOPLE = ("P001", "P002", "P003", "P004")


def oracle_python() -> Path:
    """The separate interpreter with opencv-python-headless==4.5.5.64 and numpy<2."""
    env = os.environ.get(ORACLE_ENV)
    path = Path(env) if env else PROJECT_ORACLE
    if not path.exists():
        pytest.fail(f"no oracle interpreter at {path}: set {ORACLE_ENV} to a python with "
                    f"opencv-python-headless==4.5.5.64 and numpy<2 (`make test` builds .venv-oracle)")
    return path


def photo(person: str, name: str) -> Image.Image:
    return Image.open(weights.directory("openpeople") / person / "assets" / f"{name}.jpg").convert("RGB")


def to_chips(images: list[Image.Image]) -> torch.Tensor:
    """160x160 PIL images -> float NCHW in [-1, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1


def face_chip(im: Image.Image) -> Image.Image:
    """dlib's HOG detector on a downscaled copy; the box squared, grown 1.6x and lifted a little
    to resemble facenet's MTCNN crops (dlib boxes run from the brows to the chin)."""
    import dlib

    scale = 640 / max(im.size)
    small = np.asarray(im.resize((round(im.width * scale), round(im.height * scale))))
    boxes = dlib.get_frontal_face_detector()(small, 1)
    assert boxes, "dlib found no face"
    b = max(boxes, key=lambda r: r.area())
    cx, cy = (b.left() + b.right()) / 2 / scale, (b.top() + b.bottom()) / 2 / scale
    half = 0.8 * max(b.width(), b.height()) / scale
    cy -= 0.1 * half
    box = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
    return im.crop(box).resize((160, 160), Image.BILINEAR)


@pytest.fixture(scope="module")
def model():
    require_weights("facenet-vggface2", "openpeople")
    return FaceNet.from_graphdef(weights.path("facenet-vggface2"))


@pytest.fixture(scope="module")
def portraits():
    """Studio portraits of six people, a fixed box around the face (they are centred)."""
    require_weights("openpeople")
    box = (512, 256, 1536, 1280)
    return to_chips([photo(f"P00{i}", "studio_portrait").crop(box).resize((160, 160), Image.BILINEAR)
                     for i in range(1, 7)])


def test_parity_with_opencv_dnn(model, portraits, tmp_path):
    blobs = model.preprocess(portraits)
    np.save(tmp_path / "blobs.npy", blobs.numpy())
    result = subprocess.run([str(oracle_python()), str(ORACLE), str(weights.path("facenet-vggface2")),
                             str(tmp_path / "blobs.npy"), str(tmp_path / "out.npy")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"oracle failed:\n{result.stderr[-3000:]}"
    expected = np.load(tmp_path / "out.npy")
    with torch.no_grad():
        got = model(portraits).numpy()
    assert got.shape == expected.shape == (len(portraits), 512)
    diff = np.abs(got - expected).max()
    print(f"FaceNet vs OpenCV DNN: max |diff| = {diff:.3g} over {len(portraits)} faces")
    assert diff <= 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_gradients_reach_the_input(model, portraits):
    chips = torch.nn.functional.interpolate(portraits[:2], size=(128, 128), mode="bilinear")
    chips.requires_grad_(True)  # 128x128: also exercises the resize to 160
    emb = model(chips)
    (emb[0] * emb[1]).sum().backward()
    assert chips.grad is not None and torch.isfinite(chips.grad).all()
    assert chips.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_same_person_is_more_similar(model):
    portrait = to_chips([face_chip(photo(p, "studio_portrait")) for p in PEOPLE])
    selfie = to_chips([face_chip(photo(p, "amateur_selfie")) for p in PEOPLE])
    with torch.no_grad():
        cos = model(portrait) @ model(selfie).T  # unit vectors: cosine similarities
    print("cosine, portrait (rows) vs selfie (columns):\n", cos.numpy().round(3))
    for i in range(len(PEOPLE)):
        others = torch.cat([cos[i, :i], cos[i, i + 1:]])
        assert cos[i, i] > others.max(), f"{PEOPLE[i]}: same {cos[i, i]:.3f}, others {others.numpy()}"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (numbers and lengths below 128 here)."""
    return bytes([(number << 3) | 2, len(payload)]) + payload


def test_not_a_graphdef(tmp_path):
    require_weights("facenet-vggface2", "openpeople")
    jpeg = weights.directory("openpeople") / "P001" / "assets" / "studio_portrait.jpg"
    text = tmp_path / "notes.pb"
    text.write_text("this is not a protobuf\n")
    truncated = tmp_path / "truncated.pb"
    truncated.write_bytes(weights.path("facenet-vggface2").read_bytes()[:100_000])
    for path in (jpeg, text, truncated):
        with pytest.raises(ValueError, match="not a binary TensorFlow GraphDef") as err:
            FaceNet.from_graphdef(path)
        assert str(path) in str(err.value)


def test_unknown_op_names_op_and_node(tmp_path):
    graph = tmp_path / "erf.pb"
    graph.write_bytes(_field(1, _field(1, b"x") + _field(2, b"Placeholder"))
                      + _field(1, _field(1, b"y") + _field(2, b"Erf") + _field(3, b"x")))
    with pytest.raises(NotImplementedError, match="'Erf'.*'y'"):
        FaceNet.from_graphdef(graph)


def _varint_field(number: int, value: int) -> bytes:
    """A varint protobuf field (number below 16, value below 128)."""
    return bytes([number << 3, value])


def test_parser_reads_typed_values_and_skips_unknown_fields(tmp_path):
    """protobuf's parser against our declared schema: a broadcast int_val tensor, a packed list,
    a func attr (not in the schema), and fields TensorFlow has but we do not declare."""
    from guide_ray.models.facenet import parse_graphdef

    shape = _field(2, _varint_field(1, 2)) + _field(2, _varint_field(1, 3))  # dims [2, 3]
    tensor = _varint_field(1, 3) + _field(2, shape) + _varint_field(7, 5)  # int32, int_val [5]
    attrs = (_field(5, _field(1, b"value") + _field(2, _field(8, tensor)))
             + _field(5, _field(1, b"strides") + _field(2, _field(1, _field(3, bytes([1, 2, 2, 1])))))
             + _field(5, _field(1, b"f") + _field(2, _field(10, _field(1, b"fn")))))
    graph = tmp_path / "typed.pb"
    graph.write_bytes(
        _field(1, _field(1, b"x") + _field(2, b"Placeholder") + _field(4, b"/cpu:0")
               + _field(6, b"\x0a\x01z"))  # device, experimental_debug_info (not declared)
        + _field(1, _field(1, b"c") + _field(2, b"Const") + attrs + _field(14, b"unknown"))
        + _field(4, _varint_field(1, 27))  # versions
        + _field(5, b"\x0a\x03abc"))  # debug_info (not declared)
    x, c = parse_graphdef(graph)
    assert (x.name, x.op, x.inputs, x.attr) == ("x", "Placeholder", [], {})
    assert (c.name, c.op) == ("c", "Const")
    value = c.attr["value"]
    assert value.dtype == np.int32 and value.shape == (2, 3) and (value == 5).all()
    assert c.attr["strides"] == [1, 2, 2, 1]
    assert c.attr["f"] is None
