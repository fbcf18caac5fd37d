"""Identity embedders behind one interface, with each network's crop convention.

GUIDE optimises one face-recognition network (the ID LOSS: ArcFace in the paper, dlib's ResNet
here by default) and measures with another (the ID METRIC: CurricularFace in the paper, FaceNet
here), so the metric is not the thing being optimised.

Crops. A photo goes through the network's own convention (dlib: dlib's 150 px face chip; FaceNet:
the detector box with a margin, resized to 160; ArcFace: the 5-point template at 112). A generated
image is already aligned, so it gets a fixed, differentiable crop instead (as GUIDE's ID loss
crops 256 -> [35:223, 32:220]): each convention expressed once as a box in the FFHQ-aligned frame
(x0, y0, x1, y1 in [0, 1]), mapped into the generator's own frame (``Generator.ffhq_box``).
The boxes were measured on the 40 FFHQ-aligned openpeople photos (``tests/test_identity.py``
measures them again): the mean dlib chip rectangle, the mean HOG detector box and mean 5 landmarks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import weights

FFHQ_FRAME = (0.0, 0.0, 1.0, 1.0)
# Measured in the FFHQ-aligned frame (see the module docstring).
DLIB_CHIP_BOX = (0.1616, 0.2574, 0.8526, 0.9484)
HOG_BOX = (0.1916, 0.3138, 0.7914, 0.9134)
LANDMARKS5 = np.array([[0.3751, 0.4727], [0.6233, 0.4739], [0.5061, 0.6113], [0.3880, 0.7291], [0.6128, 0.7297]])
# GUIDE's (and pSp's) ID-loss crop of a 256 px FFHQ-aligned image: x[:, :, 35:223, 32:220], pooled to 112.
GUIDE_ARCFACE_BOX = (32 / 256, 35 / 256, 220 / 256, 223 / 256)


def facenet_box(detector_box):
    """FaceNet's crop around a detector box: MTCNN boxes (FaceNet's training crops) reach the
    forehead, so the box's top is raised by 10% of its height, then 8% margin is added on each side
    (FaceNet's pipeline: 44 px margin at 182 px, then the centre 160 px)."""
    x0, y0, x1, y1 = detector_box
    y0 -= 0.1 * (y1 - y0)
    mx, my = 0.08 * (x1 - x0), 0.08 * (y1 - y0)
    return (x0 - mx, y0 - my, x1 + mx, y1 + my)


def arcface_box(landmarks5: np.ndarray, size: int = 112):
    """The square a 5-point similarity alignment onto ArcFace's template covers, in the landmarks'
    coordinates (rotation dropped: it is ~0.25 degrees on aligned faces)."""
    from .insightface_backend import ARCFACE_TEMPLATE, similarity_transform

    m = similarity_transform(landmarks5, ARCFACE_TEMPLATE * (size / 112))
    inv = np.linalg.inv(m[:, :2])
    (x0, y0), (x1, y1) = (inv @ (np.array(c, float) - m[:, 2]) for c in ((0, 0), (size, size)))
    return (float(x0), float(y0), float(x1), float(y1))


def crop_box(img: torch.Tensor, box, size: int, frame=FFHQ_FRAME) -> torch.Tensor:
    """Differentiable crop of ``box`` (FFHQ-frame coordinates) out of images whose own extent in the
    FFHQ frame is ``frame``, resampled to size x size; outside the image the border is repeated.

    The image is first area-resized so the box spans about ``size`` pixels (no aliasing when a 1024
    px face becomes a 150 px chip), then sampled bilinearly.
    """
    fx0, fy0, fx1, fy1 = frame
    x0, y0, x1, y1 = ((box[0] - fx0) / (fx1 - fx0), (box[1] - fy0) / (fy1 - fy0),
                      (box[2] - fx0) / (fx1 - fx0), (box[3] - fy0) / (fy1 - fy0))  # in [0, 1] of the image
    h, w = img.shape[-2:]
    shrink = min((x1 - x0) * w / size, (y1 - y0) * h / size)
    if shrink > 1.5:
        img = F.interpolate(img, size=(round(h / shrink), round(w / shrink)), mode="bilinear",
                            antialias=True, align_corners=False)
    # affine_grid maps output [-1, 1] onto input [-1, 1] (align_corners=False: pixel edges)
    theta = torch.tensor([[x1 - x0, 0.0, x0 + x1 - 1], [0.0, y1 - y0, y0 + y1 - 1]],
                         dtype=img.dtype, device=img.device).expand(img.shape[0], 2, 3)
    grid = F.affine_grid(theta, [img.shape[0], img.shape[1], size, size], align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


def to_tensor(chip: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> [1, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(chip)).permute(2, 0, 1)[None].float() / 127.5 - 1


def dlib_photo_chip(image: np.ndarray, face, size: int) -> torch.Tensor:
    """dlib's own 150 px face chip (dlib.get_face_chip, padding 0.25) from the 68 landmarks."""
    import dlib

    from .dlib_resnet import native_chip

    shape = dlib.full_object_detection(dlib.rectangle(*(int(round(v)) for v in face.box)),
                                       [dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks])
    return to_tensor(native_chip(image, shape))


def facenet_photo_chip(image: np.ndarray, face, size: int) -> torch.Tensor:
    h, w = image.shape[:2]
    x0, y0, x1, y1 = facenet_box(face.box)
    return crop_box(to_tensor(image), (x0 / w, y0 / h, x1 / w, y1 / h), size)


def arcface_photo_chip(image: np.ndarray, face, size: int) -> torch.Tensor:
    from .face_align import landmarks5
    from .insightface_backend import norm_crop

    return to_tensor(norm_crop(image, landmarks5(face), size))


def mtcnn_photo_chip(image: np.ndarray, face, size: int) -> torch.Tensor:
    """The paper's ID-metric alignment: MTCNN's 5 points onto the ArcFace template. Of MTCNN's faces,
    the one whose box centre is nearest the detected ``face``'s (so both detectors agree on who)."""
    from .face_align import FaceError
    from .insightface_backend import norm_crop
    from .mtcnn import default_mtcnn

    boxes, _, landmarks = default_mtcnn().detect(image)
    if not len(boxes):
        raise FaceError("MTCNN finds no face where the face detector found one")
    centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])
    nearest = int(np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - centre, axis=1).argmin())
    return to_tensor(norm_crop(image, landmarks[nearest], size))


class IdentityNet(nn.Module):
    """An identity embedder: ``forward(chips)`` -> [B, dim] embeddings (differentiable unless the
    backend is ONNX); ``photo_chip`` applies the network's own crop to a detected face;
    ``generated_chip`` the fixed crop to generated, already aligned images."""

    def __init__(self, name: str, net, chip_size: int, ffhq_box, dim: int, photo_crop):
        super().__init__()
        self.name, self.chip_size, self.ffhq_box, self.dim = name, chip_size, ffhq_box, dim
        self._photo_crop = photo_crop
        self.differentiable = isinstance(net, nn.Module)
        if self.differentiable:
            self.net = net.eval().requires_grad_(False)
        else:
            self._backend = net  # onnxruntime session wrapper (CPU/CUDA by its own providers)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device if self.differentiable else torch.device("cpu")

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return (self.net if self.differentiable else self._backend)(chips)

    def generated_chip(self, img: torch.Tensor, frame=FFHQ_FRAME) -> torch.Tensor:
        return crop_box(img, self.ffhq_box, self.chip_size, frame)

    def embed_generated(self, img: torch.Tensor, frame=FFHQ_FRAME) -> torch.Tensor:
        return self(self.generated_chip(img, frame))

    def photo_chip(self, image: np.ndarray, face) -> torch.Tensor:
        """[1, 3, S, S] in [-1, 1]: the network's own crop of ``face`` (a face_align.Face)."""
        return self._photo_crop(image, face, self.chip_size)

    def embed_photo(self, image: np.ndarray, face) -> torch.Tensor:
        return self(self.photo_chip(image, face).to(self.device))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a, b, dim=-1)


def load_identity_net(spec: str | Path = "dlib-resnet34", device: str | torch.device | None = None) -> IdentityNet:
    """An identity network by name or path.

    Names: ``dlib-resnet34`` (128-d, the default ID loss), ``facenet-vggface2`` (512-d, the default
    ID metric), ``insightface:PACK`` (an insightface model pack in ~/.insightface/models, e.g.
    ``insightface:buffalo_l``; metric only). Paths: a dlib ``.dat`` network, a FaceNet frozen ``.pb``
    graph, an ArcFace ``.onnx`` file, or an IR / IR-SE backbone state dict (``.pth``/``.pt``): pSp's
    ``model_ir_se50.pth`` (GUIDE's ID loss) or CurricularFace's ``CurricularFace_Backbone.pth``
    (GUIDE's ID metric); which one a file holds is read from its keys (``irse.read_layout``).
    """
    from .dlib_resnet import DlibResNet34
    from .facenet import FaceNet

    spec = str(spec)
    path = Path(spec).expanduser()
    if spec == "dlib-resnet34" or path.suffix == ".dat":
        net = IdentityNet("dlib-resnet34", DlibResNet34.from_dat(weights.resolve_file(spec)), 150,
                          DLIB_CHIP_BOX, 128, dlib_photo_chip)
    elif spec == "facenet-vggface2" or path.suffix == ".pb":
        net = IdentityNet("facenet-vggface2", FaceNet.from_graphdef(weights.resolve_file(spec)), 160,
                          facenet_box(HOG_BOX), 512, facenet_photo_chip)
    elif spec.startswith("insightface:") or path.suffix == ".onnx":
        from .insightface_backend import load_arcface

        backend = load_arcface(spec.removeprefix("insightface:"))
        net = IdentityNet(f"insightface:{Path(backend.model_file).name}", backend, backend.input_size,
                          arcface_box(LANDMARKS5, backend.input_size), backend.session.get_outputs()[0].shape[-1],
                          arcface_photo_chip)
    elif path.suffix in (".pth", ".pt"):
        from .irse import load_backbone

        backbone = load_backbone(path)
        layout, size = backbone.layout, backbone.layout.input_size
        if layout.se:  # TreB1eN's IR-SE50 as pSp and GUIDE use it: their fixed crop of generated faces
            net = IdentityNet(f"arcface-{layout.name}:{path.name}", backbone, size, GUIDE_ARCFACE_BOX,
                              layout.embedding, arcface_photo_chip)
        else:  # CurricularFace's IR-101: photos aligned with MTCNN's 5 points, as the paper's metric;
            # generated faces cropped on the ArcFace template (= MTCNN's 112 px reference points)
            net = IdentityNet(f"curricularface-{layout.name}:{path.name}", backbone, size,
                              arcface_box(LANDMARKS5, size), layout.embedding, mtcnn_photo_chip)
    else:
        raise weights.WeightsError(f"identity network {spec!r} is neither a known name (dlib-resnet34, "
                                   f"facenet-vggface2, insightface:PACK) nor a .dat/.pb/.onnx/.pth file")
    return net.to(device or "cpu")
