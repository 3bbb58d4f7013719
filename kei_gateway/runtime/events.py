"""Every event the gateway logs, declared once.

An :class:`EventType` carries the fixed journald ``MESSAGE_ID``, the log level,
the one-line format string (``twisted.logger`` style, keyword fields only) and
the Japanese and English explanation and remedy from which the journald
message catalog (``systemd/kei-gateway.catalog``) is generated.

Code logs an event with :func:`emit`::

    emit(log, events.LISTENER_DENIED, listener="metrics", reason="address", source="10.0.0.9")

The standard fields ``flow``, ``peer``, ``transfer_id``, ``sha256``, ``records``
and ``reason`` become the journald fields ``KEI_FLOW`` … ``KEI_REASON``; the
event's name becomes ``KEI_EVENT``. Never pass a personal value (a name, an
amount, a plate, chassis or slip number) as a field: ids, counts, hashes only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger, LogLevel

__all__ = ["EventType", "ALL_EVENTS", "by_name", "emit", "STANDARD_FIELDS", "describe_error"]

STANDARD_FIELDS = ("flow", "peer", "transfer_id", "sha256", "records", "reason")
"""Event keyword fields that map to ``KEI_<FIELD>`` journald fields."""


@dataclass(frozen=True)
class EventType:
    """One kind of event: its identity, level, message and catalog text."""

    name: str
    message_id: str
    level: LogLevel
    format: str
    summary_en: str
    summary_ja: str
    remedy_en: str
    remedy_ja: str


def _event(
    name: str, message_id: str, level: LogLevel, format: str,
    summary_en: str, summary_ja: str, remedy_en: str, remedy_ja: str,
) -> EventType:
    return EventType(name, message_id, level, format, summary_en, summary_ja, remedy_en, remedy_ja)


DAEMON_STARTING = _event(
    "daemon.starting", "c531faf6a70a45c99979a2fb9e61e910", LogLevel.info,
    "kei-gateway {version} starting with configuration {config_path}",
    "The gateway daemon is starting.", "ゲートウェイのデーモンが起動しています。",
    "None needed.", "対応は不要です。",
)
DAEMON_READY = _event(
    "daemon.ready", "456928f6416a442cb3789a0f0ed74f82", LogLevel.info,
    "kei-gateway ready: listeners {listeners}, database schema {schema}",
    "The gateway has migrated its database, bound its listeners and told systemd it is ready.",
    "データベースの移行とリスナーの待受けが完了し、systemd に準備完了を通知しました。",
    "None needed.", "対応は不要です。",
)
DAEMON_STOPPING = _event(
    "daemon.stopping", "9a29ab4c3813470a831720a2da6dbd14", LogLevel.info,
    "kei-gateway stopping: draining transfers in flight",
    "The gateway received SIGTERM (or was told to stop) and is finishing work in flight before it exits.",
    "SIGTERM などで停止を指示されたため、処理中の転送を完了させてから終了します。",
    "None needed. If the stop was not planned, see who ran 'systemctl stop kei-gateway'.",
    "対応は不要です。予定外の停止であれば、誰が systemctl stop を実行したか確認してください。",
)
DAEMON_STOPPED = _event(
    "daemon.stopped", "6bb9699fc2f64017a3423b22056c9307", LogLevel.info,
    "kei-gateway stopped cleanly",
    "The gateway has stopped; nothing was left half done.",
    "ゲートウェイは正常に停止しました。中途半端な処理は残っていません。",
    "None needed.", "対応は不要です。",
)
DAEMON_FAILED = _event(
    "daemon.failed", "70db70c9cf674b32bd47780b147badea", LogLevel.critical,
    "kei-gateway cannot start: {reason}",
    "The gateway could not start: the configuration, a key or certificate, the database or a listener address is unusable.",
    "設定、鍵・証明書、データベース、待受けアドレスのいずれかに問題があり、ゲートウェイを起動できません。",
    "Read the reason in this entry, fix it (run 'kei-gateway check-config' for configuration problems), then 'systemctl restart kei-gateway'.",
    "本エントリの理由を確認して修正し（設定の問題は kei-gateway check-config で確認できます）、systemctl restart kei-gateway を実行してください。",
)
CONFIG_RELOADED = _event(
    "config.reloaded", "99a5ae5aaa7c492bb4b380da5a5498df", LogLevel.info,
    "configuration reloaded from {config_path}: {changes}",
    "On SIGHUP the gateway re-read its configuration and applied the allow-lists, peers and log level.",
    "SIGHUP により設定を再読込し、許可リスト・接続先・ログレベルを反映しました。",
    "None needed. Settings that need a restart (listener addresses, database, keys) are named in the message.",
    "対応は不要です。再起動が必要な設定（待受けアドレス、データベース、鍵）はメッセージに示されます。",
)
CONFIG_RELOAD_FAILED = _event(
    "config.reload_failed", "5f7e7580081b449594efd298c9215796", LogLevel.error,
    "configuration reload refused, keeping the running configuration: {reason}",
    "On SIGHUP the new configuration was invalid; the gateway keeps running with the old one.",
    "SIGHUP で読み込んだ新しい設定が不正なため、従来の設定のまま動作を続けています。",
    "Run 'kei-gateway check-config' to see every problem with its key path, fix the file, then 'systemctl reload kei-gateway'.",
    "kei-gateway check-config で問題箇所（キーのパス）をすべて確認して修正し、systemctl reload kei-gateway を実行してください。",
)
CONFIG_RESTART_NEEDED = _event(
    "config.restart_needed", "b38eee59ba1748ca96f9753667963099", LogLevel.warn,
    "configuration change of {keys} takes effect only after a restart",
    "A reload changed settings that cannot change while running (listener addresses, database, keys, state directories).",
    "実行中には変更できない設定（待受けアドレス、データベース、鍵、状態ディレクトリ）が再読込で変更されました。",
    "Run 'systemctl restart kei-gateway' at a quiet moment.",
    "業務に影響の少ない時間に systemctl restart kei-gateway を実行してください。",
)
LISTENER_DENIED = _event(
    "listener.denied", "4984db45de834d8fae112f5626428021", LogLevel.warn,
    "{listener} listener refused a connection from {source}: {reason}",
    "A connection came from an address outside the listener's allow-list and was closed before any request was read.",
    "許可リスト外のアドレスからの接続を、要求を読む前に切断しました。",
    "If the source is a legitimate client (e.g. a new Prometheus server), add its address to the listener's 'allow' (for the push listener: the peer's peers.<name>.push_allow) and reload; otherwise investigate the source.",
    "正当な接続元（新しい Prometheus サーバなど）であればリスナーの allow（プッシュ受付では接続先の peers.<名前>.push_allow）に追加して reload してください。そうでなければ接続元を調査してください。",
)
LISTENER_REFUSALS_REPEATED = _event(
    "listener.refusals_repeated", "5928de92579d4a9188db1e8181eba03b", LogLevel.warn,
    "{listener} listener refused {count} more connection(s) or request(s) from {source} ({reason}) in the {seconds} s after the one logged",
    "A burst of refusals from one source for one reason ended. Only the first refusal of a burst is logged as it happens; this line counts the rest (each one is also counted in kei_gateway_denied_connections_total).",
    "同じ接続元・同じ理由の拒否が続いた期間が終わりました。拒否は期間の最初の 1 件だけを記録し、この行で残りの件数を示します（各拒否は kei_gateway_denied_connections_total にも計上しています）。",
    "Look at the first refusal of the burst (same source and reason) just before this line. Many refusals from a listed peer (slow_body, header_timeout, connections, header_size) mean a broken or hostile client: tell its operator, or remove its address from push_allow and reload.",
    "この行の直前にある、同じ接続元・理由の最初の拒否を確認してください。許可された接続先からの大量の拒否（slow_body・header_timeout・connections・header_size）は、故障または悪意あるクライアントを示します。接続先の運用者に連絡するか、push_allow からそのアドレスを外して reload してください。",
)
LISTENER_BOUND = _event(
    "listener.bound", "a610b8fcaf2544fa9e59203535610005", LogLevel.info,
    "{listener} listener bound to {address}",
    "A listener is accepting connections.", "リスナーが接続の受付を開始しました。",
    "None needed.", "対応は不要です。",
)
DATABASE_MIGRATED = _event(
    "database.migrated", "6be371fe71c147d5af274ab62f885f16", LogLevel.info,
    "database schema at revision {schema} ({url})",
    "The ledger database schema is up to date (Alembic migrations ran if needed).",
    "台帳データベースのスキーマが最新です（必要に応じて移行を実行しました）。",
    "None needed.", "対応は不要です。",
)
DATABASE_UNAVAILABLE = _event(
    "database.unavailable", "10dae8cf93c0406da01d47b32eee15d4", LogLevel.critical,
    "database does not answer: {reason}",
    "The ledger database refused or did not answer the daemon's check. The daemon keeps running (the watchdog stays fed: a restart would not bring the database back): /readyz answers 503, kei_gateway_database_up is 0, nothing is claimed, ingested, sent or relayed, and the work resumes by itself when the database answers again (database.available).",
    "台帳データベースがデーモンの確認を拒否したか、応答しませんでした。デーモンは動作を続けます（再起動してもデータベースは戻らないため、ウォッチドッグへの通知は続けます）。/readyz は 503、kei_gateway_database_up は 0 となり、処理の取得・取込・送信・中継は行いません。データベースが応答すると自動的に再開します（database.available）。",
    "Check the database (PostgreSQL: the server, its failover, the network to it; SQLite: disk space and permissions of the file in gateway.state_dir). Nothing to do on the gateway.",
    "データベースを確認してください（PostgreSQL: サーバ、フェイルオーバー、ネットワーク。SQLite: gateway.state_dir のファイルのディスク容量と権限）。ゲートウェイ側の対応は不要です。",
)
DATABASE_AVAILABLE = _event(
    "database.available", "07209b5345854624b66e813a83d8d3a1", LogLevel.info,
    "database answers again (unavailable for {seconds}s)",
    "The ledger database answers the daemon's check again after database.unavailable; the daemon is ready again and resumes its work.",
    "database.unavailable の後、台帳データベースが再び応答しました。デーモンは準備完了に戻り、処理を再開します。",
    "None needed. Note the outage if it was not planned.",
    "対応は不要です。計画外の停止であれば記録してください。",
)
WATCHDOG_STARVED = _event(
    "watchdog.starved", "8b72228915e74e69a527ba5eff51d907", LogLevel.critical,
    "the watchdog is no longer fed: {reason}",
    "The daemon's check of its own machinery (the reactor, the blocking thread pool, one bounded ledger call) did not end in time: something in the daemon hangs. systemd kills and restarts it once WatchdogSec passes, after dumping every thread's stack (SIGABRT).",
    "デーモン自身の機構（リアクタ、ブロッキング処理のスレッドプール、時間制限付きの台帳呼び出し）の確認が時間内に終わりませんでした。デーモン内部で何かが停止しています。WatchdogSec を過ぎると systemd が全スレッドのスタックを出力（SIGABRT）させたうえで再起動します。",
    "Read the thread stacks in the journal just before the restart (journalctl -u kei-gateway -p err) and report them; check the shared filesystem (a hung NFS mount blocks the pool) and the database's network.",
    "再起動直前のジャーナルにあるスレッドのスタック（journalctl -u kei-gateway -p err）を確認し、報告してください。共有ファイルシステム（NFS のハングはスレッドプールを止めます）とデータベースへのネットワークも確認してください。",
)
CERTIFICATE_EXPIRING = _event(
    "certificate.expiring", "32ae27ee4ba447fb8f6430bdad0b34e9", LogLevel.warn,
    "{role} certificate expires in {days} days ({not_after})",
    "A certificate the gateway uses expires within 30 days; after that peers refuse the connection.",
    "ゲートウェイが使用する証明書の有効期限が 30 日以内に切れます。期限後は接続が拒否されます。",
    "Request a renewed certificate (LGPKI application certificate) now, install it and reload.",
    "更新した証明書（LGPKI アプリケーション証明書）を申請・設置し、reload してください。",
)
CERTIFICATE_EXPIRED = _event(
    "certificate.expired", "0d2b66a3dd76486494a59c70b867f46f", LogLevel.critical,
    "{role} certificate expired on {not_after}",
    "A certificate the gateway uses has expired; peers will refuse connections.",
    "ゲートウェイが使用する証明書の有効期限が切れています。接続は拒否されます。",
    "Install a renewed certificate and reload the gateway.",
    "更新した証明書を設置し、ゲートウェイを reload してください。",
)
INTERNAL_ERROR = _event(
    "internal.error", "de29ace4d3d541f89f06eee882169154", LogLevel.error,
    "unexpected error: {reason}",
    "An unexpected error occurred; the operation it interrupted will be retried or left for an operator.",
    "予期しないエラーが発生しました。中断された処理は再試行されるか、運用者の対応待ちになります。",
    "If it repeats, collect 'journalctl -u kei-gateway' around this entry and report it.",
    "繰り返し発生する場合は、このエントリ前後の journalctl -u kei-gateway を添えて報告してください。",
)
INGEST_QUEUED = _event(
    "ingest.queued", "c6c9f28224454d0da9fa5bd1f6c4c4fc", LogLevel.info,
    "{flow}: took {name} ({records} records) as transfer {transfer_id}, {state}",
    "A file from the tax system's outbox was validated, encrypted into the gateway's store and committed; the plaintext original was removed.",
    "税務システムの送信フォルダのファイルを検証し、暗号化して保管・台帳登録しました。平文の元ファイルは削除しました。",
    "None needed. A HELD transfer waits for 'kei-gateway transfers approve ID'.",
    "対応は不要です。HELD の転送は kei-gateway transfers approve ID による承認を待ちます。",
)
INGEST_QUARANTINED = _event(
    "ingest.quarantined", "db44db7b6fb94cc88002f1370281d4a8", LogLevel.warn,
    "{flow}: quarantined {name}: {reason}",
    "An outbox entry was refused (invalid records, a name not allowed, larger than max_file_size, or changed while it was read); nothing of it was sent. A regular file is kept encrypted in the gateway's store as a QUARANTINED transfer (a file over max_file_size is not read or kept) and its reasons are written to quarantine/<flow>/<name>.errors.txt; a link, directory or device is moved to quarantine/ as it is.",
    "送信フォルダのファイルを拒否しました（レコードの誤り、許可されない名前、max_file_size 超過、または読込中の変更）。一切送信していません。通常ファイルはゲートウェイの保管領域に暗号化して QUARANTINED の転送として保持し（max_file_size を超えるファイルは読まず保持もしません）、理由を quarantine/<フロー>/<名前>.errors.txt に書きました。リンク・ディレクトリ・デバイスはそのまま隔離フォルダへ移しました。",
    "Read quarantine/<flow>/<name>.errors.txt (record, field and reason of each error, or why the file was refused), correct the file at the tax system and write it to the outbox again (whole, renamed into place only once it is complete); the refused file itself comes back with 'kei-gateway transfers export ID'.",
    "quarantine/<フロー>/<名前>.errors.txt（各エラーのレコード・項目・理由、または拒否の理由）を確認し、税務システム側で修正して送信フォルダへ再出力してください（書き終えてから名前を変更して置くこと）。拒否したファイル自体は kei-gateway transfers export ID で取り出せます。",
)
INGEST_FAILED = _event(
    "ingest.failed", "95c8b9e00a414db8a78caf20d056cdf6", LogLevel.error,
    "{flow}: could not take {name}: {reason}",
    "Reading, storing or committing an outbox file failed; the file stays in the outbox and is tried again at the next scan.",
    "送信フォルダのファイルの読込・保管・台帳登録に失敗しました。ファイルは送信フォルダに残り、次回の走査で再試行します。",
    "Check the disk space and permissions of the state directory, of $TMPDIR (/var/tmp under the systemd unit: the uniqueness check's scratch file of a large file) and of the database; the reason names the failing step.",
    "状態ディレクトリ、$TMPDIR（systemd ユニットでは /var/tmp：大きなファイルの一意性検査の一時ファイル）、データベースの空き容量・権限を確認してください。理由に失敗した処理が示されます。",
)
TRANSFER_SENT = _event(
    "transfer.sent", "0bd457284f0f41ee902dd96bcaca7a41", LogLevel.info,
    "{flow}: transfer {transfer_id} delivered to {peer} as {remote_name} ({size} bytes, {records} records)",
    "A file was uploaded to the peer and moved to its final name; the peer now has it exactly once.",
    "ファイルを接続先へ送信し、最終名へ移動しました。接続先は当該ファイルを一度だけ受領しています。",
    "None needed.", "対応は不要です。",
)
TRANSFER_RETRY = _event(
    "transfer.retry", "6ae4fe2eedbb42eab5e7214c298c6625", LogLevel.warn,
    "{flow}: transfer {transfer_id} attempt {attempts} to {peer} failed ({reason}); next attempt at {next_attempt_at}",
    "Sending failed for a reason that may pass (network, timeout, the peer busy); the gateway tries again on its back-off schedule.",
    "一時的な要因（ネットワーク、タイムアウト、接続先の混雑）で送信に失敗しました。再送間隔に従って再試行します。",
    "None needed unless it repeats; then check the network path to the peer and the peer's status.",
    "繰り返す場合は接続先までの経路と接続先の稼働状況を確認してください。",
)
TRANSFER_FAILED = _event(
    "transfer.failed", "1141a3830d034859a8fd11d715e1384a", LogLevel.error,
    "{flow}: transfer {transfer_id} to {peer} FAILED after {attempts} attempt(s): {reason}",
    "A transfer used up its attempts or hit an error a retry cannot cure (conflicting file at the peer, a corrupt stored blob, a refused request).",
    "再試行回数を使い切ったか、再試行で解決しない誤り（接続先の同名別内容ファイル、保管データの破損、要求の拒否）で転送が失敗しました。",
    "Read the reason, fix the cause, then 'kei-gateway transfers retry ID' (or 'transfers cancel ID --reason ...').",
    "理由を確認して原因を解消し、kei-gateway transfers retry ID（または transfers cancel ID --reason ...）を実行してください。",
)
PEER_DENIED = _event(
    "peer.denied", "be16ee3b31614e53b1f3e20a53573524", LogLevel.error,
    "{flow}: connection to {peer} refused before connecting: {reason}",
    "The peer's address resolved outside its 'allow' list (or a URL pointed elsewhere); nothing was sent and the transfer waits in the queue for a person.",
    "接続先のアドレスが allow の範囲外（または URL が別ホスト）のため接続前に拒否しました。何も送信しておらず、転送は担当者の対応を待っています。",
    "Check DNS and the peer's addresses; if the peer really moved, update peers.<name>.allow, regenerate the systemd allow-list and reload.",
    "DNS と接続先のアドレスを確認してください。接続先の移転であれば peers.<名前>.allow を更新し、systemd の許可リストを再生成して reload してください。",
)
PEER_IDENTITY_FAILED = _event(
    "peer.identity_failed", "65d957b6505d41fa9bfa8673fd9e72c8", LogLevel.critical,
    "{flow}: {peer} failed the TLS identity check ({reason}); nothing was sent",
    "The peer's certificate did not chain to its configured CA, did not match the host, or did not match a pin: the other side may not be the real peer.",
    "接続先の証明書が設定した CA に連鎖しない、ホスト名が一致しない、またはピンが一致しません。相手が正規の接続先でない可能性があります。",
    "Treat as a security incident until explained: confirm the peer's certificate renewal with its operator, update 'ca' or 'pins' only on their word, then reload.",
    "原因が判明するまでセキュリティ事案として扱ってください。接続先の運用者に証明書更新を確認し、確認できた場合のみ ca または pins を更新して reload してください。",
)
DOWNLOAD_RELAYED = _event(
    "download.relayed", "54e103792cac439788d4627ecb3523af", LogLevel.info,
    "{flow}: relayed {name} from {peer} to the inbox ({records} records) as transfer {transfer_id}",
    "A file from the peer was downloaded, verified, stored, written atomically to the tax system's inbox and then deleted at the peer.",
    "接続先のファイルを取得・検証・保管し、税務システムの受信フォルダへ原子的に書き込んだ後、接続先から削除しました。",
    "None needed.", "対応は不要です。",
)
DOWNLOAD_RECEIVED = _event(
    "download.received", "d05adea6bb1041e6bc1b804727869a4f", LogLevel.info,
    "{flow}: file from {peer} received and stored encrypted ({records} records) as transfer {transfer_id}",
    "An audit record only (not logged): a file pulled from the peer was validated, stored encrypted and recorded as "
    "a transfer, in the transaction that records it; download.relayed follows once it is in the inbox.",
    "監査記録のみ（ログには出力しません）：接続先から取得したファイルを検証し、暗号化して保管・台帳登録しました"
    "（同じトランザクションで記録）。受信フォルダへの中継後に download.relayed が記録されます。",
    "None needed.", "対応は不要です。",
)
RECEIPT_REJECTIONS = _event(
    "receipt.rejections", "6d0e2a032745469fb186ba7c42735826", LogLevel.warn,
    "{flow}: {peer} rejected {rejected} of {records} records of transfer {transfer_id} ({name})",
    "軽JNKS accepted the file but refused some records (受付結果 エラー); those vehicles' payment status is not registered.",
    "軽JNKS はファイルを受け付けましたが、一部のレコードをエラーとしました。該当車両の納付情報は登録されていません。",
    "Open the receipt in the inbox (jnks-receipts), correct the listed records at the tax system and send them again.",
    "受信フォルダ（jnks-receipts）の受付結果を確認し、エラーのレコードを税務システム側で修正して再送してください。",
)
DOWNLOAD_QUARANTINED = _event(
    "download.quarantined", "1bc5b651772248e5b979dd93f108d4d1", LogLevel.critical,
    "{flow}: file {name} from {peer} is invalid and was quarantined, not relayed: {reason}",
    "A file the peer provided does not match its layout; it was kept encrypted in quarantine, recorded so it is not fetched again, and left at the peer.",
    "接続先のファイルがレイアウトに合致しないため、中継せず暗号化して隔離しました。再取得しないよう記録し、接続先には残しています。",
    "Contact the peer's operator with the file name and the errors listed in quarantine/<flow>/<name>.errors.txt; nothing reached the tax system.",
    "ファイル名と quarantine/<フロー>/<名前>.errors.txt のエラー内容を添えて接続先の運用者へ連絡してください。税務システムには何も渡っていません。",
)
MESSAGE = _event(
    "message", "88bc4dfbc2c34b89a2fccea413f9b2df", LogLevel.info,
    "{text}",
    "A general message from the gateway or one of its libraries.",
    "ゲートウェイまたはそのライブラリからの一般的なメッセージです。",
    "See the message text.", "メッセージ本文を確認してください。",
)
RESULTS_RELAYED = _event(
    "results.relayed", "8659306411734b459fad08b5ff7ddc74", LogLevel.info,
    "{flow}: transfer {transfer_id}: {records} new payment results relayed to the inbox as {name}, {duplicates} duplicates not relayed again",
    "The new payment results of a received file were written to the inbox as one file and recorded; results relayed before (by push or pull, or repeated) were counted and left out.",
    "受信ファイルのうち未中継の納付結果を 1 ファイルにまとめて受信フォルダへ書き出し、記録しました。中継済み（プッシュ・取得の重複や再送）の結果は件数のみ数え、再中継していません。",
    "None needed. A name of '-' means every result of the file had been relayed before.",
    "対応は不要です。名前が「-」の場合は、ファイル内の結果がすべて中継済みだったことを示します。",
)
RESULTS_RELAY_FINISHED = _event(
    "results.relay_finished", "9b90a41fcd8b4dfd927560b29ee95be8", LogLevel.info,
    "{flow}: transfer {transfer_id}: the relay of {name} decided before a stop or crash was completed",
    "The gateway stopped (or crashed) after recording a file's results but before marking the relay done; at start it finished the relay without writing the results twice.",
    "納付結果の記録後、中継完了の記録前にゲートウェイが停止（異常終了）していたため、起動時に中継を完了させました。結果を二重に書き出してはいません。",
    "None needed. If the daemon crashed, find out why in the journal before this entry.",
    "対応は不要です。異常終了していた場合は、この前のジャーナルで原因を確認してください。",
)
RESULTS_UNCONFIRMED = _event(
    "results.unconfirmed", "7cc9b618a7a340f290d32a13a3f84664", LogLevel.warn,
    "{flow}: {records} 速報 have had no 確報 or cancellation for more than {limit}",
    "Provisional payment results (速報) were relayed, but neither their confirmation (確報) nor a cancellation (速報取消) arrived within flows.mpn-results.unconfirmed_after.",
    "速報を中継しましたが、flows.mpn-results.unconfirmed_after を過ぎても確報・速報取消が届いていません。",
    "Run 'kei-gateway results reconcile' to list them (masked slip numbers, channel, time) and ask the MPN centre about each; check that the results flow is being fetched (kei_gateway_peer_up).",
    "kei-gateway results reconcile で該当分（マスクした納付番号・チャネル・日時）を確認し、MPN センターに照会してください。結果ファイルの取得が行われているか（kei_gateway_peer_up）も確認してください。",
)
PUSH_ACCEPTED = _event(
    "push.accepted", "52b0c4f4ca994f82a1b4e020bda7fd76", LogLevel.info,
    "{flow}: push {name} from {peer} accepted ({records} records) as transfer {transfer_id}",
    "A peer pushed a file to the push listener; it was validated, stored encrypted and committed, and the peer was told 201.",
    "接続先からプッシュされたファイルを検証し、暗号化して保管・台帳登録しました。接続先には 201 を返しました。",
    "None needed.", "対応は不要です。",
)
PUSH_REPEATED = _event(
    "push.repeated", "2570908fa3f842a29fab2d62b5fe5014", LogLevel.info,
    "{flow}: push {name} from {peer} repeats transfer {transfer_id} (same SHA-256); nothing stored or relayed again",
    "A peer pushed a file it had already pushed, byte for byte (typically after a lost response); the gateway answered 204 and kept only the first.",
    "接続先が送信済みと同一内容のファイルを再度プッシュしました（応答の消失後の再送など）。204 を返し、最初のものだけを保持しています。",
    "None needed.", "対応は不要です。",
)
PUSH_CONFLICT = _event(
    "push.conflict", "16efdafc12ad4179b59d9629f8fe12f1", LogLevel.warn,
    "{flow}: push {name} from {peer} refused with 409: transfer {transfer_id} already has that name with other content",
    "A peer pushed a file under a name it had already used for a different file; the new file was not kept.",
    "接続先が、受信済みファイルと同じ名前で異なる内容のファイルをプッシュしました。新しいファイルは保持していません。",
    "Ask the peer's operator why the file changed under the same name; if the new content is the right one, they must push it under a new name.",
    "同じ名前で内容が変わった理由を接続先の運用者に確認してください。新しい内容が正しい場合は、別の名前でプッシュしてもらってください。",
)
PUSH_QUARANTINED = _event(
    "push.quarantined", "606d048b55d34a379d01351c455b16ce", LogLevel.warn,
    "{flow}: push {name} from {peer} is invalid, quarantined and refused with 422: {reason}",
    "A file a peer pushed does not match its layout; it was kept encrypted in quarantine, not relayed, and the peer was told 422 with the errors.",
    "接続先からプッシュされたファイルがレイアウトに合致しないため、中継せず暗号化して隔離し、エラー一覧とともに 422 を返しました。",
    "Contact the peer's operator with the file name and the errors in quarantine/<flow>/<name>.errors.txt; nothing reached the tax system.",
    "ファイル名と quarantine/<フロー>/<名前>.errors.txt のエラー内容を添えて接続先の運用者へ連絡してください。税務システムには何も渡っていません。",
)
PUSH_REFUSED = _event(
    "push.refused", "18ac947a69ed458e82aaad4715e14d49", LogLevel.warn,
    "push from {source} refused ({status}, {reason}): {detail}",
    "A connection or request to the push listener was refused: no or an unknown client certificate, a pin mismatch, too many connections from one address, headers late, too large or too many, a malformed request, a peer pushing to a flow that is not its own, a wrong path or method, a body too large or too slow, or the listener busy. Only the first refusal of a burst (same source and reason) is logged; listener.refusals_repeated counts the rest.",
    "プッシュ受付で接続または要求を拒否しました（クライアント証明書なし・不明な CA・ピン不一致・同一アドレスからの接続数超過・ヘッダの遅延／過大／過多・不正な要求・他の接続先のフローへの送信・不正なパスやメソッド・本文のサイズ超過や送信速度不足・混雑）。同じ接続元・理由の連続した拒否は最初の 1 件だけを記録し、残りは listener.refusals_repeated で件数を示します。",
    "The reason names the check. A legitimate peer refused for its certificate: check peers.<name>.ca, pins and push_allow and reload; 'busy' needs nothing (the peer retries). connections, header_timeout, header_size, header_count, slow_body from a listed peer: a broken or hostile client (the limits are [listeners.push] keys, see docs/push.md). Otherwise investigate the source.",
    "理由に該当する検査が示されます。正当な接続先が証明書で拒否された場合は peers.<名前>.ca・pins・push_allow を確認して reload してください。busy は対応不要です（接続先が再送します）。許可された接続先からの connections・header_timeout・header_size・header_count・slow_body は、故障または悪意あるクライアントを示します（上限は [listeners.push] の設定、docs/push.md 参照）。それ以外は接続元を調査してください。",
)
PUSH_FAILED = _event(
    "push.failed", "cf98e2a6fc964f13be3d89c42a066b9e", LogLevel.error,
    "{flow}: push {name} from {peer} not taken: {reason}",
    "A pushed file could not be stored or committed (store, disk or database trouble, or the connection broke mid-body); nothing of it was kept and the peer was told 503 (or saw the connection close), so it pushes again.",
    "プッシュされたファイルを保管・台帳登録できませんでした（保管領域・ディスク・データベースの障害、または受信途中の切断）。何も保持しておらず、接続先には 503 を返した（または切断された）ため再送されます。",
    "If it repeats, check the disk space and permissions of the state directory and the database; the reason names the failing step.",
    "繰り返す場合は、状態ディレクトリとデータベースの空き容量・権限を確認してください。理由に失敗した処理が示されます。",
)
# -- controls (issue 6): approvals waiting too long ----------------------------
TRANSFER_HELD_OVERDUE = _event(
    "transfer.held_overdue", "7f7d834cc2344fa8b03a21fe26b9895f", LogLevel.warn,
    "{flow}: transfer {transfer_id} ({records} records) has been HELD for {hours} hours, since {held_since}, "
    "waiting for approval",
    "A bulk file (over hold_over_records) has waited more than 24 hours for the approval of the person in charge. "
    "This warning repeats once a day while it waits.",
    "大量データのファイル（hold_over_records 超過）が責任者の承認を 24 時間以上待っています。"
    "承認待ちの間、この警告は 1 日 1 回繰り返されます。",
    "Ask the person in charge to decide: 'kei-gateway transfers show ID', then 'kei-gateway transfers approve ID' "
    "or 'kei-gateway transfers cancel ID --reason ...'.",
    "責任者に判断を依頼してください。kei-gateway transfers show ID で確認し、kei-gateway transfers approve ID "
    "または kei-gateway transfers cancel ID --reason ... を実行します。",
)

# -- the daily purge (kei_gateway.operations.purge) ---------------------------------------------------
PURGE_DONE = _event(
    "purge.done", "6d3720f17282442cbb49dfed58f9a077", LogLevel.info,
    "purge erased {files} item(s): store {store}, inbox {inbox}, quarantine {quarantine}, ledger {ledger}; "
    "{kept_failed} FAILED transfer(s) kept; report {report}",
    "The daily purge erased the payloads, inbox and quarantine files and ledger metadata past their retention "
    "and appended the day's deletion report (消去報告).",
    "日次消去で、保存期間を過ぎた保管データ・受信フォルダと隔離フォルダのファイル・台帳メタデータを消去し、"
    "当日の消去報告に追記しました。",
    "None needed. The report under state_dir/reports lists every item; FAILED transfers keep their payload "
    "until 'kei-gateway transfers retry ID' or 'transfers cancel ID --reason ...'.",
    "対応は不要です。state_dir/reports の消去報告に各項目が記載されています。送信失敗 (FAILED) の転送は、"
    "kei-gateway transfers retry ID または transfers cancel ID --reason ... まで保管データを保持します。",
)
PURGE_FAILED = _event(
    "purge.failed", "251e747f40b04bf3a1d4f88511dcc7a7", LogLevel.error,
    "purge did not finish: {reason}",
    "The daily purge could not erase everything due (a permission, disk or database problem); what it erased is in "
    "the report, the rest is tried again in an hour and at the next start.",
    "日次消去で一部を消去できませんでした（権限・ディスク・データベースの問題）。消去済みの分は消去報告に記載され、"
    "残りは 1 時間後と次回起動時に再試行されます。",
    "Read the reason (it names the item and the failing step), fix it, then run 'kei-gateway purge' to finish now.",
    "理由（対象と失敗した処理が示されます）を確認して修正し、kei-gateway purge を実行して消去を完了してください。",
)
PURGE_MISSED = _event(
    "purge.missed", "0f7495484c0449449bf85a40fd4e1462", LogLevel.warn,
    "the purge due at {due} did not run (last completed: {last}); running it now",
    "The daemon was not running (or the purge failed) at gateway.purge_at, so the daily purge runs at start.",
    "gateway.purge_at の時刻にデーモンが停止していた（または消去が失敗した）ため、起動時に日次消去を実行します。",
    "None needed; check that the purge.done event follows.",
    "対応は不要です。続いて purge.done が記録されることを確認してください。",
)
PURGE_ERASED = _event(
    "purge.erased", "711b7d54eb924ea594cb844723fd64cf", LogLevel.info,
    "purge erased {area} of transfer {transfer_id}: {reason}",
    "An audit record only (not logged): the purge erased a transfer's stored payload, or the transfer's ledger "
    "metadata, in the transaction that records it; the day's deletion report lists the same item.",
    "監査記録のみ（ログには出力しません）：日次消去で転送の保管データまたは台帳メタデータを消去し、"
    "その消去と同じトランザクションで記録しました。当日の消去報告にも同じ項目が記載されています。",
    "None needed.", "対応は不要です。",
)
PURGE_BY_OPERATOR = _event(
    "operator.purged", "71d6bc6692f6490680cf38515ed051f0", LogLevel.info,
    "purge run by {actor} with 'kei-gateway purge': {files} item(s) erased; report {report}",
    "An operator ran the purge by hand ('kei-gateway purge'); what it erased is in the day's deletion report.",
    "運用者が kei-gateway purge で消去を手動実行しました。消去した項目は当日の消去報告に記載されています。",
    "None needed.", "対応は不要です。",
)

# -- the audit trail and operators' commands (kei_gateway.operations.audit, docs/audit.md) -------------
OPERATOR_TRANSFER_APPROVED = _event(
    "operator.transfer_approved", "ad9fa703aefe4fbea4e5d24d775b6170", LogLevel.info,
    "transfer {transfer_id} ({flow}, {records} records) approved by {actor}",
    "An operator released a HELD transfer (bulk data approved by the person in charge) with 'kei-gateway transfers approve'.",
    "運用者が kei-gateway transfers approve で保留 (HELD) の転送を承認しました（大量データの取扱いについて責任者の承認済み）。",
    "None needed; the approval is in the audit trail ('kei-gateway audit report').",
    "対応は不要です。承認は監査証跡に記録されています（kei-gateway audit report）。",
)
OPERATOR_TRANSFER_CANCELLED = _event(
    "operator.transfer_cancelled", "df8e0efa8eca4877827b1b8d0c5d3a55", LogLevel.warn,
    "transfer {transfer_id} ({flow}) cancelled by {actor}: {reason}",
    "An operator discarded a transfer with 'kei-gateway transfers cancel'; it is not sent and its stored file is purged like the rest.",
    "運用者が kei-gateway transfers cancel で転送を取り消しました。送信されず、保管データは通常どおり消去されます。",
    "None needed if the cancellation was intended; the reason is in the audit trail.",
    "意図した取消であれば対応は不要です。理由は監査証跡に記録されています。",
)
OPERATOR_TRANSFER_RETRIED = _event(
    "operator.transfer_retried", "86ae1796d8564215aaa248f42caeeaa9", LogLevel.info,
    "transfer {transfer_id} ({flow}) queued again by {actor}",
    "An operator sent a FAILED or RETRY_WAIT transfer again with 'kei-gateway transfers retry'.",
    "運用者が kei-gateway transfers retry で失敗・再送待ちの転送を再送キューに戻しました。",
    "None needed; watch for transfer.sent or transfer.failed of this transfer.",
    "対応は不要です。この転送の transfer.sent または transfer.failed を確認してください。",
)
OPERATOR_TRANSFER_EXPORTED = _event(
    "operator.transfer_exported", "dc6281a1ae6a4239a26898cbacc15fa7", LogLevel.warn,
    "transfer {transfer_id} ({flow}) decrypted to a file by {actor}",
    "An operator decrypted a stored file with 'kei-gateway transfers export' (e.g. a quarantined file for the tax division): personal data left the encrypted store.",
    "運用者が kei-gateway transfers export で保管ファイルを復号して書き出しました（例：隔離ファイルを税務課へ渡すため）。個人情報が暗号化保管の外に出ています。",
    "Make sure the exported file is handed over and deleted as the procedure says.",
    "書き出したファイルが手順どおり引き渡され、削除されることを確認してください。",
)
OPERATOR_DEGENERATIONS_SHOWN = _event(
    "operator.degenerations_shown", "36a817b23c114601ac5d37af194693ae", LogLevel.info,
    "縮退 list of transfer {transfer_id} ({flow}) read by {actor}",
    "An operator listed the 外字 replaced by 縮退 in a transfer with 'kei-gateway transfers show ID --degenerations' (characters of names: personal data was shown on a terminal).",
    "運用者が kei-gateway transfers show ID --degenerations で転送の縮退一覧（氏名の文字：個人情報）を表示しました。",
    "None needed; the tax division reviews the list as its procedure says.",
    "対応は不要です。税務課が手順どおり一覧を確認します。",
)
OPERATOR_KEYS_ROTATED = _event(
    "operator.keys_rotated", "83520f7082b542ab9b56be02b2d03aeb", LogLevel.info,
    "store re-encrypted by {actor}: {count} blob(s) re-encrypted, {failed} failed",
    "An operator ran 'kei-gateway keys rotate': blobs under a previous store key were re-encrypted with the current one.",
    "運用者が kei-gateway keys rotate を実行し、旧鍵の保管データを現行鍵で再暗号化しました。",
    "If some failed, follow the command's output; otherwise see docs/operations.md for when keys.store_previous can be emptied.",
    "失敗があればコマンドの出力に従ってください。なければ keys.store_previous を空にできる時期を docs/operations.md で確認してください。",
)
OPERATOR_KEY_GENERATED = _event(
    "operator.key_generated", "758f9e0409844c8887a74b40b9b671a1", LogLevel.info,
    "a new 32-byte key file was generated by {actor}",
    "An operator created a new store or audit key with 'kei-gateway keys generate'.",
    "運用者が kei-gateway keys generate で新しい保管鍵または監査鍵を作成しました。",
    "None needed; keep the key file mode 0600 and owned by the service user.",
    "対応は不要です。鍵ファイルはモード 0600・サービスユーザ所有としてください。",
)
OPERATOR_DB_UPGRADED = _event(
    "operator.db_upgraded", "0350be51f2a74706b7eef9bbc5c84f49", LogLevel.info,
    "ledger schema migrated by {actor}: {reason}",
    "An operator ran 'kei-gateway db upgrade' and the ledger schema changed revision.",
    "運用者が kei-gateway db upgrade を実行し、台帳のスキーマを移行しました。",
    "None needed.", "対応は不要です。",
)
AUDIT_PURGED = _event(
    "audit.purged", "5140a181aa0e452c93a4b96fd364934a", LogLevel.info,
    "{count} audit record(s) up to {anchor_sequence} purged; anchor record {sequence} keeps the chain verifiable",
    "Audit records older than retention.ledger were deleted; an anchor record carrying the MAC of the last deleted one was appended.",
    "retention.ledger を過ぎた監査記録を削除し、最後に削除した記録の MAC を持つアンカー記録を追加しました。",
    "None needed; 'kei-gateway audit verify' still verifies the whole remaining chain.",
    "対応は不要です。kei-gateway audit verify で残りの記録全体を検証できます。",
)
AUDIT_WRITE_FAILED = _event(
    "audit.write_failed", "f7060e574cf64aa0bd01575356555441", LogLevel.error,
    "audit records could not be written: {reason}; {queued} kept in memory, {dropped} dropped so far",
    "The daemon could not append audit records to the ledger (database down or locked); it keeps them in memory up to a bound and retries. Records beyond the bound are dropped and counted.",
    "監査記録を台帳に追記できませんでした（データベース停止・ロック）。上限までメモリに保持して再試行します。上限を超えた分は破棄し、件数を数えています。",
    "Restore the database (see database.unavailable). If records were dropped, the journal still holds those events: note the period for the auditor.",
    "データベースを復旧してください（database.unavailable 参照）。破棄があった場合も journald には同じイベントが残っています。監査担当者のため期間を記録してください。",
)
AUDIT_CHAIN_VERIFIED = _event(
    "audit.chain_verified", "f00f5eba2ee34a00b110aea2e0f93223", LogLevel.info,
    "audit chain verified: OK, {count} records",
    "The daily verification walked the audit chain: no record was changed, deleted, inserted or reordered.",
    "日次検証で監査記録の連鎖を確認しました。改ざん・削除・挿入・並べ替えはありません。",
    "None needed.", "対応は不要です。",
)
AUDIT_CHAIN_BROKEN = _event(
    "audit.chain_broken", "cf321d04aeb047e48d579944d38d3cec", LogLevel.critical,
    "audit chain verification failed: record {sequence} {kind}: {reason}",
    "The audit chain does not verify: a record was changed, deleted, inserted or reordered, or the newest records were cut off (truncated), outside the gateway (or the audit key changed).",
    "監査記録の連鎖が検証できません。ゲートウェイ以外の手段で記録が変更・削除・挿入・並べ替えされたか、最新の記録が切り取られた（truncated）か、監査鍵が変わっています。",
    "Treat it as a security incident: keep the database as it is (copy it), run 'kei-gateway audit verify', and report to the person in charge of information security.",
    "セキュリティ事案として扱ってください。データベースをそのまま保全（複製）し、kei-gateway audit verify を実行して、情報セキュリティ責任者へ報告してください。",
)
AUDIT_VERIFY_FAILED = _event(
    "audit.verify_failed", "0449751ffaa94980966d063dc25a4229", LogLevel.error,
    "the audit chain could not be verified: {reason}",
    "The daily verification could not read the audit chain (database down, audit key unreadable).",
    "日次検証で監査記録を読み込めませんでした（データベース停止、監査鍵の読込不可）。",
    "Fix the reason, then run 'kei-gateway audit verify'.",
    "原因を解消し、kei-gateway audit verify を実行してください。",
)

AIRIS_RECONCILED = _event(
    "airis.reconciled", "a83e3222baca4c10bbe63c37d2c23484", LogLevel.info,
    "{flow}: AIRIS 突合 of {records} vehicle(s) written as {name}: {reason}",
    "An AIRIS 突合 ran: the 小型二輪 tax register was matched against the AIRIS download and the .dat, .csv and .txt results were written (the counts per category are in the reason; no personal value is logged).",
    "AIRIS 突合を実行しました。小型二輪の課税台帳を AIRIS の車検証情報と突合し、結果（.dat・.csv・.txt）を出力しました（区分ごとの件数のみ記録し、個人情報は記録しません）。",
    "The tax division reviews the rows of categories 02–08 (docs/airis.md says what to do with each) before the 小型二輪 are registered in 軽JNKS.",
    "税務課は区分 02〜08 の行を確認してください（各区分の対応は docs/airis.md）。確認後に小型二輪を軽JNKSへ登録します。",
)
AIRIS_STORED = _event(
    "airis.stored", "5967e760aea94b66945f881a9e9f500e", LogLevel.info,
    "{flow}: {role} stored encrypted as transfer {transfer_id}",
    "An audit record only (not logged): an AIRIS 突合 input or result was stored encrypted and recorded as a "
    "transfer, in the transaction that records it (airis.reconciled or airis.rejected says what the run did).",
    "監査記録のみ（ログには出力しません）：AIRIS 突合の入力または結果を暗号化して保管し、転送として記録しました"
    "（同じトランザクションで記録）。実行結果は airis.reconciled または airis.rejected に記録されます。",
    "None needed.", "対応は不要です。",
)
AIRIS_REJECTED = _event(
    "airis.rejected", "29df13f18f704fec9bc3be68fc7c00c4", LogLevel.warn,
    "{flow}: AIRIS 突合 not run, an input is invalid: {reason}",
    "The AIRIS download, its key file or the tax register extract could not be used (wrong key, damaged ZIP, a CSV that does not follow the v1 layout, an invalid register record); nothing was written and the plaintext inputs were erased.",
    "AIRIS のファイル・復号キー・課税台帳のいずれかが使用できません（キー違い、ZIP の破損、CSV の項目不一致、台帳レコードの不正など）。結果は出力せず、平文の入力は消去しました。",
    "Read the reason (file, row or record, column or field). Download the file and its key from AIRIS again, or correct the register extract at the tax system, and put all three in the outboxes again.",
    "理由（ファイル・行またはレコード・列または項目）を確認し、AIRIS からファイルと復号キーを再取得するか、税務システムで台帳抽出を修正して、3 つを再度送信フォルダへ置いてください。",
)

NODE_JOINED = _event(
    "node.joined", "718227f8fd564768b3abfcbc0513a4c5", LogLevel.info,
    "node {node} joined the ledger (lease {lease}s; nodes: {nodes})",
    "This node registered in the shared ledger and takes part in the work by leases (SPEC §14).",
    "このノードが共有台帳に登録され、リースによって処理を分担します（SPEC §14）。",
    "None needed. 'kei-gateway status' lists the nodes and what each holds.",
    "対応は不要です。'kei-gateway status' でノードと各ノードが保持する処理を確認できます。",
)
LEASE_TAKEOVER = _event(
    "lease.takeover", "13a21f6559d041059f5c86003d27e0f8", LogLevel.warn,
    "node {node} took over {kind} {key} from node {previous}: its lease had expired",
    "Another node stopped renewing its claim on a piece of work (it died, stalled or lost the database) and this node took it over; the other node's commits on it are now refused (fenced).",
    "他のノードが処理のリースを更新しなくなった（停止・一時停止・データベース切断）ため、このノードが引き継ぎました。元のノードによるこの処理の確定は拒否されます（フェンシング）。",
    "Find out why the other node stopped (journalctl on it, 'kei-gateway status'); nothing is lost or doubled. See docs/high-availability.md.",
    "元のノードが停止した理由を確認してください（そのノードの journalctl、'kei-gateway status'）。データの欠落や重複はありません。docs/high-availability.md を参照してください。",
)
LEASE_LOST = _event(
    "lease.lost", "aa5eaab7b944484baabbea9db5753ee4", LogLevel.error,
    "node {node} lost its lease on {kind} {key}: another node holds it now; this node commits nothing on it",
    "This node could not renew its claim in time (it was paused, or cut off from the database, for longer than the lease) and another node took the work over.",
    "このノードがリースを期限内に更新できず（リース期間を超える一時停止またはデータベース切断）、他のノードが処理を引き継ぎました。",
    "None needed for the data (the other node finishes the work). Find out why this node stalled: CPU or I/O starvation, a VM pause, the network to the database.",
    "データについての対応は不要です（他のノードが処理を完了します）。このノードが停滞した原因（CPU・I/O の枯渇、VM の一時停止、データベースへのネットワーク）を調べてください。",
)
LEASE_FENCED = _event(
    "lease.fenced", "a41ca0ed16844ea69fe8cc693ec3af9d", LogLevel.warn,
    "a commit on {kind} {key} by node {node} was refused: its lease is no longer this node's (fenced); nothing was written",
    "A node that had lost its lease tried to record the end of the work; the ledger refused it because another node now holds it, so nothing is recorded twice.",
    "リースを失ったノードが処理の完了を記録しようとしましたが、他のノードが保持しているため台帳が拒否しました。二重の記録は起きません。",
    "None needed: the node holding the lease finishes the work.",
    "対応は不要です。リースを保持するノードが処理を完了します。",
)
NODE_CLOCK_SKEW = _event(
    "node.clock_skew", "fbe9fe3cbc4c4d1c8d896e79670bc17b", LogLevel.critical,
    "node {node} claims no work: {reason}",
    "This node's clock differs from the database server's by more than the bound; leases depend on agreed time, so the node claims nothing until it is synchronised (it still serves pushes).",
    "このノードの時計がデータベースサーバの時計と許容値を超えてずれています。リースは時刻の一致に依存するため、同期されるまで処理を取得しません（プッシュの受信は続けます）。",
    "Synchronise the clocks (chrony or systemd-timesyncd on every node and on the database server) and check 'timedatectl'.",
    "時刻を同期してください（全ノードとデータベースサーバで chrony または systemd-timesyncd）。'timedatectl' で確認してください。",
)

ALL_EVENTS: tuple[EventType, ...] = tuple(
    value for value in list(globals().values()) if isinstance(value, EventType)
)
_BY_NAME = {event.name: event for event in ALL_EVENTS}


def by_name(name: str) -> EventType | None:
    """The event type called *name*, or ``None``."""
    return _BY_NAME.get(name)


def describe_error(error: BaseException) -> str:
    """An exception in words fit for a log: never its free text when that may quote data.

    Our own errors (store, transport, configuration) are written to carry no personal
    value; an OS error gives its ``strerror``; a database error the driver's first line
    (never the SQL parameters); anything else only its type, since library messages
    may quote the input they choked on.
    """
    from sqlalchemy.exc import DBAPIError

    from kei_gateway.adapters.store.errors import StoreError
    from kei_gateway.adapters.transport import TransportError

    name = type(error).__name__
    if isinstance(error, (StoreError, TransportError)):
        return f"{name}: {error}"
    if isinstance(error, OSError):
        return f"{name}: {error.strerror or 'error'}" + (f" ({_safe_path(error.filename)})" if error.filename else "")
    if isinstance(error, DBAPIError) and error.orig is not None:
        first = str(error.orig).splitlines()[0] if str(error.orig) else ""
        return f"{name}: {type(error.orig).__name__}: {first[:200]}"
    return name


def _safe_path(path: Any) -> str:
    """*path* for a log: its directory, and its last part only if it is a spool-style name.

    A name the tax system or a peer chose that breaks the spool pattern (SPEC §4) may carry
    anything, a person's name included, and is replaced by ``<name withheld>``.
    """
    import os

    from kei_gateway.adapters.spool import NAME_PATTERN

    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    directory, base = os.path.split(text)
    if not NAME_PATTERN.fullmatch(base):
        base = "<name withheld>"
    return os.path.join(directory, base) if directory else base


def emit(log: Logger, event: EventType, **fields: Any) -> None:
    """Log *event* on *log* at its level, with its format and the given fields."""
    log.emit(event.level, event.format, kei_event=event.name, **fields)
