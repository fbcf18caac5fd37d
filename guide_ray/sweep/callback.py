"""The Tune callback that logs every trial report to MLflow, in the trial's run nested under the sweep's."""

from __future__ import annotations

from pathlib import Path

EXPERIMENT = "guide_ray-sweep"


def tune_callback(uri: str, artifacts: Path, sweep_key: str, parent: str, space: list[str]):
    """A Tune callback that logs each report of a trial to its nested MLflow run (step = the report's
    training_iteration; the run created by the first report, kept by a resumed trial) and ends the
    run when the trial completes or fails."""
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

        def _params(self, trial) -> dict:
            return {k: trial.config.get(k) for k in space}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.tracker.trial_report(parent, sweep_key, trial.trial_id, self._params(trial), result)

        def _end(self, trial, status: str):
            result = trial.last_result or {}
            if status == "complete" and result.get("unlearning") is None:
                status = "stopped early"
            self.tracker.trial_run(parent, sweep_key, trial.trial_id, self._params(trial), result, status)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._end(trial, "complete")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._end(trial, "error")

    return TrialLogger()
