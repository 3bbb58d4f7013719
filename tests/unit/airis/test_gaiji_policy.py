"""The AIRIS flow's own 外字 policy (SPEC §13: AIRIS values outside JIS X 0208 follow the flow's ``gaiji``)."""

from __future__ import annotations

import datetime

import pytest

from kei_gateway.adapters.airis_zip import write_airis_zip
from kei_gateway.config import ConfigError, config_from_string
from kei_gateway.flows.airis_reconcile import AirisInputError, Reconciliation, reconcile
from kei_gateway.layouts import render_records
from kei_gateway.layouts.airis import TAX_REGISTER_2W, AirisCase, airis_csv_bytes, generate_airis_case

KEY = "dummy-gaiji-key"
NO_UNIQUE_CANDIDATE = "褜"
"""An IBM extension kanji of CP932 (so it can be in the AIRIS CSV) that neither 縮退 map maps to one character."""
FLOW = '[gateway]\nlg_code = "131041"\n[flows.airis-reconcile]\nairis_outbox = "outbox/airis"\n' \
       'register_outbox = "outbox/airis-register"\ninbox = "inbox/airis-reconcile"\n'


def case_with(name: str) -> AirisCase:
    case = generate_airis_case(12, {"02": 1}, seed=9)
    case.airis[4]["owner_name"] = name
    return case


def run(case: AirisCase, **policy: str) -> Reconciliation:
    return reconcile(airis_zip=write_airis_zip(airis_csv_bytes(case.airis), KEY), key_file=KEY.encode(),
                     register=b"".join(render_records(TAX_REGISTER_2W, case.register)), lg_code="131041",
                     at=datetime.datetime(2025, 7, 1, tzinfo=datetime.timezone.utc), airis_label="AIRIS.zip",
                     **policy)  # type: ignore[arg-type]


def dat(result: Reconciliation) -> bytes:
    return b"".join(result.dat_chunks())


def test_when_no_policy_is_given_then_a_variant_kanji_is_written_by_its_degenerate_form() -> None:
    result = run(case_with("髙橋　太郎"))
    assert "高橋".encode("cp932") in dat(result) and (result.degenerated, result.substituted) == (1, 0)


def test_when_gaiji_is_substitute_then_every_outside_character_becomes_geta() -> None:
    result = run(case_with("髙橋　太郎"), gaiji="substitute")
    assert "〓橋".encode("cp932") in dat(result) and (result.degenerated, result.substituted) == (0, 1)


def test_when_gaiji_is_reject_then_the_run_is_refused_naming_row_and_column_with_the_value_masked() -> None:
    case = case_with("髙橋　太郎　ダミー")
    with pytest.raises(AirisInputError) as refused:
        run(case, gaiji="reject")
    (problem,) = refused.value.problems
    assert refused.value.label == "AIRIS.zip (its CSV)"
    assert problem.startswith("row 6: 所有者氏名 (owner_name): has a 外字 at character 1 (outside JIS X 0208)")
    assert 'gaiji = "degenerate"' in problem and "髙橋" not in problem and "[value '****" in problem


def test_when_degenerate_finds_no_unique_candidate_then_the_fallback_decides() -> None:
    case = case_with(f"{NO_UNIQUE_CANDIDATE}田　花子")
    result = run(case, gaiji="degenerate", gaiji_fallback="substitute")
    assert "〓田".encode("cp932") in dat(result) and result.substituted == 1
    with pytest.raises(AirisInputError) as refused:
        run(case, gaiji="degenerate", gaiji_fallback="reject")
    assert "no unique 縮退 candidate" in refused.value.problems[0]
    assert 'gaiji_fallback = "substitute"' in refused.value.problems[0]


def test_when_the_flow_section_has_no_gaiji_then_degenerate_with_substitute_applies() -> None:
    settings = config_from_string(FLOW).flows["airis-reconcile"]
    assert (settings.gaiji, settings.gaiji_fallback) == ("degenerate", "substitute")


@pytest.mark.parametrize(("key", "value"), [("gaiji", "maybe"), ("gaiji_fallback", "degenerate"), ("gaiji", "1")])
def test_when_a_gaiji_key_has_a_bad_value_then_the_config_is_refused_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config_from_string(FLOW + f'{key} = "{value}"\n')
    paths = {problem.path: problem.message for problem in refused.value.problems}
    assert list(paths) == [f"flows.airis-reconcile.{key}"], paths
    assert "reject" in paths[f"flows.airis-reconcile.{key}"]  # the allowed values are named


def test_when_the_flow_is_built_then_it_runs_with_the_configured_policy() -> None:
    from twisted.internet.testing import MemoryReactorClock
    from prometheus_client import CollectorRegistry

    from kei_gateway.flows.airis_flow import build_airis_flow
    from kei_gateway.runtime.metrics import GatewayMetrics
    from kei_gateway.testing import InMemoryLedger, SynchronousBlocking

    from kei_gateway.flows.airis_flow import AirisReconcileService
    from kei_gateway.flows.dependencies import FlowDependencies
    from kei_gateway.testing import InMemoryBlobStore

    config = config_from_string(FLOW + 'gaiji = "reject"\n')
    blocking = SynchronousBlocking()
    deps = FlowDependencies(clock=MemoryReactorClock(), ledger=InMemoryLedger(), store=InMemoryBlobStore(),
                            blocking=blocking, intake_blocking=blocking, metrics=GatewayMetrics(CollectorRegistry()),
                            environ={}, make_client=lambda config, peer: None, relay_for=lambda flow: None,
                            status_soon=lambda: None, note_erased=lambda erased, when: None, use_inotify=False)
    current = [config]
    [flow] = build_airis_flow("airis-reconcile", lambda: current[0], deps)
    assert isinstance(flow, AirisReconcileService) and (flow.gaiji, flow.gaiji_fallback) == ("reject", "substitute")
    assert flow.max_file_size() == 2 << 30
    current[0] = config_from_string(FLOW.replace("[flows.", 'max_file_size = "1MiB"\n[flows.', 1))
    assert flow.max_file_size() == 1 << 20  # [gateway] max_file_size is reload=live: read at each check
