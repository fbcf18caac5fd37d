"""An unlearned generator as an MLflow Model (pyfunc flavor), and generator URIs that name one.

Each version the fleet registers (guide_ray.tracking.Tracker.register_generator) is an MLflow
Model logged into its identity's run as artifact path ``model``:

    model/MLmodel, python_model.pkl, requirements.txt, ...
    model/artifacts/checkpoint.safetensors   the unlearned generator's trained tensors
    model/artifacts/base_generator.json      the base generator (name or path as given, its
                                             resolution), the checkpoint's metadata, the identities

``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` loads the base generator with the checkpoint
(on CUDA when present, else the CPU); ``.predict({"seed": [1, 2]}, params={"truncation": 0.7})``
returns uint8 images [N, H, W, 3] rendered as ``guide-ray sample --seeds`` renders them.

A generator URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model``) is also
accepted wherever guide_ray takes ``--generator``: ``resolve_generator`` downloads the model and
gives back the base generator and the local checkpoint for ``load_generator(base, checkpoint=...)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NamedTuple

import mlflow.pyfunc

from .models.generator import render_seeds

MODEL_PATH = "model"  # the artifact path of the MLflow Model in an identity's run
CHECKPOINT = "checkpoint"  # the pyfunc artifacts' names
REFERENCE = "base_generator"
REFERENCE_FORMAT = "guide_ray.base_generator/1"
# What the model needs at load time, pinned to what is installed (no inference, nothing looked up online).
REQUIREMENTS = ("guide_ray", "mlflow", "torch", "numpy", "pandas", "safetensors")


class ModelUriError(ValueError):
    """A generator URI that names no guide_ray model (unknown name, version or alias; another kind
    of model); the CLI prints it as ``error: ...`` and exits 2."""


def is_model_uri(spec: object) -> bool:
    """``models:/...`` or ``runs:/...``: a generator held in MLflow, not a name or a path."""
    return str(spec).startswith(("models:/", "runs:/"))


# --- the pyfunc model ----------------------------------------------------------------------------

def seeds_of(model_input) -> list[int]:
    """The seeds of a predict input: a DataFrame (or dict) with a ``seed`` column, or a list of ints."""
    import numpy as np
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "seed" in model_input.columns:
            values = model_input["seed"].tolist()
        elif len(model_input.columns) == 1:
            values = model_input.iloc[:, 0].tolist()
        else:
            raise ValueError(f"predict input has no 'seed' column (columns: {list(model_input.columns)})")
    elif isinstance(model_input, dict):
        if "seed" not in model_input:
            raise ValueError(f"predict input has no 'seed' key (keys: {list(model_input)})")
        values = model_input["seed"]
        values = list(values) if isinstance(values, (list, tuple, np.ndarray, pd.Series)) else [values]
    elif isinstance(model_input, (list, tuple, np.ndarray, pd.Series)):
        values = list(np.asarray(model_input).reshape(-1))
    else:
        values = [model_input]
    seeds = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer, float, np.floating)) \
                or float(v) != int(v) or int(v) < 0:
            raise ValueError(f"a seed is a non-negative integer, not {v!r}")
        seeds.append(int(v))
    return seeds


def base_spec(reference: dict) -> str:
    """What load_generator is given for a reference's base generator: the manifest name, or the
    path as given when it exists here, else its absolute form at save time."""
    from .models import GENERATORS

    given = reference["generator"]
    if given in GENERATORS or Path(given).expanduser().exists():
        return given
    return reference.get("generator_path") or given


def _local(uri_or_path: str) -> Path:
    """A file:// URI (or a plain path) as a local path; anything else downloaded by MLflow."""
    parsed = urllib.parse.urlparse(uri_or_path)
    if parsed.scheme in ("", "file"):
        return Path(urllib.request.url2pathname(parsed.path) if parsed.scheme else uri_or_path)
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri_or_path))


with warnings.catch_warnings():  # MLflow asks for type hints on predict; the signature says it all
    warnings.simplefilter("ignore", UserWarning)

    class GeneratorModel(mlflow.pyfunc.PythonModel):
        """The unlearned generator: the base generator with the version's checkpoint; predict renders
        seeds (a DataFrame or dict with a ``seed`` column, or a list of {"seed": int}) as uint8
        images [N, H, W, 3]; ``params={"truncation": psi}``."""

        def load_context(self, context):
            from .models import load_generator

            self.reference = json.loads(Path(context.artifacts[REFERENCE]).read_text())
            checkpoint = context.artifacts.get(CHECKPOINT) or _local(self.reference["checkpoint_uri"])
            self.generator = load_generator(base_spec(self.reference), None, checkpoint=checkpoint)

        def predict(self, context, model_input, params=None):
            truncation = float((params or {}).get("truncation", 1.0))
            return render_seeds(self.generator, seeds_of(model_input), truncation)


def signature(resolution: int | None):
    """Input: a column ``seed`` (long); output: uint8 images [N, H, W, 3]; param: truncation (psi)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    side = int(resolution) if resolution else -1
    return ModelSignature(inputs=Schema([ColSpec("long", "seed")]),
                          outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, side, side, 3))]),
                          params=ParamSchema([ParamSpec("truncation", "double", 1.0)]))


def pip_requirements() -> list[str]:
    """The model's requirements, pinned to the installed versions (read locally: nothing resolved online)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _merged_checkpoint(start: Path, run: Path, dst: Path) -> Path:
    """A fleet that started from an unlearned generator: its tensors with the run's on top, so the
    checkpoint holds everything that differs from the base generator."""
    from safetensors.torch import load_file

    from .models.checkpoint import read_metadata, save_trainable

    meta = read_metadata(run)
    tensors = {**load_file(str(start)), **load_file(str(run))}
    extra = {k: v for k, v in meta.items() if k not in ("format", "generator")}
    return save_trainable(dst, tensors, meta["generator"], {**extra, "start_checkpoint_sha256": sha256(start)})


def save_generator_model(path: Path, checkpoint: str | Path, base_generator: str, identities: list[str],
                         resolution: int | None = None, start_checkpoint: str | Path | None = None,
                         embed_checkpoint: bool = True, extra: dict | None = None) -> Path:
    """Write the MLflow Model of ``checkpoint`` on top of ``base_generator`` to the folder ``path``
    (it must not exist). ``start_checkpoint``: the checkpoint the run started from (merged under
    this one). ``embed_checkpoint`` False: the model points to the file (``checkpoint_uri``)."""
    from .models.checkpoint import read_metadata

    path = Path(path)
    checkpoint = Path(checkpoint)
    staging = Path(tempfile.mkdtemp(prefix="guide_ray-model-"))
    try:
        if start_checkpoint is not None:  # a pointed-to merge stays beside the run's checkpoint
            merged = staging if embed_checkpoint else checkpoint.parent / "model"
            checkpoint = _merged_checkpoint(Path(start_checkpoint), checkpoint, merged / "checkpoint.safetensors")
        given = str(base_generator)
        reference = {"format": REFERENCE_FORMAT, "generator": given,
                     "generator_path": str(Path(given).expanduser().resolve()) if Path(given).expanduser().exists()
                     else None,
                     "resolution": resolution, "checkpoint_metadata": read_metadata(checkpoint),
                     "checkpoint_sha256": sha256(checkpoint), "identities": list(identities),
                     **({"checkpoint_uri": checkpoint.resolve().as_uri()} if not embed_checkpoint else {}),
                     **(extra or {})}
        (staging / "base_generator.json").write_text(json.dumps(reference, indent=2))
        artifacts = {REFERENCE: str(staging / "base_generator.json")}
        if embed_checkpoint:
            artifacts[CHECKPOINT] = str(checkpoint)
        quiet = logging.getLogger("mlflow.pyfunc")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its advice to log models from code instead of a pickled instance
        try:
            with warnings.catch_warnings():  # and to give an input example (it would run the generator)
                warnings.simplefilter("ignore", UserWarning)
                mlflow.pyfunc.save_model(
                    str(path), python_model=GeneratorModel(), artifacts=artifacts, signature=signature(resolution),
                    pip_requirements=pip_requirements(),  # given: save_model infers nothing
                    metadata={"guide_ray": REFERENCE_FORMAT})
        finally:
            quiet.setLevel(level)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def has_model(client, run_id: str) -> bool:
    """Whether ``run_id`` holds a logged generator model (an earlier, interrupted registration)."""
    return any(a.path == f"{MODEL_PATH}/MLmodel" for a in client.list_artifacts(run_id, MODEL_PATH))


def log_generator_model(client, run_id: str, checkpoint: str | Path, base_generator: str, identities: list[str],
                        resolution: int | None = None, start_checkpoint: str | Path | None = None,
                        embed_checkpoint: bool = True, extra: dict | None = None) -> str:
    """Save the model (save_generator_model) and log it into ``run_id`` as artifact path ``model``
    with ``client`` (an MlflowClient); returns the model's artifact URI."""
    with tempfile.TemporaryDirectory(prefix="guide_ray-model-") as tmp:
        folder = save_generator_model(Path(tmp) / MODEL_PATH, checkpoint, base_generator, identities, resolution,
                                      start_checkpoint, embed_checkpoint, extra)
        client.log_artifacts(run_id, str(folder), MODEL_PATH)
    return model_source(client, run_id)


def model_source(client, run_id: str) -> str:
    """Where the model of ``run_id`` lives: the run's artifact URI + /model (a model version's source)."""
    return client.get_run(run_id).info.artifact_uri.rstrip("/") + f"/{MODEL_PATH}"


# --- generator URIs ------------------------------------------------------------------------------

class ResolvedGenerator(NamedTuple):
    base: str  # the base generator, for load_generator
    checkpoint: Path  # the local checkpoint.safetensors
    pinned: str  # the URI with an alias resolved: models:/NAME/VERSION (or the runs:/ URI as given)
    reference: dict  # the model's base_generator.json


def tracking_uri_of(explicit: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else MLflow's own default."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def _locate(uri: str, tracking_uri: str) -> tuple[str, str]:
    """(the URI with an alias pinned, where its files are) of a generator URI: models:/NAME@ALIAS ->
    models:/NAME/VERSION and the version's source; runs:/RUN_ID/PATH -> the run's artifact URI/PATH.
    The store is asked directly (MLflow's models:/ download would ask the process-wide registry)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if uri.startswith("runs:/"):
            run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
            return uri, client.get_run(run_id).info.artifact_uri.rstrip("/") + (f"/{path}" if path else "")
        rest = uri[len("models:/"):].rstrip("/")
        name, alias, number = rest, None, "latest"
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
        elif "/" in rest:
            name, number = rest.rsplit("/", 1)
        if not client.search_registered_models(f"name = '{name}'"):
            raise ModelUriError(f"{uri}: no registered model named {name!r} in {tracking_uri} "
                                "(set --tracking-uri or MLFLOW_TRACKING_URI to the fleet's store)")
        if alias:
            number = client.get_model_version_by_alias(name, alias).version
        elif number == "latest":
            number = max((int(v.version) for v in client.search_model_versions(f"name = '{name}'")), default=None)
            if number is None:
                raise ModelUriError(f"{uri}: registered model {name!r} has no version")
        elif not number.isdigit():
            raise ModelUriError(f"{uri}: give a version number or an alias (models:/NAME/VERSION, models:/NAME@ALIAS)")
        return f"models:/{name}/{number}", client.get_model_version_download_uri(name, str(number))
    except MlflowException as e:
        raise ModelUriError(f"{uri}: {e.message}") from None


def resolve_generator(uri: str, tracking_uri: str | None = None, dst: str | Path | None = None) -> ResolvedGenerator:
    """Download the generator model named by ``uri`` (models:/NAME@ALIAS, models:/NAME/VERSION,
    runs:/RUN_ID/model) into ``dst`` (default: a new temporary folder) from the store at
    ``tracking_uri`` (tracking_uri_of); its base generator and local checkpoint."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    tracking_uri = tracking_uri_of(tracking_uri)
    pinned, source = _locate(str(uri), tracking_uri)
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="guide_ray-generator-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                         tracking_uri=tracking_uri, registry_uri=tracking_uri))
    except MlflowException as e:
        raise ModelUriError(f"{uri}: {e.message}") from None
    if not (local / "MLmodel").is_file():
        raise ModelUriError(f"{uri} is no MLflow Model (no MLmodel in {local}); a version registered before "
                            "guide_ray logged models holds checkpoint.safetensors: pass --generator BASE "
                            "--checkpoint checkpoint.safetensors")
    flavor = Model.load(str(local / "MLmodel")).flavors.get("python_function", {})
    files = {k: v["path"] if isinstance(v, dict) else v for k, v in (flavor.get("artifacts") or {}).items()}
    if REFERENCE not in files:
        raise ModelUriError(f"{uri} is an MLflow Model, but not a guide_ray generator (no {REFERENCE} artifact)")
    reference = json.loads((local / files[REFERENCE]).read_text())
    checkpoint = local / files[CHECKPOINT] if CHECKPOINT in files else _local(reference["checkpoint_uri"])
    return ResolvedGenerator(base_spec(reference), checkpoint, pinned, reference)
