"""Sweeps: ``python -m guide_ray.sweep --config jobs/sweep/NAME.yaml [--set key=value ...]``.

Ray Tune runs trials; Optuna picks them (TPE for one objective, NSGA-II or multi-objective TPE for
two); ASHA stops poor trials early. A trial erases every identity of the sweep's ids.csv with its
configuration, the identities advanced together in blocks of ``report_every`` LTU iterations;
after each block it reports the mean ID so far and a cheap preservation proxy (the perceptual
drift of G_u from G_s on a few fixed latents), which ASHA ranks by ``progress_score`` =
id_now + drift_weight x drift. A trial that runs to the end is evaluated in full:

    unlearning   = mean over identities of mean(ID, ID_others)   (ID alone for seeds), where an
                   identity whose verdict is not "erased" counts as 1 (a smear, a person the
                   generator cannot draw or one still there is never a success)
    preservation = mean over identities of FID_pre
    score        = unlearning + fid_weight x preservation        (single-objective runs)

The sweep writes OUT/trials.csv, the Pareto front of (unlearning, preservation) over the trials
that erased every identity as OUT/pareto.csv,
OUT/pareto.md and OUT/pareto.png, every trial across its parameters and objectives as
OUT/parallel_coordinates.png, logs a parent MLflow run (holding those files) with a nested run per
trial (every report, at step = its training_iteration), and ``--export-best PATH`` writes a chosen
trial's full configuration as YAML for the fleet and its unlearned generators as
DIR/ID/checkpoint.safetensors (DIR: PATH without its suffix). A trial is checkpointed after every
report, so an interrupted sweep resumes from OUT/tune/NAME when run again: finished trials are not
rerun, and a trial stopped mid-way goes on from its last report. The Optuna study can be kept in a
database (``optuna_storage``).
The method is core.*; this layer only schedules it.
"""

from .cli import main
from .callback import EXPERIMENT
from .driver import SweepInterrupted, run_sweep
from .results import pareto_front
from .spec import Sweep, SweepError, load_sweep

__all__ = ["EXPERIMENT", "Sweep", "SweepError", "SweepInterrupted", "load_sweep", "main", "pareto_front", "run_sweep"]
