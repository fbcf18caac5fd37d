"""MTCNN face detection and five landmarks (Zhang et al., "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks", 2016) with the P-, R- and O-Net weights that
facenet-pytorch 2.6.0 ships (``pnet.pt``, ``rnet.pt``, ``onet.pt``: plain state dicts).

The cascade follows facenet-pytorch's ``detect_face``, so its boxes and landmarks are what that
package reports:

1. P-Net slides over an image pyramid (the image scaled by 12 / min_face_size, then by ``factor``
   while the short side stays >= 12 px); each 12x12 cell whose face probability is >= thresholds[0]
   proposes a box; NMS (IoU 0.5) per scale, then NMS (IoU 0.7) over all scales; the boxes are moved
   by P-Net's regression and made square.
2. R-Net scores 24x24 crops of those boxes: probability > thresholds[1], NMS (IoU 0.7), regression,
   square.
3. O-Net scores 48x48 crops: probability > thresholds[2]; its 5 landmarks are read relative to the
   box; regression; NMS over the smaller box's area ("Min", 0.7).

Crops are area-resampled from the part of a box that lies in the image (no padding), pixels are
normalised as (x - 127.5) / 128. Boxes keep MTCNN's MATLAB-born convention that facenet-pytorch
reports: (x0, y0) is the 1-based index of the first pixel, (x1, y1) that of the last. Landmarks are
0-based (x, y) pixel coordinates, as dlib's are, in ArcFace's order: left eye, right eye, nose tip,
left and right mouth corners (left = the image's left).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from .. import weights
from .face_align import FaceError, _check_rgb

NET_FILES = ("pnet.pt", "rnet.pt", "onet.pt")


class PNet(nn.Module):
    """Proposal net, fully convolutional: a 12x12 window -> face probability and box offsets."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # not-face / face logits
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets, in box sizes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] -> offsets [B, 4, H', W'], face probability [B, H', W'] (stride 2)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(1)[:, 1]


def _flatten_wh(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, W*H*C] in (W, H, C) order: the dense layers were converted from a
    column-major framework and expect that order."""
    return x.permute(0, 3, 2, 1).flatten(1)


class RNet(nn.Module):
    """Refinement net: a 24x24 crop -> face probability and box offsets."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, 24, 24] -> offsets [N, 4], face probability [N]."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_wh(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), self.dense5_1(x).softmax(1)[:, 1]


class ONet(nn.Module):
    """Output net: a 48x48 crop -> face probability, box offsets and 5 landmarks."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # 5 x's then 5 y's, as fractions of the box

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[N, 3, 48, 48] -> offsets [N, 4], landmarks [N, 10], face probability [N]."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_wh(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(1)[:, 1]


def load_net(net: nn.Module, path: Path) -> nn.Module:
    """Load a state dict file into ``net`` strictly; errors name the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable torch state dict ({e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of {type(net).__name__}, got {type(state).__name__}")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path} does not hold {type(net).__name__}'s weights (facenet-pytorch's "
                         f"{path.name} is needed): {e}") from e
    return net.eval().requires_grad_(False)


def _net_paths(spec: str | Path) -> list[Path]:
    folder = Path(spec).expanduser()
    if folder.is_dir():
        paths = [folder / name for name in NET_FILES]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}: MTCNN needs {', '.join(NET_FILES)}")
        return paths
    if str(spec) in weights.manifest():
        return [weights.path(str(spec), name) for name in NET_FILES]
    raise weights.WeightsError(f"MTCNN weights {str(spec)!r}: neither a folder holding {', '.join(NET_FILES)} "
                               f"nor a known weight name (e.g. 'mtcnn')")


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes [N, >=4] grown to squares of side max(width, height) about their centres."""
    boxes = boxes.clone()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    boxes[:, 0] += (w - side) / 2
    boxes[:, 1] += (h - side) / 2
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: torch.Tensor, offsets: torch.Tensor, inclusive: bool) -> torch.Tensor:
    """Move each edge by its offset times the box's width/height (+1 for inclusive pixel counts)."""
    boxes = boxes.clone()
    size = boxes[:, 2:4] - boxes[:, :2] + (1 if inclusive else 0)
    boxes[:, :4] += offsets * size.repeat(1, 2)
    return boxes


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS that drops a box when its intersection covers more than ``threshold`` of the
    smaller of the two boxes (MTCNN's "Min" rule; inclusive pixel areas). Indices, best first."""
    x0, y0, x1, y1 = boxes.unbind(1)
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    # numpy's argsort, reversed: equal scores (common near 1.0) are then ordered as in facenet-pytorch
    order = torch.from_numpy(np.argsort(scores.cpu().numpy())[::-1].copy()).to(boxes.device)
    keep = []
    while order.numel():
        best, rest = order[0], order[1:]
        keep.append(best)
        iw = (torch.minimum(x1[best], x1[rest]) - torch.maximum(x0[best], x0[rest]) + 1).clamp(min=0)
        ih = (torch.minimum(y1[best], y1[rest]) - torch.maximum(y0[best], y0[rest]) + 1).clamp(min=0)
        order = rest[iw * ih / torch.minimum(area[best], area[rest]) <= threshold]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long, device=boxes.device)


class MTCNN(nn.Module):
    """The three-stage cascade; ``detect`` returns every face, ``landmarks5`` the one to align."""

    def __init__(self, device: str | torch.device | None = None, weights_spec: str | Path = "mtcnn",
                 min_face_size: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, batch: int = 512):
        super().__init__()
        if min_face_size < 12:
            raise ValueError(f"min_face_size must be at least 12 px (P-Net's window), got {min_face_size}")
        if not 0 < factor < 1:
            raise ValueError(f"the pyramid factor must lie in (0, 1), got {factor}")
        self.min_face_size, self.thresholds, self.factor, self.batch = min_face_size, tuple(thresholds), factor, batch
        paths = _net_paths(weights_spec)
        self.pnet, self.rnet, self.onet = (load_net(net, p) for net, p in zip((PNet(), RNet(), ONet()), paths))
        self.to(device or "cpu")

    @property
    def device(self) -> torch.device:
        return self.pnet.conv1.weight.device

    def scales(self, height: int, width: int) -> list[float]:
        """The pyramid: 12 / min_face_size times factor**k while the short side stays >= 12 px."""
        scale, side, out = 12 / self.min_face_size, min(height, width) * 12 / self.min_face_size, []
        while side >= 12:
            out.append(scale)
            scale, side = scale * self.factor, side * self.factor
        return out

    def _propose(self, img: torch.Tensor) -> torch.Tensor:
        """Stage 1: P-Net boxes [N, 5] (x0, y0, x1, y1, probability), regressed and squared."""
        h, w = img.shape[-2:]
        found = []
        for scale in self.scales(h, w):
            small = F.interpolate(img, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            offsets, prob = self.pnet(_normalise(small))
            ys, xs = torch.nonzero(prob[0] >= self.thresholds[0], as_tuple=True)
            cell = torch.stack([xs, ys], 1).to(img.dtype)  # P-Net's output cell, stride 2, 12 px window
            boxes = torch.cat([((2 * cell + 1) / scale).floor(), ((2 * cell + 12) / scale).floor(),
                               prob[0, ys, xs, None], offsets[0, :, ys, xs].T], 1)
            found.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
        boxes = torch.cat(found) if found else img.new_zeros(0, 9)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        return _square(_regress(boxes[:, :5], boxes[:, 5:], inclusive=False))

    def _crops(self, img: torch.Tensor, boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The in-image part of each box resampled to size x size, normalised; and the mask of
        boxes that overlap the image (the crops are of those only)."""
        h, w = img.shape[-2:]
        edges = boxes[:, :4].trunc().long()
        x0, y0 = edges[:, 0].clamp(min=1), edges[:, 1].clamp(min=1)
        x1, y1 = edges[:, 2].clamp(max=w), edges[:, 3].clamp(max=h)
        inside = (x1 >= x0) & (y1 >= y0)
        crops = [F.interpolate(img[:, :, b - 1:d, a - 1:c], size=(size, size), mode="area")
                 for a, b, c, d in zip(*(v[inside].tolist() for v in (x0, y0, x1, y1)))]
        crops = torch.cat(crops) if crops else img.new_zeros(0, 3, size, size)
        return _normalise(crops), inside

    def _run(self, net: nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = [net(chunk) for chunk in crops.split(self.batch)]  # one (empty) chunk when there are no crops
        return tuple(torch.cat(parts) for parts in zip(*outs))

    def _refine(self, img: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Stage 2: R-Net's verdict on stage 1's boxes, regressed and squared."""
        crops, inside = self._crops(img, boxes, 24)
        offsets, prob = self._run(self.rnet, crops)
        keep = prob > self.thresholds[1]
        boxes = torch.cat([boxes[inside][keep, :4], prob[keep, None]], 1)
        offsets = offsets[keep]
        picked = nms(boxes[:, :4], boxes[:, 4], 0.7)
        return _square(_regress(boxes[picked], offsets[picked], inclusive=True))

    def _output(self, img: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 3: O-Net's boxes [N, 5] and landmarks [N, 5, 2]."""
        crops, inside = self._crops(img, boxes, 48)
        offsets, marks, prob = self._run(self.onet, crops)
        keep = prob > self.thresholds[2]
        boxes = torch.cat([boxes[inside][keep, :4], prob[keep, None]], 1)
        size = boxes[:, 2:4] - boxes[:, :2] + 1
        marks = marks[keep].view(-1, 2, 5).transpose(1, 2)  # [N, 5, (x, y)] as fractions of the box
        landmarks = marks * size[:, None] + boxes[:, None, :2] - 1  # 1-based box -> 0-based pixels
        boxes = _regress(boxes, offsets[keep], inclusive=True)
        picked = _nms_min(boxes[:, :4], boxes[:, 4], 0.7)
        return boxes[picked], landmarks[picked]

    def _cascade(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The three stages on [1, 3, H, W] float pixels in [0, 255]: boxes [N, 5] (x0, y0, x1, y1,
        probability) and landmarks [N, 5, 2], most probable first."""
        boxes = self._propose(img)
        if len(boxes):
            boxes = self._refine(img, boxes)
        landmarks = img.new_zeros(0, 5, 2)
        if len(boxes):
            boxes, landmarks = self._output(img, boxes)
        order = boxes[:, 4].argsort(descending=True)
        return boxes[order], landmarks[order]

    @torch.no_grad()
    def detect(self, image: np.ndarray, source: str = "image") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every face in an HxWx3 uint8 RGB image: boxes [N, 4] (x0, y0, x1, y1), probabilities [N],
        landmarks [N, 5, 2] (x, y), most probable first; N = 0 when there is none."""
        image = _check_rgb(image, source)
        img = torch.from_numpy(image.copy()).to(self.device).permute(2, 0, 1)[None].float()
        boxes, landmarks = (t.cpu().numpy() for t in self._cascade(img))
        return boxes[:, :4], boxes[:, 4], landmarks

    @torch.no_grad()
    def face_probability(self, pixels: torch.Tensor, min_width: float) -> float:
        """The probability of the most probable face at least ``min_width`` of the image wide in
        [1, 3, H, W] float pixels in [0, 255]; 0 when there is none (models/face_check.py)."""
        boxes, _ = self._cascade(pixels.to(self.device))
        wide = boxes[(boxes[:, 2] - boxes[:, 0] + 1) >= min_width * pixels.shape[-1]]
        return float(wide[:, 4].max()) if len(wide) else 0.0

    def landmarks5(self, image: np.ndarray, source: str = "image",
                   select: Literal["largest", "probability"] = "largest") -> np.ndarray:
        """[5, 2] landmarks of one face (the largest box, or the most probable) for alignment,
        e.g. onto the ArcFace template with insightface_backend.norm_crop; FaceError when none."""
        if select not in ("largest", "probability"):
            raise ValueError(f"select must be 'largest' or 'probability', not {select!r}")
        boxes, _, landmarks = self.detect(image, source)
        if not len(boxes):
            raise FaceError(f"MTCNN found no face in {source}")
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return landmarks[int(area.argmax()) if select == "largest" else 0].astype(np.float64)


@cache
def default_mtcnn() -> MTCNN:
    """One shared MTCNN on the CPU with the cached facenet-pytorch weights."""
    return MTCNN()
