"""Peer simulators (SPEC §12): a WebDAV-subset server over mutual TLS, with personalities.

The public surface::

    from kei_gateway.sim import Faults, JnksOptions, start_jnks_simulator

    running = yield start_jnks_simulator(reactor, "127.0.0.1:0", root, "server.crt", "server.key",
                                         "client-ca.pem", Faults(fail_put_503_times=1))
    running.url, running.port          # https://127.0.0.1:PORT/ ; PUT/MOVE under upload/, results under results/
    running.faults.delay_seconds = 2   # faults may change while it runs
    running.faults_fired["fail_put_503_times"]
    running.personality.receipts       # one Receipt per processed upload
    yield running.stop()

    running = yield start_mpn_simulator(reactor, "127.0.0.1:0", root, "server.crt", "server.key", "client-ca.pem",
                                        options=MpnOptions(push_url=..., push_cert=..., push_key=..., push_ca=...,
                                                           both_share=0.5, confirm_after=60))
    running.personality.produced       # one Produced per result file (name, kind, records, delivery)
    running.personality.truth          # GroundTruth: the distinct results the gateway must relay once
"""

from kei_gateway.sim.dav import DavPath, DavResource, DavSite, DavStore, dav_site
from kei_gateway.sim.faults import FAULT_DOCS, Faults, FaultState, parse_fault
from kei_gateway.sim.jnks import (
    JNKS_COLLECTIONS, JnksOptions, JnksPersonality, Receipt, check_file, check_record, start_jnks_simulator,
)
from kei_gateway.sim.mpn import (
    MPN_COLLECTIONS, GroundTruth, MpnOptions, MpnPersonality, PaymentResult, Produced, SlipsReceipt, check_slip,
    check_slips, plan_results, start_mpn_simulator,
)
from kei_gateway.sim.push_client import PushClient, PushOutcome
from kei_gateway.sim.server import RunningSim, start_simulator
from kei_gateway.sim.tls import ServerIdentity, make_server_context

__all__ = [
    "DavPath", "DavResource", "DavSite", "DavStore", "dav_site",
    "FAULT_DOCS", "Faults", "FaultState", "parse_fault",
    "JNKS_COLLECTIONS", "JnksOptions", "JnksPersonality", "Receipt", "check_file", "check_record",
    "start_jnks_simulator",
    "MPN_COLLECTIONS", "GroundTruth", "MpnOptions", "MpnPersonality", "PaymentResult", "Produced", "SlipsReceipt",
    "check_slip", "check_slips", "plan_results", "start_mpn_simulator", "PushClient", "PushOutcome",
    "RunningSim", "start_simulator", "ServerIdentity", "make_server_context",
]
