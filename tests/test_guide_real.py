"""GUIDE on the real DCGAN: the identity at w_u really changes, other identities stay."""

import pytest
import torch

from guide_ray.config import load_config
from guide_ray.core.evaluate import identity_similarity
from guide_ray.core.inversion import random_source
from guide_ray.core.ltu import unlearn
from guide_ray.run.networks import Networks
from guide_ray.models import load_generator
from tests.helpers import require_weights

pytestmark = pytest.mark.slow  # real generators end to end: minutes on 2 cores


def test_guide_erases_the_source_identity_and_keeps_others():
    require_weights("dcgan-digiface64", "stlpips-vgg", "dlib-resnet34", "facenet-vggface2", "dlib-mmod")
    cfg = load_config(overrides=["iterations=150"])
    g = load_generator("dcgan-digiface64", "cpu")
    nets = Networks(cfg, "cpu")
    w_u = random_source(g, 1)
    result = unlearn(g, w_u, cfg, nets.id_loss, nets.perceptual)
    others = torch.cat([random_source(g, s) for s in range(100, 108)])
    source_id = float(identity_similarity(nets.id_metric, result.g_s, g, w_u)[0])
    others_id = identity_similarity(nets.id_metric, result.g_s, g, others)
    print(f"\nafter 150 steps: ID(source) {source_id:.3f}, ID(8 other seeds) mean {others_id.mean():.3f} "
          f"min {others_id.min():.3f}")
    assert source_id < 0.6
    assert others_id.mean() > 0.85 and others_id.mean() - source_id > 0.3
    with torch.no_grad():  # the person changed into another face, not into a smear
        after = nets.faces(torch.cat([g.synthesis(w_u), result.g_s.synthesis(result.w_t)]))
    assert all(nets.faces.is_face(v) for v in after), after
