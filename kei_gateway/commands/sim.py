"""``kei-gateway sim jnks``: a peer simulator in the foreground (SPEC §12), until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twisted.logger import Logger

from kei_gateway.commands._args import share
from kei_gateway import exitcodes, pki
from kei_gateway.sim.faults import FAULT_DOCS, Faults, parse_fault
from kei_gateway.sim.tls import parse_listen

__all__ = ["register", "run_jnks", "write_sim_pki"]

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


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sim = subparsers.add_parser("sim", help="run a peer simulator (WebDAV subset over mutual TLS) in the foreground")
    kinds = sim.add_subparsers(dest="simulator", metavar="PEER", parser_class=type(sim))
    jnks = kinds.add_parser(
        "jnks", help="軽JNKS: validates uploads under /upload/ and writes /results/<name>.result",
        description="The 軽JNKS simulator: PUT /upload/<name>.part, MOVE to /upload/<name>, then "
                    "PROPFIND/GET/DELETE /results/<name>.result. Runs until SIGTERM or Ctrl-C.",
        epilog="faults (--fault NAME[=VALUE], repeatable): "
               + "; ".join(f"{name}: {doc}" for name, doc in FAULT_DOCS.items()),
    )
    jnks.add_argument("--listen", type=_listen, default="127.0.0.1:8443", metavar="HOST:PORT",
                      help="address to listen on (default 127.0.0.1:8443)")
    jnks.add_argument("--root", required=True, metavar="DIR", help="directory holding upload/ and results/")
    jnks.add_argument("--cert", metavar="FILE", help="server certificate chain (PEM, leaf first)")
    jnks.add_argument("--key", metavar="FILE", help="server private key (PEM)")
    jnks.add_argument("--client-ca", metavar="FILE", help="CA(s) a client certificate must chain to (PEM)")
    jnks.add_argument("--make-pki", metavar="DIR",
                      help="instead of --cert/--key/--client-ca: write a throwaway PKI to DIR (ca.pem, "
                           "server.crt/.key, client.crt/.key) and use it")
    jnks.add_argument("--fault", type=_fault, action="append", default=[], metavar="NAME[=VALUE]",
                      help="inject a fault (repeatable); see below")
    jnks.add_argument("--lg-code", metavar="CODE", help="reject records whose 全国地方公共団体コード differs (E116)")
    jnks.add_argument("--reject-lines", type=_lines, default=frozenset(), metavar="N,N,...",
                      help="reject these record numbers with E900 even when valid")
    jnks.add_argument("--reject-rate", type=share, default=0.0, metavar="SHARE",
                      help="reject this share (0..1) of valid records with E900")
    jnks.add_argument("--seed", type=int, default=0, help="seed of --reject-rate (default 0)")
    jnks.add_argument("--log-target", choices=("auto", "journal", "terminal"), default="terminal",
                      help="where the per-request lines go (default: terminal, one line each on stderr)")
    jnks.set_defaults(func=run_jnks)
    sim.set_defaults(func=lambda args: _usage(sim))


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
    from kei_gateway.journal import GatewayLogObserver, begin_logging
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


def _serve(listen: str, root: str, cert: str, key: str, client_ca: str, faults: Faults, options: Any) -> int:
    from twisted.internet import reactor as _reactor

    from kei_gateway.sim.jnks import start_jnks_simulator

    reactor: Any = _reactor
    exit_code = [exitcodes.OK]
    running: list[Any] = []

    def failed(failure: Any) -> None:
        log.error("jnks simulator cannot start: {reason}", reason=str(failure.value) or failure.type.__name__)
        exit_code[0] = exitcodes.FAILED
        reactor.stop()

    def start() -> None:
        d = start_jnks_simulator(reactor, listen, root, cert, key, client_ca, faults, options=options)
        d.addCallbacks(running.append, failed)

    def stop() -> Any:
        if running:
            log.info("jnks simulator stopping; faults fired: {fired}",
                     fired=dict(running[0].faults_fired) or "none")
            return running[0].stop()
        return None

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return exit_code[0]
