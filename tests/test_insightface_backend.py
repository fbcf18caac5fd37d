import pickle

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from guide_ray import weights
from guide_ray.images import load_image
from guide_ray.models.insightface_backend import (ARCFACE_TEMPLATE, ArcFaceEmbedder, load_arcface, norm_crop,
                                                  similarity_transform)
from tests.helpers import require_weights

# insightface's norm_crop calls scikit-image's deprecated SimilarityTransform.estimate; the module
# silences it, but pytest restores the warning filters around each test.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


def tiny_arcface(path, mxnet_style: bool = False, input_hw=(112, 112)):
    """An ONNX model with ArcFace's interface: "input.1" [N, 3, 112, 112] -> conv, ReLU, global pool, Gemm -> [N, 512].

    ``mxnet_style`` starts the graph with Sub/Mul pixel normalisation, as insightface's MXNet conversions do.
    """
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in [
        ("conv_w", rng.normal(size=(8, 3, 7, 7)) * 0.1), ("conv_b", rng.normal(size=8) * 0.1),
        ("fc_w", rng.normal(size=(8, 512))), ("fc_b", rng.normal(size=512)),
        ("mean", np.array(127.5)), ("scale", np.array(1 / 128))]]
    nodes = []
    x = "input.1"
    if mxnet_style:
        nodes += [helper.make_node("Sub", [x, "mean"], ["centred"], name="_minus0"),
                  helper.make_node("Mul", ["centred", "scale"], ["normed"], name="_mul0")]
        x = "normed"
    nodes += [
        helper.make_node("Conv", [x, "conv_w", "conv_b"], ["c"], name="Conv_0", strides=[4, 4], pads=[3, 3, 3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="Relu_1"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="GlobalAveragePool_2"),
        helper.make_node("Flatten", ["p"], ["f"], name="Flatten_3"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["fc1"], name="Gemm_4"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [None, 3, *input_hw])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [None, 512])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_arcface(tmp_path_factory.mktemp("arcface") / "w600k_tiny.onnx")


@pytest.fixture(scope="module")
def photos():
    require_weights("openpeople")
    root = weights.directory("openpeople")
    return [load_image(root / p / "assets" / "studio_portrait.jpg") for p in ("P001", "P002", "P003")]


def landmarks_in(photo: np.ndarray, seed: int) -> np.ndarray:
    """The template carried into the photo by a known similarity (scale ~7, a tilt), plus 2 px jitter."""
    rng = np.random.default_rng(seed)
    angle, scale = np.deg2rad(rng.uniform(-15, 15)), rng.uniform(6, 8)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array(photo.shape[1::-1]) / 2 + rng.uniform(-100, 100, 2)
    return (ARCFACE_TEMPLATE - 56) @ rot.T + centre + rng.uniform(-2, 2, (5, 2))


@pytest.fixture(scope="module")
def chips(photos):
    return np.stack([norm_crop(p, landmarks_in(p, i)) for i, p in enumerate(photos)])


def random_similarity(rng) -> np.ndarray:
    angle, scale = rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 8)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, rng.uniform(-300, 300)], [s, c, rng.uniform(-300, 300)]])


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ m[:, :2].T + m[:, 2]


def test_similarity_transform_recovers_known_transforms():
    rng = np.random.default_rng(0)
    for _ in range(10):
        m, src = random_similarity(rng), rng.uniform(0, 500, (5, 2))
        np.testing.assert_allclose(similarity_transform(src, apply(m, src)), m, atol=1e-9)
    # With noise it is the least-squares fit: no worse than the transform the points came from.
    src = rng.uniform(0, 500, (5, 2))
    m = random_similarity(rng)
    dst = apply(m, src) + rng.normal(0, 3, (5, 2))
    fit = similarity_transform(src, dst)
    assert ((apply(fit, src) - dst) ** 2).sum() <= ((apply(m, src) - dst) ** 2).sum()
    # Never a reflection, even onto mirrored points.
    mirrored = similarity_transform(src, src * [-1, 1])
    assert np.linalg.det(mirrored[:, :2]) > 0


def test_similarity_transform_refuses_bad_point_sets():
    with pytest.raises(ValueError, match="point sets"):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="point sets"):
        similarity_transform(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)


def test_template_is_insightfaces_and_read_only():
    from insightface.utils import face_align

    np.testing.assert_array_equal(ARCFACE_TEMPLATE, face_align.arcface_dst)
    with pytest.raises(ValueError):
        ARCFACE_TEMPLATE[0, 0] = 0


@pytest.mark.parametrize("size", [112, 224])
def test_norm_crop_puts_the_landmarks_on_the_template(size):
    """A red Gaussian spot at each landmark of a tilted, scaled face lands on the template point
    (scaled to the chip), in the red channel only: the warp is right and RGB stays RGB."""
    m = np.array([[2.4, -0.6, 180.0], [0.6, 2.4, 90.0]])  # template -> image: scale ~2.5, 14 degrees
    landmarks = apply(m, ARCFACE_TEMPLATE)
    yy, xx = np.mgrid[:480, :640]
    for k, (x, y) in enumerate(landmarks):
        image = np.zeros((480, 640, 3), np.uint8)
        image[..., 0] = np.round(255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 4.0 ** 2)))
        chip = norm_crop(image, landmarks, size)
        assert chip.shape == (size, size, 3) and chip.dtype == np.uint8
        assert chip[..., 1:].max() == 0 and chip[..., 0].max() > 100
        w = chip[..., 0].astype(float)
        cy, cx = np.mgrid[:size, :size]
        centroid = np.array([(w * cx).sum(), (w * cy).sum()]) / w.sum()
        np.testing.assert_allclose(centroid, ARCFACE_TEMPLATE[k] * size / 112, atol=0.25)
    with pytest.raises(ValueError, match="multiple of 112"):
        norm_crop(image, landmarks, 100)


def test_norm_crop_of_real_photos(chips):
    assert chips.shape == (3, 112, 112, 3) and chips.dtype == np.uint8
    assert chips.std() > 20  # real picture content, not the black border


def test_embeddings_match_onnxruntime_run_directly(model_file, chips):
    ours = load_arcface(model_file, providers=["CPUExecutionProvider"])
    assert (ours.input_mean, ours.input_std, ours.input_size) == (127.5, 127.5, 112)
    emb = ours.embed(chips)
    assert emb.shape == (3, 512) and emb.dtype == np.float32

    # onnxruntime directly, with ArcFace's preprocessing: RGB, (pixel - 127.5) / 127.5, NCHW.
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    blob = ((chips.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(emb, session.run(None, {"input.1": blob})[0], rtol=1e-5, atol=1e-5)
    # The tiny model does see the channel order, so the equality above checks it.
    assert np.abs(ours.embed(np.ascontiguousarray(chips[..., ::-1])) - emb).max() > 1e-2 * np.abs(emb).max()
    # insightface's BGR entry point (get_feat swaps OpenCV's BGR to RGB) agrees with our RGB one.
    np.testing.assert_allclose(emb, ours.runner.get_feat(list(chips[..., ::-1])), rtol=1e-5, atol=1e-5)
    assert ours.session.get_providers() == ["CPUExecutionProvider"]

    # Torch interface: NCHW in [-1, 1], same embeddings, no autograd.
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float().div(127.5).sub(1).requires_grad_(True)
    out = ours(x)
    assert isinstance(out, torch.Tensor) and not out.requires_grad
    np.testing.assert_allclose(out.numpy(), emb, rtol=1e-5, atol=1e-5)


def test_mxnet_style_models_take_raw_pixels(tmp_path, chips):
    path = tiny_arcface(tmp_path / "mxnet_style.onnx", mxnet_style=True)
    ours = ArcFaceEmbedder(path)
    assert (ours.input_mean, ours.input_std) == (0.0, 1.0)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = chips.astype(np.float32).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(ours.embed(chips), session.run(None, {"input.1": raw})[0], rtol=1e-5, atol=1e-5)


def test_model_pack_lookup(tmp_path, model_file, chips):
    pack = tmp_path / "models" / "tiny_pack"
    pack.mkdir(parents=True)
    (pack / "w600k_tiny.onnx").write_bytes(model_file.read_bytes())
    tiny_arcface(pack / "det_like.onnx", input_hw=(None, None))  # a detector's dynamic input: not ArcFace
    expected = ArcFaceEmbedder(model_file).embed(chips)

    by_pack = ArcFaceEmbedder.from_pack("tiny_pack", root=tmp_path)
    assert by_pack.model_file.name == "w600k_tiny.onnx"
    np.testing.assert_allclose(by_pack.embed(chips), expected)
    assert load_arcface(pack).model_file == by_pack.model_file
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        ArcFaceEmbedder.from_pack("buffalo_l", root=tmp_path)
    with pytest.raises(ValueError, match="aligned chips"):
        by_pack.embed(chips[:, :100])

    clone = pickle.loads(pickle.dumps(by_pack))  # Ray ships it by path; the session is rebuilt
    np.testing.assert_allclose(clone.embed(chips), expected)
