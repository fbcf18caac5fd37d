"""Identity networks on real faces: verification on openpeople, crop conventions, gradients, CLI."""

import dlib
import numpy as np
import pytest
import torch

from guide_ray import cli, weights
from guide_ray.images import load_image
from guide_ray.models import load_generator
from guide_ray.models.face_align import align_ffhq, default_aligner, ffhq_quad, landmarks5
from guide_ray.models.identity import (DLIB_CHIP_BOX, HOG_BOX, LANDMARKS5, arcface_box, cosine,
                                       facenet_box, load_identity_net, to_tensor)
from tests.helpers import require_weights

PEOPLE = [f"P{i:03d}" for i in range(1, 11)]
PHOTOS = ("studio_portrait", "studio_posture", "amateur_selfie", "amateur_posture")
SHEET_FACES = 4  # faces taken from each person's 4x4 emotions sheet


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a same pair > score of a different pair) (Mann-Whitney)."""
    order = scores.argsort()
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks over ties
        tie = scores == value
        ranks[tie] = ranks[tie].mean()
    n_pos, n_neg = same.sum(), (~same).sum()
    return float((ranks[same].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def faces():
    """(person, image, face) for 4 photos and 4 sheet faces of each of the 10 openpeople identities."""
    require_weights("openpeople", "dlib-landmarks68", "dlib-mmod")
    aligner, root, out = default_aligner(), weights.directory("openpeople"), []
    for person in PEOPLE:
        for photo in PHOTOS:
            path = root / person / "assets" / f"{photo}.jpg"
            image = load_image(path)
            out.append((person, image, aligner.face(image, str(path), multiple="largest")))
        sheet = load_image(root / person / "assets" / "emotions_sheet.jpg")
        out += [(person, sheet, f) for f in aligner.detect(sheet)[:SHEET_FACES]]
    return out


@pytest.fixture(scope="module", params=["dlib-resnet34", "facenet-vggface2"])
def net(request):
    require_weights(request.param)
    return load_identity_net(request.param, "cpu")


@pytest.mark.slow
def test_verification_on_openpeople(net, faces):
    with torch.no_grad():
        emb = torch.cat([net.embed_photo(image, face) for _, image, face in faces])
    people = np.array([p for p, _, _ in faces])
    sim = cosine(emb[:, None], emb[None]).numpy()
    iu = np.triu_indices(len(faces), 1)
    same = people[iu[0]] == people[iu[1]]
    auc = roc_auc(sim[iu], same)
    scores = {"cosine": auc}
    if net.name == "dlib-resnet34":
        scores["-L2"] = roc_auc(-torch.cdist(emb, emb).numpy()[iu], same)
    print(f"\n{net.name}: pairwise verification ROC AUC " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
          + f" over {same.sum()} same / {(~same).sum()} different pairs")
    for person in PEOPLE:
        mine = people == person
        within = sim[np.ix_(mine, mine)][np.triu_indices(mine.sum(), 1)].mean()
        across = sim[np.ix_(mine, ~mine)].mean()
        print(f"  {person}: same {within:.3f}  different {across:.3f}")
        assert within > across, person
    assert min(scores.values()) >= 0.95


def test_fixed_crop_of_an_aligned_face_matches_the_native_crop(net, faces):
    """The fixed crop of an FFHQ-aligned photo (what generated faces get) embeds like the network's
    own crop of the original photo."""
    sims, others = [], []
    with torch.no_grad():
        for i in range(0, len(faces), 8):  # one photo per person
            person, image, face = faces[i]
            native = net.embed_photo(image, face)
            aligned = to_tensor(align_ffhq(image, face, 512))
            fixed = net.embed_generated(aligned)
            sims.append(cosine(native, fixed).item())
            other_image, other_face = faces[(i + 8) % len(faces)][1:]
            others.append(cosine(net.embed_photo(other_image, other_face), fixed).item())
    print(f"\n{net.name}: native vs fixed crop cosine {np.round(sims, 3)}")
    assert min(sims) > max(others)
    assert np.mean(sims) > 0.8


def test_identity_gradients_reach_the_generated_image(net):
    img = torch.rand(2, 3, 256, 256, requires_grad=True) * 2 - 1
    img.retain_grad()
    emb = net.embed_generated(img, frame=(0.112, 0.098, 0.890, 0.898))  # a frame that needs padding
    assert emb.shape == (2, net.dim)
    (1 - cosine(emb[0], emb[1].detach())).backward()
    assert img.grad is not None and img.grad[0].abs().sum() > 0 and torch.isfinite(img.grad).all()


def test_crop_boxes_are_what_the_conventions_give_on_aligned_faces(faces):
    """Re-measure the FFHQ-frame boxes stored in identity.py on FFHQ-aligned photos."""
    aligner, size = default_aligner(), 512
    chip_boxes, hog_boxes, marks = [], [], []
    for _, image, face in faces[::8]:
        aligned = align_ffhq(image, face, size)
        found = aligner.detect(aligned)[0]
        hog_boxes.append(np.array(found.box) / size)
        marks.append(landmarks5(found) / size)
        shape = dlib.full_object_detection(dlib.rectangle(*(int(round(v)) for v in found.box)),
                                           [dlib.point(int(round(x)), int(round(y))) for x, y in found.landmarks])
        r = dlib.get_face_chip_details(shape, 150, 0.25).rect
        chip_boxes.append(np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1]) / size)
    np.testing.assert_allclose(np.mean(chip_boxes, 0), DLIB_CHIP_BOX, atol=0.02)
    np.testing.assert_allclose(np.mean(hog_boxes, 0), HOG_BOX, atol=0.02)
    np.testing.assert_allclose(np.mean(marks, 0), LANDMARKS5, atol=0.02)
    # GUIDE's official ArcFace crop of FFHQ-aligned 256 px images is [35:223, 32:220]
    np.testing.assert_allclose(arcface_box(LANDMARKS5), np.array([32, 35, 220, 223]) / 256, atol=0.025)
    x0, y0, x1, y1 = facenet_box(HOG_BOX)
    assert x0 < HOG_BOX[0] and y0 < HOG_BOX[1] - 0.05 and x1 > HOG_BOX[2]


@pytest.mark.slow
def test_dcgan_frame_in_the_ffhq_frame():
    """DCGAN's declared ffhq_box: where the FFHQ recipe puts its frame, measured on its samples."""
    require_weights("dcgan-digiface64")
    g = load_generator("dcgan-digiface64", "cpu")
    aligner = default_aligner()
    with torch.no_grad():
        images = ((g(torch.cat([g.z_from_seed(s) for s in range(60)])) + 1) * 127.5).round().byte()
    boxes = []
    for im in images:
        big = torch.nn.functional.interpolate(im[None].float(), scale_factor=4, mode="bicubic").clamp(0, 255)
        big = big[0].byte().permute(1, 2, 0).numpy()
        found = aligner.detect(big)
        if len(found) != 1:
            continue
        quad = ffhq_quad(found[0].landmarks / 4)
        basis = np.linalg.inv(np.stack([quad[3] - quad[0], quad[1] - quad[0]], 1))
        boxes.append(np.concatenate([basis @ (np.array(c) - quad[0]) for c in ((0, 0), (64, 64))]))
    assert len(boxes) >= 30
    np.testing.assert_allclose(np.mean(boxes, 0), g.ffhq_box, atol=0.02)


def test_idsim_cli(capsys, tmp_path):
    require_weights("openpeople", "facenet-vggface2")
    root = weights.directory("openpeople")
    a = root / "P003" / "assets" / "studio_portrait.jpg"
    same = root / "P003" / "assets" / "amateur_selfie.jpg"
    other = root / "P007" / "assets" / "studio_portrait.jpg"

    def similarity(x, y, *extra):
        assert cli.main(["idsim", str(x), str(y), "--device", "cpu", *extra]) == 0
        lines = capsys.readouterr().out.splitlines()
        return float(lines[0].split(":")[-1]), lines

    s_same, _ = similarity(a, same)
    s_other, _ = similarity(a, other)
    assert s_same > s_other
    _, lines = similarity(a, other, "--net", "dlib-resnet34")
    assert lines[1].startswith("L2 distance:")
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    assert cli.main(["idsim", str(a), str(text)]) == 2
    assert str(text) in capsys.readouterr().err


def test_idsim_bad_photos_give_messages_not_tracebacks(capsys, tmp_path):
    """No face, two faces, a truncated JPEG: exit status 2 and one line naming the file and why."""
    from PIL import Image

    require_weights("openpeople", "dlib-resnet34")
    portrait = weights.directory("openpeople") / "P001" / "assets" / "studio_portrait.jpg"
    face = Image.open(portrait).convert("RGB").resize((400, 400))
    cases = {}
    blank = tmp_path / "wall.png"
    Image.new("RGB", (400, 300), (120, 130, 140)).save(blank)
    cases[blank] = "no face found"
    pair = tmp_path / "pair.jpg"
    canvas = Image.new("RGB", (800, 400))
    canvas.paste(face, (0, 0))
    canvas.paste(face.transpose(Image.FLIP_LEFT_RIGHT), (400, 0))
    canvas.save(pair)
    cases[pair] = "2 faces found"
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(portrait.read_bytes()[:20000])
    cases[truncated] = "truncated"
    for path, reason in cases.items():
        assert cli.main(["idsim", str(portrait), str(path), "--net", "dlib-resnet34"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and str(path) in err and reason in err, err
        assert "Traceback" not in err
