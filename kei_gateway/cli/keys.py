"""``kei-gateway keys rotate|generate``: store keys.

Rotating the store key:

1. ``kei-gateway keys generate --output /etc/kei-gateway/credentials/store-new.key``;
2. in the configuration, ``keys.store`` names the new key and ``keys.store_previous`` the old one;
3. restart the daemon: new blobs are written under the new key, old ones still read;
4. ``kei-gateway keys rotate`` (as the service user) re-encrypts every blob still under an old
   key; it is safe to interrupt and to run again, also while the daemon runs;
5. when it reports none left *and* payment results from before the rotation can no longer
   arrive (``flows.mpn-results.unconfirmed_after`` plus a margin, e.g. 30 days: their dedupe
   and 速報/確報 matching use keys derived from every listed store key, see docs/reconcile.md),
   empty ``keys.store_previous`` and restart the daemon.
"""

from __future__ import annotations

import argparse
import os
import sys

from kei_gateway.adapters.store.blobs import FileBlobStore, store_directory
from kei_gateway.adapters.store.errors import BlobBusy, BlobNotFound, BlobUnreadable, StoreKeyError
from kei_gateway.adapters.store.keys import KEY_BYTES, keyring_from_config, parse_store_key
from kei_gateway.cli import exitcodes
from kei_gateway.cli.main import config_path_from, show_usage
from kei_gateway.config import ConfigError, check_files, read_config

__all__ = ["register", "rotate", "generate", "rotate_store", "RotationCounts"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("keys", help="store keys: rotate, generate")
    keys = parser.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=type(parser))
    rot = keys.add_parser(
        "rotate", help="re-encrypt every blob of the store that is not under keys.store",
        description="Re-encrypt every blob still under a key of keys.store_previous with keys.store. "
                    "Run it as the service user after restarting the daemon with the new keys.store; "
                    "safe to interrupt and run again. When it reports none left and payment results from before the "
                    "rotation can no longer arrive (unconfirmed_after plus a margin, e.g. 30 days), "
                    "empty keys.store_previous.")
    rot.set_defaults(func=rotate)
    gen = keys.add_parser("generate", help="write a new store or audit key: 32 random bytes, mode 0600")
    gen.add_argument("--output", metavar="FILE", required=True, help="the key file to create (never overwritten)")
    gen.set_defaults(func=generate)
    parser.set_defaults(func=show_usage(parser))


class RotationCounts:
    """What one pass of :func:`rotate_store` did."""

    def __init__(self) -> None:
        self.total = 0
        self.reencrypted = 0
        self.current = 0
        self.gone = 0
        self.temps_removed = 0
        self.failed: list[str] = []


def rotate_store(store: FileBlobStore) -> RotationCounts:
    """Re-encrypt every blob not under the store's current key; collect failures rather than stop."""
    counts = RotationCounts()
    counts.temps_removed = store.recover()
    for blob_id in store.list_ids():
        counts.total += 1
        try:
            if store.rekey(blob_id):
                counts.reencrypted += 1
            else:
                counts.current += 1
        except BlobNotFound:
            counts.gone += 1  # purged while we ran
        except (BlobUnreadable, BlobBusy) as error:  # busy: being deleted or re-encrypted elsewhere; run again
            counts.failed.append(str(error))
    return counts


def rotate(args: argparse.Namespace) -> int:
    path = config_path_from(args)
    config = read_config(path)
    problems = [p for p in check_files(config) if p.path.startswith("keys.store")]
    if problems:
        raise ConfigError(path, problems)
    try:
        keyring = keyring_from_config(config)
    except StoreKeyError as error:
        print(f"{path}: keys.store / keys.store_previous: {error}", file=sys.stderr)
        return exitcodes.USAGE
    directory = store_directory(config)
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        print(f"No store at {directory} yet: nothing to re-encrypt. New blobs will be under key {keyring.current_id}.")
        return exitcodes.OK
    if st.st_uid != os.geteuid():
        print(f"{directory} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}): run this command as "
              f"the service user (e.g. 'sudo -u kei-gateway kei-gateway keys rotate') so re-encrypted blobs stay "
              f"readable by the daemon.", file=sys.stderr)
        return exitcodes.FAILED
    try:
        counts = rotate_store(FileBlobStore(directory, keyring))
    except OSError as error:
        print(f"{directory}: {error.strerror or error}; check the store directory and its permissions, then run "
              f"'kei-gateway keys rotate' again (it continues where it stopped).", file=sys.stderr)
        return exitcodes.FAILED
    from kei_gateway.operations.audit import record_or_warn

    record_or_warn(config, "operator.keys_rotated", count=counts.reencrypted, failed=len(counts.failed),
                   reason=f"{counts.reencrypted} re-encrypted, {counts.current} current, {len(counts.failed)} failed; "
                          f"key id {keyring.current_id}")
    print(f"Store {directory}: {counts.total} blob(s); current key id {keyring.current_id}, "
          f"previous key ids: {', '.join(keyring.previous_ids) or 'none'}.")
    print(f"  re-encrypted now:            {counts.reencrypted}")
    print(f"  already under the current key: {counts.current}")
    if counts.gone:
        print(f"  deleted meanwhile:           {counts.gone}")
    if counts.temps_removed:
        print(f"  leftovers of interrupted writes removed: {counts.temps_removed}")
    print(f"  failed:                      {len(counts.failed)}")
    if counts.failed:
        for message in counts.failed:
            print(f"  {message}", file=sys.stderr)
        print("Keep keys.store_previous as it is: the blobs above are not under the current key. Fix what each "
              "message says (or delete corrupt blobs), then run 'kei-gateway keys rotate' again.", file=sys.stderr)
        return exitcodes.FAILED
    if config.keys.store_previous:
        print("Every blob is under the current key. If the daemon already runs with this keys.store "
              "(restart it first if not, then run this again), keys.store_previous can now be emptied; "
              "restart the daemon after that.")
    else:
        print("Every blob is under the current key; keys.store_previous is already empty.")
    return exitcodes.OK


def _usable(key: bytes) -> bool:
    try:
        parse_store_key(key, "(new key)")
    except StoreKeyError:
        return False  # all printable or all zero: about 1 in 10**14
    return True


def generate(args: argparse.Namespace) -> int:
    target = args.output
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        print(f"{target}: exists; a key is never overwritten (blobs under it would become unreadable). "
              f"Choose another file name.", file=sys.stderr)
        return exitcodes.FAILED
    except OSError as error:
        print(f"{target}: cannot create: {error.strerror}; check the directory and its permissions", file=sys.stderr)
        return exitcodes.FAILED
    try:
        os.fchmod(fd, 0o600)
        key = os.urandom(KEY_BYTES)
        while not _usable(key):
            key = os.urandom(KEY_BYTES)
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    print(f"Wrote a new {KEY_BYTES}-byte key to {target} (mode 0600). Make it owned by the service user, "
          f"or load it with LoadCredential=.")
    _audit_key_generated(args)
    return exitcodes.OK


def _audit_key_generated(args: argparse.Namespace) -> None:
    """Record ``operator.key_generated`` when there is a configuration and an audit trail to record it in.

    ``keys generate`` also makes the first keys of an installation, before any configuration,
    ledger or audit key exists: then there is nothing to record in, and nothing is said.
    """
    from kei_gateway.operations.audit import AuditError, record_operator_action

    path = config_path_from(args)
    if not os.path.exists(path):
        return
    try:
        record_operator_action(read_config(path), "operator.key_generated")
    except (AuditError, ConfigError) as error:
        print(f"note: the new key is not recorded in the audit trail ({error})", file=sys.stderr)
