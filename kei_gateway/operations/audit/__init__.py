"""The tamper-evident audit trail (issue 6, SPEC §7): an HMAC chain of records in the ledger.

* :mod:`kei_gateway.operations.audit.chain` — pure: :func:`canonical`, :func:`mac`, :func:`verify_chain`;
* :mod:`kei_gateway.operations.audit.log` — :class:`AuditLog` on SQLAlchemy (blocking);
* :mod:`kei_gateway.operations.audit.operator_action` — :func:`record_operator_action` for CLI commands;
* :mod:`kei_gateway.operations.audit.observer` — the daemon's log observer (events → records, batched);
* :mod:`kei_gateway.operations.audit.report` — ``kei-gateway audit report``.

See docs/audit.md.
"""

from kei_gateway.operations.audit.chain import (
    ANCHOR_EVENT,
    GENESIS_MAC,
    AuditRecord,
    ChainHead,
    ChainProblem,
    ChainReport,
    StoredRecord,
    canonical,
    mac,
    verify_chain,
)
from kei_gateway.operations.audit.log import (
    AuditError,
    AuditKeyError,
    AuditLog,
    AuditUnavailable,
    PurgeResult,
    audit_key_from_config,
    load_audit_key,
)
from kei_gateway.operations.audit.operator_action import (
    operator_login,
    record_from_fields,
    record_operator_action,
    record_or_warn,
)

__all__ = [
    "AuditRecord", "StoredRecord", "ChainHead", "ChainProblem", "ChainReport", "canonical", "mac", "verify_chain",
    "GENESIS_MAC", "ANCHOR_EVENT",
    "AuditLog", "AuditError", "AuditKeyError", "AuditUnavailable", "PurgeResult", "audit_key_from_config", "load_audit_key",
    "record_operator_action", "record_or_warn", "operator_login", "record_from_fields",
]
