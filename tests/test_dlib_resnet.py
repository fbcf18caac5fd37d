"""The torch port of dlib's face recognition ResNet against dlib's own execution, on real photos."""

import numpy as np
import pytest
import torch
from PIL import Image

from guide_ray import weights
from guide_ray.models.dlib_resnet import DlibResNet34, native_chip
from tests.helpers import require_weights

dlib = pytest.importorskip("dlib")

PEOPLE = [f"P{i:03d}" for i in range(1, 11)]
PHOTOS = [(person, "studio_portrait") for person in PEOPLE] + [
    (person, "amateur_selfie") for person in PEOPLE[:3]]
MAX_SIDE = 1024


def load_photo(person: str, photo: str) -> np.ndarray:
    image = Image.open(weights.directory("openpeople") / person / "assets" / f"{photo}.jpg")
    image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # cheap JPEG downscale while decoding
    image = image.convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    return np.asarray(image)


@pytest.fixture(scope="module")
def faces() -> list[tuple[str, np.ndarray]]:
    """(person, dlib's 150x150 aligned chip) for the largest face of each photo."""
    require_weights("dlib-resnet34", "dlib-landmarks5", "openpeople")
    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(weights.path("dlib-landmarks5")))
    found = []
    for person, photo in PHOTOS:
        image = load_photo(person, photo)
        boxes = detector(image, 0)
        if boxes:
            box = max(boxes, key=lambda b: b.area())
            found.append((person, native_chip(image, landmarks(image, box))))
    assert len(found) >= 8, f"only {len(found)} faces detected"
    return found


@pytest.fixture(scope="module")
def model() -> DlibResNet34:
    require_weights("dlib-resnet34", "dlib-landmarks5", "openpeople")
    return DlibResNet34.from_dat(weights.path("dlib-resnet34"))


def to_tensor(chips: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture(scope="module")
def ours(model, faces) -> np.ndarray:
    with torch.no_grad():
        return model(to_tensor([chip for _, chip in faces])).numpy()


def test_parity_with_native_dlib(faces, ours):
    native_model = dlib.face_recognition_model_v1(str(weights.path("dlib-resnet34")))
    native = np.array([np.array(native_model.compute_face_descriptor(chip)) for _, chip in faces])
    distances = np.linalg.norm(native - ours, axis=1)
    print(f"\nworst L2 distance to native dlib over {len(faces)} chips: {distances.max():.2e}")
    assert np.all(distances <= 0.02), distances


def test_gradients_reach_the_input(model, faces):
    chip = torch.nn.functional.interpolate(to_tensor([faces[0][1]]), size=160, mode="bilinear")
    chip.requires_grad_(True)  # 160 px: also exercises the resize to 150 inside forward
    model(chip).norm().backward()
    assert torch.isfinite(chip.grad).all() and chip.grad.abs().sum() > 0


def test_same_person_is_closer_than_other_people(faces, ours):
    people = [person for person, _ in faces]
    for i, person in enumerate(people):
        same = [j for j, p in enumerate(people) if p == person and j != i]
        if not same:
            continue
        distances = np.linalg.norm(ours - ours[i], axis=1)
        others = [j for j, p in enumerate(people) if p != person]
        assert distances[same].max() < distances[others].min(), (person, distances)


def test_rejects_files_that_are_not_the_network(tmp_path):
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"certainly not a dlib network\n" * 10)
    with pytest.raises(ValueError, match="junk.dat is not a dlib face recognition network"):
        DlibResNet34.from_dat(junk)
    landmarks = weights.path("dlib-landmarks5")  # dlib's serialization, but a shape predictor
    with pytest.raises(ValueError, match=landmarks.name):
        DlibResNet34.from_dat(landmarks)
