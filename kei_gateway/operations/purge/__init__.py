"""The daily purge (SPEC §7 連携データは毎日削除): what is erased, erasing it, the 消去報告, the schedule.

* :mod:`~kei_gateway.operations.purge.plan` — the pure decision (:func:`plan_purge`);
* :mod:`~kei_gateway.operations.purge.execute` — the blocking executor (:func:`run_purge`,
  :func:`secure_unlink`, :class:`PurgeLedger`);
* :mod:`~kei_gateway.operations.purge.report` — the deletion report's CSV and text;
* :mod:`~kei_gateway.operations.purge.schedule` and :mod:`~kei_gateway.operations.purge.service` — when it runs
  in the daemon (:class:`PurgeService`).

See docs/purge.md.
"""

from kei_gateway.operations.purge.execute import (
    AuditPruner,
    PurgeLedger,
    PurgeOutcome,
    last_completed,
    plan_from_config,
    reports_directory,
    run_purge,
    secure_unlink,
)
from kei_gateway.operations.purge.plan import AREAS, Area, Erasure, Listed, PurgePlan, Retention, plan_purge
from kei_gateway.operations.purge.report import HEADINGS, ErasedItem, PurgeRun
from kei_gateway.operations.purge.schedule import missed_run, next_scheduled, scheduled_before

__all__ = ["AREAS", "Area", "Erasure", "Listed", "PurgePlan", "Retention", "plan_purge", "PurgeLedger", "PurgeOutcome",
           "run_purge", "plan_from_config", "secure_unlink", "last_completed", "reports_directory", "AuditPruner",
           "HEADINGS", "ErasedItem", "PurgeRun", "missed_run", "next_scheduled", "scheduled_before"]
