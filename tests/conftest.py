import pytest

from guide_ray import weights


def require_weights(*names: str) -> None:
    """Fail (not skip) when a real weight the test needs is not cached: `make test` pulls them."""
    for name in names:
        state = weights.status(name)
        if state != "cached":
            pytest.fail(f"weight {name!r} is {state}; run `python -m guide_ray weights pull {name}`")


@pytest.fixture(scope="session")
def mobilestylegan():
    from guide_ray.models import load_generator

    require_weights("mobilestylegan-ffhq1024")
    return load_generator("mobilestylegan-ffhq1024", "cpu")


@pytest.fixture(scope="session")
def dcgan():
    from guide_ray.models import load_generator

    require_weights("dcgan-digiface64")
    return load_generator("dcgan-digiface64", "cpu")
