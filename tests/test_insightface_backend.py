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
from tests.conftest import require_weights


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


def test_similarity_transform_matches_skimage_and_recovers_known_transforms():
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(0)
    for _ in range(5):
        src, dst = rng.uniform(0, 500, (5, 2)), rng.uniform(0, 112, (5, 2))
        reference = SimilarityTransform.from_estimate(src, dst)
        np.testing.assert_allclose(similarity_transform(src, dst), reference.params[:2], atol=1e-9)
    c, s = 2.5 * np.cos(0.3), 2.5 * np.sin(0.3)
    m = np.array([[c, -s, 10.0], [s, c, -4.0]])
    src = rng.uniform(0, 100, (5, 2))
    np.testing.assert_allclose(similarity_transform(src, src @ m[:, :2].T + m[:, 2]), m, atol=1e-9)


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # inside insightface
def test_norm_crop_matches_insightface(photos, chips):
    from insightface.utils import face_align

    for i, photo in enumerate(photos):
        theirs = face_align.norm_crop(photo, landmarks_in(photo, i).astype(np.float32))
        assert chips[i].shape == theirs.shape == (112, 112, 3)
        assert np.abs(chips[i].astype(int) - theirs.astype(int)).max() <= 1
    assert chips.std() > 20  # real picture content, not the black border


def test_embeddings_match_onnxruntime_and_insightface(model_file, chips):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    ours = load_arcface(model_file, providers=["CPUExecutionProvider"])
    assert (ours.input_mean, ours.input_std, ours.input_size) == (127.5, 127.5, 112)
    emb = ours.embed(chips)
    assert emb.shape == (3, 512) and emb.dtype == np.float32

    # onnxruntime directly, with insightface's preprocessing: RGB, (pixel - 127.5) / 127.5, NCHW.
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    blob = ((chips.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(emb, session.run(None, {"input.1": blob})[0], rtol=1e-5, atol=1e-5)

    # insightface's own class: get_feat takes BGR chips (OpenCV's order) and swaps them to RGB.
    theirs = ArcFaceONNX(model_file=str(model_file))
    assert (theirs.input_mean, theirs.input_std) == (ours.input_mean, ours.input_std)
    np.testing.assert_allclose(emb, theirs.get_feat(list(chips[..., ::-1])), rtol=1e-5, atol=1e-5)

    # The tiny model does see the channel order, so the equalities above check it.
    assert np.abs(ours.embed(np.ascontiguousarray(chips[..., ::-1])) - emb).max() > 1e-2 * np.abs(emb).max()

    # Torch interface: NCHW in [-1, 1], same embeddings, no autograd.
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float().div(127.5).sub(1).requires_grad_(True)
    out = ours(x)
    assert isinstance(out, torch.Tensor) and not out.requires_grad
    np.testing.assert_allclose(out.numpy(), emb, rtol=1e-5, atol=1e-5)


def test_mxnet_style_models_take_raw_pixels(tmp_path, chips):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    path = tiny_arcface(tmp_path / "mxnet_style.onnx", mxnet_style=True)
    ours, theirs = ArcFaceEmbedder(path), ArcFaceONNX(model_file=str(path))
    assert (ours.input_mean, ours.input_std) == (theirs.input_mean, theirs.input_std) == (0.0, 1.0)
    np.testing.assert_allclose(ours.embed(chips), theirs.get_feat(list(chips[..., ::-1])), rtol=1e-5, atol=1e-5)


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
