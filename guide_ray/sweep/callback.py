"""The Tune callback that logs each trial to MLflow as it ends, nested under the sweep's run."""

from __future__ import annotations

from pathlib import Path

EXPERIMENT = "guide_ray-sweep"


def tune_callback(uri: str, artifacts: Path, sweep_key: str, parent: str, space: list[str]):
    """A Tune callback that logs each trial to MLflow as it ends (nested under the sweep's run)."""
    from ray import tune

    class TrialLogger(tune.Callback):
        def __init__(self):
            self._tracker = None

        def __getstate__(self):  # Tune saves its callbacks with the experiment; the client is rebuilt
            return {}

        def __setstate__(self, state):
            self._tracker = None

        @property
        def tracker(self):
            from ..tracking import Tracker

            if self._tracker is None:
                self._tracker = Tracker(uri, artifacts, EXPERIMENT)
            return self._tracker

        def _log(self, trial, status: str):
            result = trial.last_result or {}
            if status == "complete" and result.get("unlearning") is None:
                status = "stopped early"
            self.tracker.trial_run(parent, sweep_key, trial.trial_id, {k: trial.config.get(k) for k in space},
                                   result, status)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._log(trial, "complete")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._log(trial, "error")

    return TrialLogger()
