"""MPN payment results (SPEC §2.4): identity by keyed digests and reconciliation. Pure.

::

    keyer = ResultKeyer.from_keyring(keyring)              # HMAC keys derived from the store keys
    facts = facts_from_records(parse_records(chunks, get_layout("mpn-results"), options), keyer)
    known = result_ledger.known_identities(set().union(*(keyer.identity_candidates(f) for f in facts)))
    report = reconcile(result_ledger.results_received_on(day), now, unconfirmed_after)
    print(render_text(report)); write_csv(report, stream)
"""

from kei_gateway.core.results.identity import (
    KIND_CANCEL,
    KIND_FINAL,
    KIND_PROVISIONAL,
    Digests,
    ResultFacts,
    ResultKeyer,
    earlier_match_keys,
    facts_from_records,
    facts_of,
    fresh_results,
    slip_hint,
    under_recorded_keys,
)
from kei_gateway.core.results.reconcile import (
    ChannelSummary,
    Problem,
    ReconcileReport,
    StoredResult,
    reconcile,
    render_csv,
    render_text,
    unconfirmed_counts,
)

__all__ = ["KIND_PROVISIONAL", "KIND_FINAL", "KIND_CANCEL", "Digests", "ResultFacts", "ResultKeyer", "earlier_match_keys", "under_recorded_keys", "facts_of",
           "facts_from_records", "fresh_results", "slip_hint", "StoredResult", "ChannelSummary", "Problem", "ReconcileReport",
           "reconcile", "unconfirmed_counts", "render_text", "render_csv"]
