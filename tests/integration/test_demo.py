"""``kei-gateway demo`` end to end: the real daemon, the JNKS simulator, the outbox, the inbox, the quarantine."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

DEMO_TIMEOUT = 100.0  # the demo takes ~10 s; generous for a busy 2-core machine, under pytest-timeout's 120 s


def test_when_the_demo_runs_then_it_exits_0_naming_the_delivered_files_the_receipts_the_quarantine_and_results() -> None:
    result = subprocess.run([sys.executable, "-m", "kei_gateway", "demo"], capture_output=True, text=True,
                            timeout=DEMO_TIMEOUT)
    output = result.stdout
    assert result.returncode == 0, output + result.stderr

    delivered = re.findall(r"^   (payments-00\d\.dat) +-> (131041_jnks-payments_\d{14}_\d+\.dat)  transfer \d+ DONE",
                           output, re.MULTILINE)
    assert [local for local, _ in delivered] == ["payments-001.dat", "payments-002.dat", "payments-003.dat"]
    for _, remote in delivered:
        assert re.search(rf"^   {re.escape(remote)}\.result  受付 998, エラー 2 ", output, re.MULTILINE), \
            f"no receipt line for {remote}"
    assert re.search(r"^   payments-broken\.dat: transfer \d+ QUARANTINED: \d+ error\(s\)", output, re.MULTILINE)
    assert "/spool/quarantine/jnks-payments/payments-broken.dat.errors.txt:" in output
    status = output.split("-- kei-gateway status\n", 1)[1].split("\n-- ", 1)[0]
    assert re.search(r"^   jnks-payments: 1 quarantined$", status, re.MULTILINE), status
    assert 'kei_gateway_transfers_total{flow="jnks-payments",outcome="done"} 3.0' in output
    assert 'kei_gateway_records_total{flow="jnks-payments",outcome="rejected_by_peer"} 6.0' in output
    assert 'kei_gateway_peer_up{peer="jnks"} 1.0' in output
    mpn = re.search(r"^-- spool/inbox/mpn-results/: (\d+) file\(s\) with ([\d,]+) results, each exactly once", output,
                    re.MULTILINE)
    assert mpn, "no line on the relayed payment results"
    distinct = re.search(r"^   ([\d,]+) distinct results; (\d+) 速報 repeated", output, re.MULTILINE)
    assert distinct and distinct.group(1) == mpn.group(2)
    assert re.search(r'^   kei_gateway_payment_results_total\{kind="provisional",outcome="duplicate"\} [1-9]', output,
                     re.MULTILINE), "the demo's repeated 速報 were not counted as duplicates"
    assert re.search(r"^   確認済 \(confirmed\) .* [1-9]\d*$", output, re.MULTILINE)
    assert re.search(r"^   金額不一致 \(amount mismatch\) .* [1-9]\d*$", output, re.MULTILINE)
    airis = re.findall(r"^   (0[1-8]) \S+ +(\d+) +(\d+)$", output, re.MULTILINE)
    assert [code for code, _, _ in airis] == ["01", "02", "03", "04", "05", "06", "07", "08"], "no AIRIS 突合 counts"
    assert all(rows == planted for _, rows, planted in airis), airis
    assert "-- SIGTERM: STOPPING=1, exit code 0" in output
    assert "== demo finished:" in output
