"""Many identities on Ray: ``python -m guide_ray.fleet IDS.csv [--mode parallel|sequential] ...``.

parallel: one actor per GPU (or per share of the CPUs) loads its networks once and takes identities
from the queue; each identity yields its own unlearned generator. sequential: identities are erased
one after another from the same generator; after each step the fleet re-measures ID for every
identity already forgotten and FID_pre against the original, so erosion shows.

Durability: every identity's files land in OUT/runs/FLEET_KEY/ID/ (resumable, see
run.identity.run_identity); the ledger OUT/ledger.parquet gets one row per identity per fleet,
rewritten atomically as identities finish. A rerun with the same out dir and config (or
``--resume``) skips finished identities and reruns failed ones. A worker killed mid-identity is
restarted by Ray and the identity retried from its last checkpoint. This layer only schedules
``run_identity``; MLflow is reached through guide_ray.tracking.
"""

from .cli import main
from .driver import NOT_ALL_ERASED, Fleet, FleetError
from .ledger import Ledger
from .report import summary_table

__all__ = ["Fleet", "FleetError", "Ledger", "NOT_ALL_ERASED", "main", "summary_table"]
