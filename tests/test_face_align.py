"""Face detection and FFHQ alignment on real openpeople photos, and the errors users will meet."""

import numpy as np
import pytest
import torch
from PIL import Image

from guide_ray import weights
from guide_ray.models.face_align import (Face, FaceAligner, FaceError, align_ffhq, ffhq_quad, landmarks5,
                                         photo_to_generator_crop)
from tests.helpers import require_weights

IDENTITIES = ("P001", "P002", "P003", "P004", "P005", "P006")
CROP = 256


def photo_path(person: str, kind: str = "studio_portrait"):
    return weights.directory("openpeople") / person / "assets" / f"{kind}.jpg"


def photo(person: str, kind: str = "studio_portrait", width: int | None = None) -> np.ndarray:
    im = Image.open(photo_path(person, kind)).convert("RGB")
    if width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    return np.asarray(im)


def eye_centres(face: Face) -> np.ndarray:
    return landmarks5(face)[:2]


@pytest.fixture(scope="module")
def aligner():
    require_weights("dlib-landmarks68", "dlib-mmod", "openpeople")
    return FaceAligner()


def test_ffhq_quad_of_an_upright_face():
    lm = np.zeros((68, 2))
    lm[36:42] = (100, 100)  # eyes 60 px apart, mouth 70 px below them and 40 px wide
    lm[42:48] = (160, 100)
    lm[48], lm[54] = (110, 170), (150, 170)
    # x = eye_to_eye + eye_to_mouth turned = (130, 0), rescaled to max(2 * 60, 1.8 * 70) = 126;
    # centre = eye midpoint + 0.1 * eye_to_mouth = (130, 107).
    expected = [(4, -19), (4, 233), (256, 233), (256, -19)]
    np.testing.assert_allclose(ffhq_quad(lm), expected, atol=1e-9)


def test_ffhq_quad_turns_with_the_face():
    rng = np.random.default_rng(0)
    lm = rng.uniform(0, 50, (68, 2))
    lm[36:42] += (100, 100)
    lm[42:48] += (200, 100)
    lm[48], lm[54] = (120, 220), (190, 225)
    angle = np.deg2rad(30)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    np.testing.assert_allclose(ffhq_quad(lm @ turn.T + 7), ffhq_quad(lm) @ turn.T + 7, atol=1e-9)
    with pytest.raises(ValueError, match="68x2"):
        ffhq_quad(lm[:5])


def test_portraits_give_one_large_face(aligner):
    image = photo("P001")
    face = aligner.face(image, "P001 portrait")
    assert face.detector == "hog" and face.score > 0
    assert face.landmarks.shape == (68, 2)
    assert face.width > 500  # a studio portrait fills much of the 2048 px frame
    x0, y0, x1, y1 = face.box
    inside = (face.landmarks >= (x0 - 50, y0 - 50)) & (face.landmarks <= (x1 + 50, y1 + 50))
    assert inside.all()
    left_eye, right_eye, nose, mouth_left, mouth_right = landmarks5(face)
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_aligned_crops_put_the_eyes_in_the_same_place(aligner):
    eyes = []
    for person in IDENTITIES:
        for kind in ("studio_portrait", "amateur_selfie"):
            image = photo(person, kind)
            crop = align_ffhq(image, aligner.face(image, f"{person} {kind}"), CROP)
            assert crop.shape == (CROP, CROP, 3) and crop.dtype == np.uint8
            eyes.append(eye_centres(aligner.face(crop, f"aligned {person} {kind}")))
    eyes = np.array(eyes)  # [photo, left/right eye, x/y]
    assert np.abs(eyes - eyes.mean(axis=0)).max() < 4  # px at 256: the same place for everyone
    assert np.abs(eyes[:, 0, 1] - eyes[:, 1, 1]).max() < 3  # eyes level
    # FFHQ's layout: eyes a quarter of the width apart, symmetric, a little above the middle.
    np.testing.assert_allclose(eyes.mean(axis=0) / CROP, [[0.375, 0.47], [0.625, 0.47]], atol=0.015)


def test_downscaled_copy_gives_the_same_quad(aligner):
    full = photo("P002")
    half = photo("P002", width=full.shape[1] // 2)
    quad_full = ffhq_quad(aligner.face(full, "full").landmarks)
    quad_half = ffhq_quad(aligner.face(half, "half").landmarks)
    side = np.hypot(*(quad_full[3] - quad_full[0]))
    assert np.abs((quad_half + 0.5) * 2 - (quad_full + 0.5)).max() < 0.01 * side


def test_quad_beyond_the_photo_is_padded(aligner):
    image = photo("P003")
    face = aligner.face(image, "P003")
    reference = align_ffhq(image, face, CROP)
    x0, y0, x1, y1 = (round(v) for v in face.box)
    tight = image[y0:y1, x0:x1]  # the FFHQ square reaches well outside this crop
    tight_face = aligner.face(tight, "tight crop")
    padded = align_ffhq(tight, tight_face, CROP)
    centre = slice(CROP // 4, 3 * CROP // 4)
    assert np.abs(padded[centre, centre].astype(int) - reference[centre, centre]).mean() < 6
    np.testing.assert_allclose(eye_centres(aligner.face(padded, "padded")),
                               eye_centres(aligner.face(reference, "reference")), atol=3)


def test_photo_to_generator_crop(aligner):
    path = photo_path("P004")
    tensor = photo_to_generator_crop(path, CROP, aligner)
    assert tensor.shape == (1, 3, CROP, CROP) and tensor.dtype == torch.float32
    assert tensor.min() >= -1 and tensor.max() <= 1 and tensor.std() > 0.1
    image = photo("P004")
    expected = align_ffhq(image, aligner.face(image), CROP)
    assert torch.equal(((tensor[0] + 1) * 127.5).round().byte().permute(1, 2, 0), torch.from_numpy(expected))


def test_no_face_names_the_source(aligner):
    noise = np.random.default_rng(0).integers(0, 256, (320, 320, 3), dtype=np.uint8)
    with pytest.raises(FaceError, match="no face found in noise.png"):
        aligner.face(noise, "noise.png")
    background = photo("P005")[:320, :320]  # studio backdrop above and beside the head
    assert aligner.detect(background, "backdrop") == []


def test_two_faces_are_ambiguous_unless_largest_is_asked_for(aligner):
    canvas = np.full((700, 1300, 3), 255, dtype=np.uint8)
    canvas[:640, :640] = photo("P001", width=640)
    canvas[100:580, 760:1240] = photo("P003", width=480)
    with pytest.raises(FaceError, match="2 faces found in pair.png; crop the photo"):
        aligner.face(canvas, "pair.png")
    largest = aligner.face(canvas, "pair.png", multiple="largest")
    assert (largest.box[0] + largest.box[2]) / 2 < 640  # the face from the 640 px portrait
    with pytest.raises(ValueError, match="multiple"):
        aligner.face(canvas, "pair.png", multiple="first")


def test_a_sheet_of_expressions_is_ambiguous(aligner):
    sheet = np.asarray(Image.open(photo_path("P001", "emotions_sheet")).convert("RGB"))
    with pytest.raises(FaceError, match="16 faces found in emotions_sheet"):
        aligner.face(sheet, "emotions_sheet")


def test_small_face_is_rejected_with_its_size(aligner):
    canvas = np.full((400, 400, 3), 255, dtype=np.uint8)
    canvas[120:280, 120:280] = photo("P001", width=160)  # the face is about 70 px wide
    face = aligner.face(canvas, "small.png", min_size=64)
    with pytest.raises(FaceError, match=rf"small.png is only {face.width:.0f}x{face.height:.0f} px; at least 100"):
        aligner.face(canvas, "small.png", min_size=100)
    with pytest.raises(FaceError, match="at least 1000 px"):
        aligner.face(photo("P002"), "portrait", min_size=1000)


def test_bad_inputs(aligner):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        aligner.detect(np.zeros((64, 64), dtype=np.uint8), "gray")
    require_weights("dlib-landmarks5")
    with pytest.raises(ValueError, match="68-point"):
        FaceAligner(landmarks="dlib-landmarks5")
