"""``kei-gateway sim jnks|mpn``: a peer simulator in the foreground (SPEC §12), until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twisted.logger import Logger

from kei_gateway.cli import exitcodes
from kei_gateway.cli._args import share
from kei_gateway.sim import pki
from kei_gateway.sim.faults import FAULT_DOCS, Faults, parse_fault
from kei_gateway.sim.tls import parse_listen

__all__ = ["register", "run_jnks", "run_mpn", "write_sim_pki"]

log = Logger(namespace="kei_gateway.sim")


def _fault(text: str) -> str:
    try:
        parse_fault(text, Faults())
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _listen(text: str) -> str:
    try:
        parse_listen(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _lines(text: str) -> frozenset[int]:
    try:
        numbers = frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of line numbers") from None
    if any(n < 1 for n in numbers):
        raise argparse.ArgumentTypeError("line numbers start at 1")
    return numbers


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = subparsers.add_parser("sim", help="run a peer simulator (WebDAV subset over mutual TLS) in the foreground")
    kinds = sim.add_subparsers(dest="simulator", metavar="PEER", parser_class=type(sim))
    jnks = kinds.add_parser(
        "jnks", help="軽JNKS: validates uploads under /upload/ and writes /results/<name>.result",
        description="The 軽JNKS simulator: PUT /upload/<name>.part, MOVE to /upload/<name>, then "
                    "PROPFIND/GET/DELETE /results/<name>.result. Runs until SIGTERM or Ctrl-C.",
        epilog=_FAULTS_EPILOG,
    )
    _add_server_arguments(jnks, "directory holding upload/ and results/")
    jnks.add_argument("--lg-code", metavar="CODE", help="reject records whose 全国地方公共団体コード differs (E116)")
    jnks.add_argument("--reject-lines", type=_lines, default=frozenset(), metavar="N,N,...",
                      help="reject these record numbers with E900 even when valid")
    jnks.add_argument("--reject-rate", type=share, default=0.0, metavar="SHARE",
                      help="reject this share (0..1) of valid records with E900")
    jnks.add_argument("--seed", type=int, default=0, help="seed of --reject-rate (default 0)")
    _add_log_target(jnks)
    jnks.set_defaults(func=run_jnks)
    _register_mpn(kinds)
    sim.set_defaults(func=lambda args: _usage(sim))


_FAULTS_EPILOG = ("faults (--fault NAME[=VALUE], repeatable): "
                  + "; ".join(f"{name}: {doc}" for name, doc in FAULT_DOCS.items()))


def _add_server_arguments(parser: argparse.ArgumentParser, root_help: str) -> None:
    """The options every simulator has: where it listens, its root, its TLS identity and faults."""
    parser.add_argument("--listen", type=_listen, default="127.0.0.1:8443", metavar="HOST:PORT",
                        help="address to listen on (default 127.0.0.1:8443)")
    parser.add_argument("--root", required=True, metavar="DIR", help=root_help)
    parser.add_argument("--cert", metavar="FILE", help="server certificate chain (PEM, leaf first)")
    parser.add_argument("--key", metavar="FILE", help="server private key (PEM)")
    parser.add_argument("--client-ca", metavar="FILE", help="CA(s) a client certificate must chain to (PEM)")
    parser.add_argument("--make-pki", metavar="DIR",
                        help="instead of --cert/--key/--client-ca: write a throwaway PKI to DIR (ca.pem, "
                             "server.crt/.key, client.crt/.key) and use it")
    parser.add_argument("--fault", type=_fault, action="append", default=[], metavar="NAME[=VALUE]",
                        help="inject a fault (repeatable); see below")


def _add_log_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-target", choices=("auto", "journal", "terminal"), default="terminal",
                        help="where the per-request lines go (default: terminal, one line each on stderr)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 10 ** 7:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more), e.g. 30")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


_MPN_SHARES = (
    ("--results-share", 1.0, "share of the valid slips that get paid (a 速報); default 1"),
    ("--push-share", 0.0, "share of 速報 files pushed only (needs --push-url); default 0"),
    ("--both-share", 0.0, "share of 速報 files pushed AND left in /results/ (the gateway must relay them once); "
                          "the rest are left for pull only; default 0"),
    ("--cancel-share", 0.0, "share of 速報 followed by a 速報取消 instead of a 確報; default 0"),
    ("--mismatch-share", 0.0, "share of 速報 whose 確報 has a different amount; default 0"),
    ("--missing-share", 0.0, "share of 速報 never followed by a 確報; default 0"),
    ("--duplicate-share", 0.0, "share of 速報 repeated in the next 速報 file; default 0"),
    ("--repeat-push-share", 0.0, "share of pushed files PUT again after success, as if the response was lost "
                                 "(the gateway answers 204); default 0"),
)


def _register_mpn(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mpn = kinds.add_parser(
        "mpn", help="MPN 収納機関共同利用センター: takes slips under /slips/, answers with 速報/確報/取消 results",
        description="The MPN joint-use centre simulator: PUT /slips/<name>.part, MOVE to /slips/<name>; each "
                    "valid slips file is turned into payment results (速報 in batches, pushed to --push-url "
                    "and/or left in /results/ for PROPFIND/GET/DELETE; later 確報 and 速報取消 in /results/). "
                    "Deterministic from --seed and the file name. A push that keeps failing is left in "
                    "/results/, so nothing is lost. Runs until SIGTERM or Ctrl-C. See docs/simulators.md.",
        epilog=_FAULTS_EPILOG,
    )
    _add_server_arguments(mpn, "directory holding slips/ and results/")
    mpn.add_argument("--seed", type=int, default=0, help="seed of every choice (default 0)")
    for flag, default, text in _MPN_SHARES:
        mpn.add_argument(flag, type=share, default=default, metavar="SHARE", help=text)
    mpn.add_argument("--batch-size", type=_positive, default=100, metavar="N", help="速報 records per file "
                     "(default 100)")
    mpn.add_argument("--batch-interval", type=_seconds, default=0.0, metavar="SECONDS",
                     help="seconds between one 速報 file and the next (default 0)")
    mpn.add_argument("--confirm-after", type=_seconds, default=0.0, metavar="SECONDS",
                     help="seconds after a 速報 file until its 確報/取消 files appear (default 0: right after)")
    mpn.add_argument("--push-confirmations", action="store_true",
                     help="push the 確報/取消 files too (they are always left in /results/)")
    mpn.add_argument("--push-url", metavar="URL",
                     help="push base URL: PUT URL/<name> (e.g. https://127.0.0.1:8443/push/mpn-results)")
    mpn.add_argument("--push-cert", metavar="FILE", help="the simulator's client certificate for pushing (PEM)")
    mpn.add_argument("--push-key", metavar="FILE", help="its private key (PEM)")
    mpn.add_argument("--push-ca", metavar="FILE", help="CA(s) the gateway's server certificate must chain to")
    mpn.add_argument("--push-attempts", type=_positive, default=5, metavar="N",
                     help="attempts per push before the file is left in /results/ (default 5)")
    mpn.add_argument("--push-first-delay", type=_seconds, default=1.0, metavar="SECONDS",
                     help="first retry delay, doubled each time (default 1; Retry-After is honoured)")
    mpn.add_argument("--push-max-delay", type=_seconds, default=30.0, metavar="SECONDS",
                     help="longest retry delay (default 30)")
    mpn.add_argument("--report", metavar="FILE",
                     help="write what was produced and the expected results (JSON, dummy data) to FILE "
                          "whenever all deliveries are done")
    _add_log_target(mpn)
    mpn.set_defaults(func=run_mpn)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return exitcodes.USAGE


def write_sim_pki(directory: str, hosts: tuple[str, ...]) -> dict[str, str]:
    """A throwaway CA with a server and a client certificate in *directory*; the paths by role."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    ca = pki.make_ca("kei-gateway simulator CA (throwaway)")
    server = pki.issue(ca, "kei-gateway simulator", hosts=hosts, client=False)
    client = pki.issue(ca, "kei-gateway simulator client", hosts=("localhost",), server=False)
    paths = {role: os.path.join(directory, name) for role, name in (
        ("ca", "ca.pem"), ("cert", "server.crt"), ("key", "server.key"),
        ("client_cert", "client.crt"), ("client_key", "client.key"))}
    with open(paths["ca"], "wb") as f:
        f.write(ca.certificate_pem())
    with open(paths["cert"], "wb") as f:
        f.write(server.certificate_pem() + ca.certificate_pem())
    with open(paths["client_cert"], "wb") as f:
        f.write(client.certificate_pem())
    pki.write_secret(paths["key"], server.key_pem())
    pki.write_secret(paths["client_key"], client.key_pem())
    return paths


def run_jnks(args: argparse.Namespace) -> int:
    from kei_gateway.runtime.journal import GatewayLogObserver, begin_logging
    from kei_gateway.sim.jnks import JnksOptions

    faults = Faults()
    for text in args.fault:
        faults = parse_fault(text, faults)
    host, _ = parse_listen(args.listen)
    if args.make_pki:
        paths = write_sim_pki(args.make_pki, hosts=tuple(dict.fromkeys((host, "127.0.0.1", "localhost"))))
        cert, key, client_ca = paths["cert"], paths["key"], paths["ca"]
    elif args.cert and args.key and args.client_ca:
        cert, key, client_ca = args.cert, args.key, args.client_ca
    else:
        print("kei-gateway sim jnks: give --cert, --key and --client-ca, or --make-pki DIR for a throwaway PKI",
              file=sys.stderr)
        return exitcodes.USAGE
    options = JnksOptions(lg_code=args.lg_code, reject_lines=args.reject_lines, reject_rate=args.reject_rate,
                          seed=args.seed)
    begin_logging(GatewayLogObserver(target=args.log_target))
    return _serve(args.listen, args.root, cert, key, client_ca, faults, options)


def _server_files(args: argparse.Namespace, name: str) -> tuple[str, str, str] | None:
    """The server certificate, key and client CA: given, or a throwaway PKI from --make-pki."""
    host, _ = parse_listen(args.listen)
    if args.make_pki:
        paths = write_sim_pki(args.make_pki, hosts=tuple(dict.fromkeys((host, "127.0.0.1", "localhost"))))
        return paths["cert"], paths["key"], paths["ca"]
    if args.cert and args.key and args.client_ca:
        return args.cert, args.key, args.client_ca
    print(f"kei-gateway sim {name}: give --cert, --key and --client-ca, or --make-pki DIR for a throwaway PKI",
          file=sys.stderr)
    return None


def run_mpn(args: argparse.Namespace) -> int:
    from kei_gateway.runtime.journal import GatewayLogObserver, begin_logging
    from kei_gateway.sim.mpn import MpnOptions, start_mpn_simulator

    faults = Faults()
    for text in args.fault:
        faults = parse_fault(text, faults)
    try:
        options = MpnOptions(
            seed=args.seed, results_share=args.results_share, push_share=args.push_share,
            both_share=args.both_share, cancel_share=args.cancel_share, mismatch_share=args.mismatch_share,
            missing_share=args.missing_share, duplicate_share=args.duplicate_share,
            repeat_push_share=args.repeat_push_share, batch_size=args.batch_size,
            batch_interval=args.batch_interval, confirm_after=args.confirm_after,
            push_confirmations=args.push_confirmations, push_url=args.push_url, push_cert=args.push_cert,
            push_key=args.push_key, push_ca=args.push_ca, push_attempts=args.push_attempts,
            push_first_delay=args.push_first_delay, push_max_delay=args.push_max_delay)
    except ValueError as error:
        flag = str(error).replace("_share", "-share").replace("push_", "push-").replace("_", "-")
        print(f"kei-gateway sim mpn: {flag} (see --help)", file=sys.stderr)
        return exitcodes.USAGE
    files = _server_files(args, "mpn")
    if files is None:
        return exitcodes.USAGE
    cert, key, client_ca = files
    begin_logging(GatewayLogObserver(target=args.log_target))

    def start(reactor: Any) -> Any:
        return start_mpn_simulator(reactor, args.listen, args.root, cert, key, client_ca, faults, options=options,
                                   report=args.report)

    return _run_until_stopped("mpn", start)


def _serve(listen: str, root: str, cert: str, key: str, client_ca: str, faults: Faults, options: Any) -> int:
    from kei_gateway.sim.jnks import start_jnks_simulator

    def start(reactor: Any) -> Any:
        return start_jnks_simulator(reactor, listen, root, cert, key, client_ca, faults, options=options)

    return _run_until_stopped("jnks", start)


def _run_until_stopped(name: str, start_simulator: Any) -> int:
    """Run the global reactor with the simulator *start_simulator(reactor)* starts, until SIGTERM/Ctrl-C."""
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    exit_code = [exitcodes.OK]
    running: list[Any] = []

    def failed(failure: Any) -> None:
        log.error("{sim} simulator cannot start: {reason}", sim=name,
                  reason=str(failure.value) or failure.type.__name__)
        exit_code[0] = exitcodes.FAILED
        reactor.stop()

    def start() -> None:
        d = start_simulator(reactor)
        d.addCallbacks(running.append, failed)

    def stop() -> Any:
        if running:
            sim = running[0]
            log.info("{sim} simulator stopping; faults fired: {fired}", sim=name,
                     fired=dict(sim.faults_fired) or "none")
            personality_stop = getattr(sim.personality, "stop", None)
            if personality_stop is not None:
                personality_stop()
            return sim.stop()
        return None

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return exit_code[0]
