"""The sweep's searcher: Optuna (TPE, or NSGA-II for two objectives) inside Ray Tune, its study in
memory (saved with the Tune experiment) or in the sweep's ``optuna_storage`` database."""

from __future__ import annotations

import sys
from pathlib import Path

from .spec import Sweep


def searcher(sweep: Sweep, study_name: str):
    """The searcher; ``study_name`` names its study in ``sweep.optuna_storage`` (the sweep's key)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class Search(OptunaSearch):
        """Intermediate reports carry no objective (only ASHA uses them), and a trial that ASHA
        stopped has none: Optuna records it as pruned, not as a failed tell."""

        def on_trial_result(self, trial_id, result):
            if not isinstance(self.metric, list) and self.metric in result:
                super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id, result=None, error=False):
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            if result and any(result.get(m) is None for m in metrics):
                result = None
            super().on_trial_complete(trial_id, result, error)

    multi = len(sweep.objectives) == 2
    kind = sweep.searcher if sweep.searcher != "auto" else ("nsga2" if multi else "tpe")
    sampler = (optuna.samplers.NSGAIISampler(seed=sweep.seed, population_size=max(2, min(8, sweep.num_samples // 2)))
               if kind == "nsga2" else optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=4))
    points = []
    if sweep.include_defaults:
        point = {k: sweep.base[k] for k in sweep.space}
        if all(sweep.space[k].contains(v) for k, v in point.items()):
            points.append(point)
        else:
            print(f"note: the base configuration ({point}) lies outside the search space; not evaluated",
                  file=sys.stderr)
    metric = sweep.objectives if multi else sweep.objectives[0]
    mode = ["min"] * len(sweep.objectives) if multi else "min"
    storage = None
    if sweep.optuna_storage:
        from sqlalchemy.engine import make_url

        url = make_url(sweep.optuna_storage)
        if url.get_backend_name() == "sqlite":  # the database file's folder must exist
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(sweep.optuna_storage)
    return Search(metric=metric, mode=mode, sampler=sampler, points_to_evaluate=points or None, seed=None,
                  storage=storage, study_name=study_name)
