"""MTCNN with facenet-pytorch's weights on real openpeople photos: faces found, landmarks that agree
with dlib's, nothing on blank images, and strict loading of the three nets."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from guide_ray import weights
from guide_ray.models.face_align import FaceAligner, FaceError, landmarks5
from guide_ray.models.insightface_backend import ARCFACE_TEMPLATE, similarity_transform
from guide_ray.models.mtcnn import MTCNN, ONet, PNet, RNet, load_net
from tests.helpers import require_weights

pytestmark = pytest.mark.weights

PHOTOS = [(p, kind) for p in ("P001", "P002", "P003", "P004", "P005", "P006")
          for kind in ("studio_portrait", "amateur_selfie")]


def photo(person: str, kind: str, width: int = 512) -> np.ndarray:
    im = Image.open(weights.directory("openpeople") / person / "assets" / f"{kind}.jpg").convert("RGB")
    return np.asarray(im.resize((width, round(im.height * width / im.width)), Image.LANCZOS))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """MTCNN runs hundreds of small ops per image; on a busy shared CPU, handing each of them to a
    second OpenMP thread costs more than the op (20x slower here), so these tests use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mtcnn():
    require_weights("mtcnn", "openpeople")
    return MTCNN("cpu")


@pytest.fixture(scope="module")
def aligner():
    require_weights("dlib-landmarks68", "dlib-mmod")
    return FaceAligner()


@pytest.mark.parametrize("person,kind", PHOTOS)
def test_one_face_whose_landmarks_agree_with_dlib(mtcnn, aligner, person, kind):
    image = photo(person, kind)
    boxes, probs, marks = mtcnn.detect(image, f"{person} {kind}")
    assert boxes.shape == (1, 4) and probs.shape == (1,) and marks.shape == (1, 5, 2)
    assert probs[0] > 0.9
    x0, y0, x1, y1 = boxes[0]
    width = x1 - x0
    assert 40 < width < 400 and 0.8 < (y1 - y0) / width < 1.5
    assert ((marks[0] > (x0, y0)) & (marks[0] < (x1, y1))).all()
    # dlib's eye centres (mean of the eye contour), nose tip and mouth corners: the same five
    # points located by an unrelated model; observed agreement is within 5% of the face width.
    dlib5 = landmarks5(aligner.face(image, f"{person} {kind}", min_size=20))
    assert (np.linalg.norm(marks[0] - dlib5, axis=1) < 0.06 * width).all()


def test_landmarks_align_onto_the_arcface_template(mtcnn):
    for person in ("P001", "P004"):
        marks = mtcnn.landmarks5(photo(person, "studio_portrait"))
        m = similarity_transform(marks, ARCFACE_TEMPLATE)
        aligned = marks @ m[:, :2].T + m[:, 2]
        # A frontal face's five points fit the template up to a few px of 112; points in another
        # order (eyes or mouth corners swapped) would miss it by tens of px.
        assert np.abs(aligned - ARCFACE_TEMPLATE).max() < 4
        assert np.abs(aligned[[1, 0, 2, 4, 3]] - ARCFACE_TEMPLATE).max() > 15


def test_a_sheet_of_expressions_gives_sixteen_faces_most_probable_first(mtcnn):
    sheet = photo("P001", "emotions_sheet")
    boxes, probs, marks = mtcnn.detect(sheet)
    assert len(boxes) == len(probs) == len(marks) == 16
    assert (np.diff(probs) <= 0).all() and probs[-1] > 0.9
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    cell = np.array(sheet.shape[1::-1]) / 4  # one face per cell of the 4x4 grid
    cells = {tuple(c) for c in (centres // cell).astype(int)}
    assert len(cells) == 16


def test_largest_face_is_the_one_aligned(mtcnn):
    canvas = np.full((400, 700, 3), 255, dtype=np.uint8)
    canvas[:320, :320] = photo("P001", "studio_portrait", width=320)
    canvas[100:260, 400:560] = photo("P003", "studio_portrait", width=160)
    boxes, _, marks = mtcnn.detect(canvas)
    assert len(boxes) == 2
    largest = mtcnn.landmarks5(canvas, "pair", select="largest")
    assert largest[:, 0].max() < 320
    assert np.array_equal(mtcnn.landmarks5(canvas, "pair", select="probability"), marks[0])
    with pytest.raises(ValueError, match="select"):
        mtcnn.landmarks5(canvas, select="first")


def test_blank_images_give_no_face(mtcnn):
    for value in (0, 128, 255):
        boxes, probs, marks = mtcnn.detect(np.full((240, 320, 3), value, dtype=np.uint8))
        assert boxes.shape == (0, 4) and probs.shape == (0,) and marks.shape == (0, 5, 2)
    with pytest.raises(FaceError, match="no face in blank.png"):
        mtcnn.landmarks5(np.zeros((240, 320, 3), dtype=np.uint8), "blank.png")
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        mtcnn.detect(np.zeros((240, 320), dtype=np.uint8), "gray.png")


def test_pyramid_scales(mtcnn):
    scales = mtcnn.scales(100, 150)
    # 12 / 20 of the short side is 60 px; a step of 0.709 until it drops under 12 px.
    assert len(scales) == math.floor(math.log(12 / 60) / math.log(0.709)) + 1 == 5
    np.testing.assert_allclose(scales, [0.6 * 0.709 ** k for k in range(5)])


def test_nets_load_strictly(tmp_path):
    require_weights("mtcnn")
    for net, name in ((PNet(), "pnet.pt"), (RNet(), "rnet.pt"), (ONet(), "onet.pt")):
        state = torch.load(weights.path("mtcnn", name), weights_only=True)
        load_net(net, weights.path("mtcnn", name))
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
        assert not any(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match=r"pnet.pt does not hold RNet's weights"):
        load_net(RNet(), weights.path("mtcnn", "pnet.pt"))
    state = torch.load(weights.path("mtcnn", "onet.pt"), weights_only=True)
    del state["dense6_3.bias"]
    torch.save(state, tmp_path / "onet.pt")
    with pytest.raises(ValueError, match=r"(?s)onet.pt does not hold ONet's weights.*dense6_3.bias"):
        load_net(ONet(), tmp_path / "onet.pt")
    (tmp_path / "rnet.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="rnet.pt: not a readable torch state dict"):
        load_net(RNet(), tmp_path / "rnet.pt")
    with pytest.raises(FileNotFoundError, match="lacks pnet.pt"):
        MTCNN(weights_spec=tmp_path)
    with pytest.raises(weights.WeightsError, match="neither a folder"):
        MTCNN(weights_spec="no-such-mtcnn")


def test_boxes_outside_the_image_are_dropped(mtcnn):
    img = torch.zeros(1, 3, 50, 50)
    outside = torch.tensor([[60.0, 60.0, 80.0, 80.0, 0.9]])  # what regression can push past the edge
    assert mtcnn._refine(img, outside).shape == (0, 5)
    boxes, marks = mtcnn._output(img, outside)
    assert boxes.shape == (0, 5) and marks.shape == (0, 5, 2)


def test_the_metric_photo_chip_is_mtcnn_aligned_on_the_detected_face(aligner):
    """CurricularFace's photo crop (identity.mtcnn_photo_chip): MTCNN's 5 points of the face the
    detector picked, onto the ArcFace template; with two people, the chosen one's."""
    from guide_ray.models.identity import mtcnn_photo_chip
    from guide_ray.models.insightface_backend import norm_crop
    from guide_ray.models.mtcnn import default_mtcnn

    a, b = photo("P001", "studio_portrait", 256), photo("P002", "studio_portrait", 256)
    h = min(len(a), len(b))
    pair = np.ascontiguousarray(np.concatenate([a[:h], b[:h]], axis=1))
    _, _, marks = default_mtcnn().detect(pair)
    faces = aligner.detect(pair)
    assert len(marks) == 2 and len(faces) == 2
    for face in faces:
        chip = mtcnn_photo_chip(pair, face, 112)
        centre_x = (face.box[0] + face.box[2]) / 2
        mine = marks[int(np.argmin([abs(m[:, 0].mean() - centre_x) for m in marks]))]
        assert torch.equal(chip, torch.from_numpy(norm_crop(pair, mine, 112)).permute(2, 0, 1)[None].float() / 127.5 - 1)
    with pytest.raises(FaceError, match="MTCNN finds no face"):
        mtcnn_photo_chip(np.zeros((120, 120, 3), np.uint8), faces[0], 112)
