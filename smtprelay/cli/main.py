"""The `smtprelay` command: the daemon and the operator commands around it."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from smtprelay import __version__
from smtprelay.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    config_from,
    format_time,
    print_json,
    state_config,
)
from smtprelay.config import ENV_CONFIG, Config, ConfigError, load_config
from smtprelay.db.migrations import SchemaTooNew

# -- serve / check-config -------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from smtprelay.app import daemon
    from smtprelay.app.datadir import DataDirError
    from smtprelay.delivery.smtp_transport import SmarthostPasswordError
    from smtprelay.infra import logs
    from smtprelay.infra.tls import TLSSetupError
    from smtprelay.spool.store import SpoolError
    from smtprelay.transform.dkim import DKIMKeyError
    from smtprelay.transform.tokens import KeyRingError

    loaded = load_config(args.config)  # daemon.run runs the preflight
    config = loaded.config
    logs.setup(config.logging.level, config.logging.format)
    try:
        daemon.run(config, str(loaded.path))
    except (TLSSetupError, SpoolError, SchemaTooNew, SmarthostPasswordError, DKIMKeyError,
            KeyRingError, DataDirError) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(exc.strerror or str(exc)) from None
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from smtprelay.app import preflight

    loaded = preflight.load_checked(args.config)
    cfg = loaded.config
    print(f"{loaded.path}: ok ({len(cfg.listeners)} listeners, {len(cfg.accounts)} accounts)")
    return EXIT_OK


# -- credentials --------------------------------------------------------------------


def _credential_store(config: Config) -> Any:
    from smtprelay.auth.credentials import CredentialStore

    store = CredentialStore(config.state_path)
    store.open()
    return store


def cmd_credentials_create(args: argparse.Namespace) -> int:
    config = state_config(args)
    if args.account not in config.accounts:
        known = ", ".join(sorted(config.accounts)) or "none"
        raise CommandError(f"accounts.{args.account}: no such account in the configuration "
                           f"(accounts: {known})")
    secret = _credential_store(config).create(args.account, args.name)
    if args.json:
        print_json({"username": secret.credential.username, "password": secret.password,
                     "account": args.account, "name": args.name})
    else:
        print(f"account:  {args.account}")
        print(f"username: {secret.credential.username}")
        print(f"password: {secret.password}")
        print("The password is shown only now; smtprelay keeps only a hash of it.")
    return EXIT_OK


def cmd_credentials_list(args: argparse.Namespace) -> int:
    config = state_config(args)
    rows = [
        {"username": c.username, "account": c.account, "name": c.name, "source": "store",
         "created_at": c.created_at, "disabled": c.disabled}
        for c in _credential_store(config).list(args.account)
    ]
    rows += [
        {"username": c.username, "account": name, "name": None, "source": "config",
         "created_at": None, "disabled": False}
        for name, acc in config.accounts.items() if args.account in (None, name)
        for c in acc.credentials
    ]
    if args.json:
        print_json(rows)
        return EXIT_OK
    print(f"{'USERNAME':<24} {'ACCOUNT':<16} {'SOURCE':<7} {'STATE':<9} {'CREATED':<21} NAME")
    for row in rows:
        state = "disabled" if row["disabled"] else "active"
        print(f"{row['username']:<24} {row['account']:<16} {row['source']:<7} {state:<9} "
              f"{format_time(row['created_at']):<21} {row['name'] or ''}")
    return EXIT_OK


def _change_credential(args: argparse.Namespace, change: Callable[[Any, str], bool],
                       done: str) -> int:
    config = state_config(args)
    if any(c.username == args.username for a in config.accounts.values() for c in a.credentials):
        raise CommandError(f"{args.username} is a static credential from the configuration "
                           "file; edit accounts.<name>.credentials there")
    if not change(_credential_store(config), args.username):
        raise CommandError(f"no stored credential with username {args.username}")
    print(f"{args.username}: {done}")
    return EXIT_OK


def cmd_credentials_disable(args: argparse.Namespace) -> int:
    return _change_credential(args, lambda s, u: s.set_disabled(u, True), "disabled")


def cmd_credentials_enable(args: argparse.Namespace) -> int:
    return _change_credential(args, lambda s, u: s.set_disabled(u, False), "enabled")


def cmd_credentials_delete(args: argparse.Namespace) -> int:
    return _change_credential(args, lambda s, u: s.delete(u), "deleted")


def cmd_credentials_hash(args: argparse.Namespace) -> int:
    from smtprelay.infra.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("empty password")
    print(hash_password(password))
    return EXIT_OK


# -- queue ----------------------------------------------------------------------------


def _queue_conn(config: Config) -> Any:
    from smtprelay.spool.store import open_for_cli

    return open_for_cli(config.spool_path)


def _message_json(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = message.as_json()
    return result


def cmd_queue_list(args: argparse.Namespace) -> int:
    from smtprelay.spool.store import MessageFilter, list_messages

    conn = _queue_conn(state_config(args))
    messages = list_messages(conn, limit=args.limit, filters=MessageFilter(
        account=args.account, configuration_set=args.set, state=args.state))
    if args.json:
        print_json([_message_json(m) for m in messages])
        return EXIT_OK
    for m in messages:
        print(f"{m.message_id}  {m.size:>9}  {format_time(m.received_at)}  <{m.mail_from}>  "
              f"account={m.account}")
        for r in m.recipients:
            extra = f"  next={format_time(r.next_attempt)}" if r.state.value == "deferred" else ""
            reply = f"  ({r.last_reply})" if r.last_reply else ""
            print(f"    {r.state.value:<10} {r.address}{extra}{reply}")
    print(f"-- {len(messages)} message(s)" + (" shown" if args.limit else ""))
    return EXIT_OK


def cmd_queue_show(args: argparse.Namespace) -> int:
    from smtprelay.spool.store import get_body, get_message

    conn = _queue_conn(state_config(args))
    message = get_message(conn, args.id)
    if message is None:
        raise CommandError(f"no message {args.id} in the queue")
    if args.body:
        sys.stdout.buffer.write(get_body(conn, args.id) or b"")
        return EXIT_OK
    if args.json:
        print_json(_message_json(message))
        return EXIT_OK
    data = _message_json(message)
    for key in ("id", "account", "configuration_set", "mail_from", "size", "client_ip",
                "auth_user", "listener"):
        print(f"{key:<18} {data[key]}")
    print(f"{'received_at':<18} {format_time(message.received_at)}")
    for r in message.recipients:
        print(f"recipient          {r.address} {r.state.value} attempts={r.attempts}")
    return EXIT_OK


def cmd_queue_delete(args: argparse.Namespace) -> int:
    from smtprelay.spool.store import delete_message

    conn = _queue_conn(state_config(args))
    missing = [mid for mid in args.ids if not delete_message(conn, mid)]
    for mid in args.ids:
        if mid not in missing:
            print(f"{mid}: deleted")
    if missing:
        raise CommandError(f"not in the queue: {', '.join(missing)}")
    return EXIT_OK


def cmd_queue_retry(args: argparse.Namespace) -> int:
    import time

    from smtprelay.spool.store import get_message, retry_now

    conn = _queue_conn(state_config(args))
    if args.all:
        changed = retry_now(conn, None, time.time())
    else:
        if args.id is None:
            raise CommandError("name a message ID, or --all")
        if get_message(conn, args.id) is None:
            raise CommandError(f"no message {args.id} in the queue")
        changed = retry_now(conn, args.id, time.time())
    print(f"{changed} recipient(s) due now; the daemon picks them up within seconds")
    return EXIT_OK


# -- captured (delivery.mode: capture) ------------------------------------------------


def cmd_captured_list(args: argparse.Namespace) -> int:
    from smtprelay.delivery.capture import list_captured

    config = config_from(args)
    captured = list_captured(config.capture_dir)
    if args.json:
        print_json([{"name": c.name, "message_id": c.message_id, "domain": c.domain,
                      "mail_from": c.mail_from, "recipients": c.recipients,
                      "captured_at": c.captured_at, "size": c.size,
                      "file": str(config.capture_dir / c.eml)} for c in captured])
        return EXIT_OK
    for c in captured:
        print(f"{c.name}  {c.size:>9}  {format_time(c.captured_at)}  <{c.mail_from}>  "
              f"{', '.join(c.recipients)}")
    print(f"-- {len(captured)} captured message(s) in {config.capture_dir}")
    return EXIT_OK


def cmd_captured_show(args: argparse.Namespace) -> int:
    from smtprelay.delivery.capture import list_captured

    config = config_from(args)
    matches = [c for c in list_captured(config.capture_dir)
               if c.name == args.name or c.message_id == args.name]
    if not matches:
        raise CommandError(f"nothing captured as {args.name} in {config.capture_dir}")
    for c in matches:
        sys.stdout.buffer.write((config.capture_dir / c.eml).read_bytes())
    return EXIT_OK


# -- stats ----------------------------------------------------------------------------


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def cmd_stats(args: argparse.Namespace) -> int:
    import functools
    import sqlite3
    import time

    from smtprelay.policy import reputation
    from smtprelay.policy.pauses import SQLitePauseStore
    from smtprelay.policy.quota import WINDOW, effective_quota, usage_since
    from smtprelay.policy.suppression import SQLiteSuppressionStore
    from smtprelay.spool import set_stats

    try:
        seconds = set_stats.parse_window(args.window)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    config = state_config(args)
    state = sqlite3.connect(config.state_path)
    try:
        sent = usage_since(state, time.time() - WINDOW)
    finally:
        state.close()
    suppression = SQLiteSuppressionStore(config.state_path)
    suppression.open()
    pause_store = SQLitePauseStore(config.state_path)
    pauses = pause_store.all()
    paused_accounts = pause_store.all("account")
    resumes = pause_store.resumes()
    pause_store.close()
    conn = _queue_conn(config)
    queued: dict[str, dict[str, int]] = {}
    for account, rstate, count in conn.execute(
            "SELECT m.account, r.state, COUNT(*) FROM recipients r"
            " JOIN messages m ON m.id = r.message_id GROUP BY m.account, r.state"):
        queued.setdefault(account, {})[rstate] = count
    now = time.time()
    window = set_stats.Window.ending(now, seconds)
    by_set = set_stats.totals(conn, window)
    by_account = set_stats.totals(conn, window, by="account")
    # The reputation guard's verdicts, made the way the daemon makes them (over
    # reputation.window, which --window does not change).
    verdicts = {(j.scope, j.name): j for j in reputation.judge_all(
        functools.partial(set_stats.totals, conn), resumes, config.reputation, now)}

    def verdict(scope: str, name: str) -> dict[str, Any]:
        found = verdicts.get((scope, name)) or reputation.judge(
            scope, name, set_stats.Counts(), config.reputation, now)
        return found.as_json()

    rows: list[dict[str, Any]] = []
    for name, account in config.accounts.items():
        quota = effective_quota(config, name)
        counts = by_account.get(name, set_stats.Counts())
        rows.append({
            "rates": {"bounce": counts.bounce_rate, "complaint": counts.complaint_rate},
            "reputation": verdict("account", name),
            "paused": (paused_accounts[name].as_json() if name in paused_accounts
                       else None),
            "account": name, "sandbox": account.sandbox,
            "sent_24h": sent.get(name, 0),
            "max_24h_send": quota.max_24h_send if quota else None,
            "max_send_rate": quota.max_send_rate if quota else None,
            "suppressed_addresses": suppression.count(name),
            "spool_recipients": queued.get(name, {}),
        })
    suppression.close()
    sets: list[dict[str, Any]] = []
    for key in sorted(set(config.configuration_sets) | set(by_set)):
        settings = config.configuration_sets.get(key)
        if key in pauses:
            status = f"paused ({pauses[key].reason})"
        elif settings is not None and not settings.sending_enabled:
            status = "disabled"
        elif settings is None and key != set_stats.NO_SET:
            status = "not configured"
        else:
            status = "accepting"
        sets.append({"configuration_set": None if key == set_stats.NO_SET else key,
                     "status": status, **by_set.get(key, set_stats.Counts()).as_json(),
                     "reputation": verdict("set", key)})
    if args.json:
        print_json({"window": {"seconds": window.seconds, "since": window.since,
                                "until": window.until},
                     "accounts": rows, "configuration_sets": sets})
        return EXIT_OK
    print(f"{'ACCOUNT':<16} {'SENT 24H':>10} {'MAX 24H':>10} {'USED':>6} {'RATE/S':>7} "
          f"{'SUPPRESSED':>10} {'BOUNCE%':>7} {'COMPL%':>6} {'REPUTATION':<10}  SPOOL")
    for row in rows:
        limit = row["max_24h_send"]
        used = f"{100 * row['sent_24h'] / limit:.1f}%" if limit else "-"
        spool = ", ".join(f"{k}={v}" for k, v in sorted(row["spool_recipients"].items())) or "-"
        sandbox = " (sandbox)" if row["sandbox"] else ""
        paused = " PAUSED" if row["paused"] else ""
        print(f"{row['account']:<16} {row['sent_24h']:>10} {limit or 'unlimited':>10} "
              f"{used:>6} {row['max_send_rate'] or '-':>7} {row['suppressed_addresses']:>10} "
              f"{_rate(row['rates']['bounce']):>7} {_rate(row['rates']['complaint']):>6} "
              f"{_reputation(row['reputation']):<10}  {spool}{sandbox}{paused}")
    print()
    print(f"Configuration sets, {format_time(window.since)} to {format_time(window.until)} "
          "(bounce rate: permanent bounces / (deliveries + permanent bounces))")
    print(f"{'SET':<20} {'SENT':>7} {'DELIVERED':>9} {'BOUNCED':>7} {'BOUNCE%':>7} "
          f"{'COMPLAINED':>10} {'COMPL%':>6} {'OPENS':>6} {'OPEN%':>6} {'CLICKS':>6} "
          f"{'CLICK%':>6} {'REPUTATION':<10}  STATUS")
    for row in sets:
        c, r = row["counts"], row["rates"]
        label = row["configuration_set"] or set_stats.NO_SET_LABEL
        print(f"{label:<20} {c['send']:>7} {c['delivery']:>9} {c['bounce']:>7} "
              f"{_rate(r['bounce']):>7} {c['complaint']:>10} {_rate(r['complaint']):>6} "
              f"{c['open']:>6} {_rate(r['open']):>6} {c['click']:>6} {_rate(r['click']):>6}"
              f" {_reputation(row['reputation']):<10}  {row['status']}")
    reputation_config = config.reputation
    print()
    print(f"Reputation over {reputation_config.window / 3600:g} h, from "
          f"{reputation_config.minimum_volume} deliveries + hard bounces: warning at "
          f"bounce {_rate(reputation_config.bounce.warning)} / complaint "
          f"{_rate(reputation_config.complaint.warning)}, paused at "
          f"{_rate(reputation_config.bounce.pause)} / "
          f"{_rate(reputation_config.complaint.pause)}"
          + ("" if reputation_config.enabled else " (the guard is disabled)"))
    return EXIT_OK


def _reputation(verdict: dict[str, Any]) -> str:
    """"ok", "warning", "paused", or "-" without a representative volume."""
    return str(verdict["state"]) if verdict["representative"] else "-"


# -- configuration sets (run-time pauses) --------------------------------------------------


@contextlib.contextmanager
def _pause_store(config: Config) -> Iterator[Any]:
    from smtprelay.policy.pauses import SQLitePauseStore

    store = SQLitePauseStore(config.state_path)
    store.open()
    try:
        yield store
    finally:
        store.close()


def _require_configured(name: str, names: Iterable[str], key: str, what: str,
                        listed: str) -> None:
    """CommandError naming the config key when `name` is not among `names`."""
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise CommandError(f"{key}.{name}: no such {what} in the configuration "
                           f"({listed}: {known})")


def _set_row(name: str, config: Config, pause: Any) -> dict[str, Any]:
    settings = config.configuration_sets.get(name)
    enabled = settings.sending_enabled if settings is not None else None
    return {"name": name, "configured": settings is not None, "sending_enabled": enabled,
            "paused": pause.as_json() if pause is not None else None,
            "accepting": bool(enabled) and pause is None}


def cmd_sets_list(args: argparse.Namespace) -> int:
    config = state_config(args)
    with _pause_store(config) as store:
        pauses = store.all()
    rows = [_set_row(name, config, pauses.get(name))
            for name in sorted(set(config.configuration_sets) | set(pauses))]
    if args.json:
        print_json(rows)
        return EXIT_OK
    def state(row: dict[str, Any]) -> str:
        pause = row["paused"]
        if pause is not None:
            text = f"paused ({pause['reason']})"
        elif row["sending_enabled"] is False:
            text = "disabled in config"
        else:
            text = "accepting"
        return text if row["configured"] else text + " *"

    _print_pauses("SET", rows, state)
    if any(not row["configured"] for row in rows):
        print("* no longer in the configuration; `smtprelay sets resume NAME` forgets it")
    return EXIT_OK


def _print_pauses(title: str, rows: list[dict[str, Any]],
                  state: Callable[[dict[str, Any]], str]) -> None:
    """The `sets list` / `accounts list` table: one row per set or account."""
    print(f"{title:<24} {'STATE':<20} {'SINCE':<21} {'BY':<20} DETAIL")
    for row in rows:
        pause = row["paused"]
        print(f"{row['name']:<24} {state(row):<20} "
              f"{format_time(pause['since']) if pause else '-':<21} "
              f"{pause['by'] if pause else '-':<20} {pause['detail'] if pause else ''}")


def _pause_detail(args: argparse.Namespace) -> str:
    from smtprelay.policy.pauses import MAX_DETAIL

    detail: str = args.reason or ""
    if len(detail) > MAX_DETAIL:
        raise CommandError(f"--reason is longer than {MAX_DETAIL} characters")
    return detail


def cmd_sets_pause(args: argparse.Namespace) -> int:
    from smtprelay.policy.pauses import AlreadyPaused

    config = state_config(args)
    _require_configured(args.name, config.configuration_sets, "configuration_sets",
                        "configuration set", "sets")
    detail = _pause_detail(args)
    with _pause_store(config) as store:
        try:
            store.pause(args.name, detail=detail, by="cli")
        except AlreadyPaused as exc:
            raise CommandError(f"{exc}; `smtprelay sets resume {args.name}` first") from None
    print(f"{args.name}: paused. New mail for it is refused with 554 5.7.1 (a running "
          "daemon notices within a second); queued mail still goes.")
    return EXIT_OK


def cmd_sets_resume(args: argparse.Namespace) -> int:
    config = state_config(args)
    with _pause_store(config) as store:
        lifted = store.resume(args.name)
    if lifted is None:
        settings = config.configuration_sets.get(args.name)
        if settings is not None and not settings.sending_enabled:
            raise CommandError(f"{args.name} is not paused; it refuses mail because "
                               f"configuration_sets.{args.name}.sending_enabled is false "
                               "(change the file and reload)")
        raise CommandError(f"{args.name} is not paused")
    print(f"{args.name}: resumed (was paused since {format_time(lifted.since)} by {lifted.by}).")
    return EXIT_OK


# -- accounts (run-time pauses) -------------------------------------------------------------


def cmd_accounts_list(args: argparse.Namespace) -> int:
    config = state_config(args)
    with _pause_store(config) as store:
        pauses = store.all("account")
    rows: list[dict[str, Any]] = [
        {"name": name, "configured": name in config.accounts,
         "paused": pauses[name].as_json() if name in pauses else None}
            for name in sorted(set(config.accounts) | set(pauses))]
    if args.json:
        print_json(rows)
        return EXIT_OK
    _print_pauses("ACCOUNT", rows, lambda row: f"paused ({row['paused']['reason']})"
                  if row["paused"] else "accepting")
    return EXIT_OK


def cmd_accounts_pause(args: argparse.Namespace) -> int:
    from smtprelay.policy.pauses import AlreadyPaused

    config = state_config(args)
    _require_configured(args.name, config.accounts, "accounts", "account", "accounts")
    detail = _pause_detail(args)
    with _pause_store(config) as store:
        try:
            store.pause(args.name, detail=detail, by="cli", scope="account")
        except AlreadyPaused as exc:
            raise CommandError(f"{exc}; `smtprelay accounts resume {args.name}` first"
                               ) from None
    print(f"{args.name}: paused. Its new mail is refused with 554 5.7.1 (a running daemon "
          "notices within a second); queued mail still goes.")
    return EXIT_OK


def cmd_accounts_resume(args: argparse.Namespace) -> int:
    config = state_config(args)
    with _pause_store(config) as store:
        lifted = store.resume(args.name, scope="account")
    if lifted is None:
        raise CommandError(f"account {args.name} is not paused")
    print(f"{args.name}: resumed (was paused since {format_time(lifted.since)} by {lifted.by}).")
    return EXIT_OK


# -- admin API tokens ------------------------------------------------------------------------


def cmd_admin_token_issue(args: argparse.Namespace) -> int:
    import time

    from pydantic import TypeAdapter, ValidationError

    from smtprelay.config import Duration
    from smtprelay.http import admin_auth

    try:
        seconds = float(TypeAdapter(Duration).validate_python(args.expires))
    except ValidationError:
        raise CommandError(f"--expires {args.expires}: expected a duration such as 30m, 1h "
                           "or 7d") from None
    config = config_from(args)
    env = config.http.admin_token_env
    if not env:
        raise CommandError("http.admin_token_env is not set in the configuration, so there "
                           "is no admin API; name an environment variable holding a secret "
                           "there")
    secret = admin_auth.secret_from_env(env)
    if secret is None:
        raise CommandError(f"the variable {env} (http.admin_token_env) is unset or empty "
                           "here; run this with the daemon's environment (the same secret)")
    expires_at = int(time.time() + seconds)
    token = admin_auth.issue(secret, expires_at)
    if args.json:
        print_json({"token": token, "expires_at": expires_at})
    else:
        print(token)
        print(f"valid until {format_time(expires_at)}; use it as Authorization: Bearer <token>",
              file=sys.stderr)
    return EXIT_OK


# -- dkim -----------------------------------------------------------------------------


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smtprelay.config import check_domain, check_selector
    from smtprelay.transform import dkim

    try:
        domain = check_domain(args.domain)
        selector = check_selector(args.selector)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    owner: tuple[int, int] | None = None
    if args.out is not None:
        path = Path(args.out).expanduser().absolute()
    else:
        if args.config is None and not os.environ.get(ENV_CONFIG):
            raise CommandError("pass -c FILE (the key goes to data_dir/dkim/) or --out FILE")
        # The configuration may already name the key about to be created.
        config = load_config(args.config).config
        data_dir = config.server.data_dir
        path = data_dir / "dkim" / f"{domain}.{selector}.pem"
        if os.geteuid() == 0 and data_dir.is_dir() and data_dir.stat().st_uid != 0:
            # Run as root for a daemon running as its own user: the key must be its.
            owner = (data_dir.stat().st_uid, data_dir.stat().st_gid)
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
            if owner is not None:
                os.chown(path.parent, *owner)
    key = dkim.generate_key(args.type)
    try:
        dkim.write_key(path, key)
    except FileExistsError:
        raise CommandError(f"{path} already exists; not replacing a key (a new selector "
                           "is the way to rotate: keygen with --selector NEW)") from None
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    if owner is not None:
        os.chown(path, *owner)
    kind = f"RSA {dkim.RSA_BITS}-bit, rsa-sha256" if args.type == "rsa" else \
        "Ed25519, ed25519-sha256"
    print(f"Wrote the private key ({kind}) to {path} (mode 0600).")
    print()
    print(f"1. Publish this TXT record in the DNS zone of {domain}:")
    print()
    print(dkim.dns_record(domain, selector, key))
    print()
    print("2. Add the key to the configuration and reload (systemctl reload smtprelay):")
    print()
    print("identities:")
    print(f"  {domain}:")
    print("    dkim:")
    print(f"      - {{selector: {selector}, key_file: {json.dumps(str(path))}}}")
    print()
    print("3. Check what DNS serves, once published (the same text, in pieces):")
    print()
    print(f"dig +short TXT {selector}._domainkey.{domain}")
    return EXIT_OK


# -- tracking keys ----------------------------------------------------------------------


def _key_rows(ring: Any, now: float) -> list[dict[str, Any]]:
    from smtprelay.transform.tokens import RETIREMENT_GRACE

    return [{"id": key.id, "created_at": format_time(key.created_at),
             "state": "active" if key.retired_at is None else (
                 "retired" if now - key.retired_at <= RETIREMENT_GRACE else "expired"),
             "valid_until": "-" if key.retired_at is None
             else format_time(key.retired_at + RETIREMENT_GRACE)} for key in ring.keys]


def cmd_tracking_keys_list(args: argparse.Namespace) -> int:
    import time

    from smtprelay.transform.tokens import KeyRing, KeyRingError

    config = state_config(args)
    try:
        ring = KeyRing.load(config.tracking_keys_path)
    except KeyRingError as exc:
        raise CommandError(str(exc)) from None
    rows = _key_rows(ring, time.time())
    if args.json:
        print_json(rows)
    else:
        print(f"{'ID':>4}  {'STATE':8}  {'CREATED':20}  TOKENS VALID UNTIL")
        for row in rows:
            print(f"{row['id']:>4}  {row['state']:8}  {row['created_at']:20}  "
                  f"{row['valid_until']}")
    return EXIT_OK


def cmd_tracking_keys_rotate(args: argparse.Namespace) -> int:
    import time

    from smtprelay.transform.tokens import RETIREMENT_GRACE, KeyRing, KeyRingError

    config = state_config(args)
    path = config.tracking_keys_path
    now = time.time()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ring = KeyRing.open(path, now)
        gone = ring.prune(now)
        key = ring.rotate(now)
        ring.save(path)
    except (KeyRingError, OSError) as exc:
        raise CommandError(str(exc)) from None
    print(f"New tracking key {key.id} written to {path}.")
    print(f"Links already sent keep working until {format_time(now + RETIREMENT_GRACE)}; "
          f"{len(gone)} expired key(s) removed.")
    print("Reload the daemon (systemctl reload smtprelay, or SIGHUP) to sign with it.")
    return EXIT_OK


# -- dns-check ------------------------------------------------------------------------


def cmd_dns_check(args: argparse.Namespace) -> int:
    import asyncio

    from smtprelay.operations import dns_check

    # Key files are read by the DKIM check itself, which reports an unusable one as a
    # finding instead of refusing to check anything else.
    config = load_config(args.config).config
    try:
        checks = dns_check.plan(config, args.domain, ips=args.ip or (),
                               nameservers=args.nameserver or ())
        lookups = dns_check.Lookups(checks.nameservers, checks.timeout)
    except dns_check.UsageError as exc:
        print(f"smtprelay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    findings = asyncio.run(dns_check.run(checks, lookups))
    if args.json:
        print_json([finding.as_json() for finding in findings])
    else:
        print(dns_check.render(findings))
    return EXIT_OK if all(finding.ok for finding in findings) else EXIT_FAILURE


# -- argument parsing ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE",
                        help=f"configuration file (default: ${ENV_CONFIG})")
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--json", action="store_true", help="print JSON")

    parser = argparse.ArgumentParser(
        prog="smtprelay", description="A self-hosted sending relay (the sending side of SES).")
    parser.add_argument("--version", action="version", version=f"smtprelay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("serve", parents=[common], help="run the daemon in the foreground") \
        .set_defaults(func=cmd_serve)
    sub.add_parser("check-config", parents=[common],
                   help="validate the configuration; print every problem") \
        .set_defaults(func=cmd_check_config)

    creds = sub.add_parser("credentials", help="SMTP credentials").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = creds.add_parser("create", parents=[common, listing],
                         help="create a credential; the password is printed once")
    p.add_argument("account")
    p.add_argument("--name", help="a label, e.g. the application using it")
    p.set_defaults(func=cmd_credentials_create)
    p = creds.add_parser("list", parents=[common, listing], help="list credentials")
    p.add_argument("--account")
    p.set_defaults(func=cmd_credentials_list)
    for action, func, text in (("disable", cmd_credentials_disable, "refuse it from now on"),
                               ("enable", cmd_credentials_enable, "accept it again"),
                               ("delete", cmd_credentials_delete, "remove it")):
        p = creds.add_parser(action, parents=[common], help=text)
        p.add_argument("username")
        p.set_defaults(func=func)
    creds.add_parser("hash",
                     help="hash a password (from stdin) for a static credential in the config") \
        .set_defaults(func=cmd_credentials_hash)

    queue = sub.add_parser("queue", help="the spool, like mailq/postqueue").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = queue.add_parser("list", parents=[common, listing], help="list queued messages")
    p.add_argument("--limit", type=int, default=None, help="show at most N messages")
    p.add_argument("--account", help="only this account's messages")
    p.add_argument("--set", metavar="NAME",
                   help="only this configuration set's messages (\"\": those without one)")
    p.add_argument("--state", choices=_queue_states(),
                   help="pending, finished, or a recipient state some recipient is in")
    p.set_defaults(func=cmd_queue_list)
    p = queue.add_parser("show", parents=[common, listing], help="one message in detail")
    p.add_argument("id")
    p.add_argument("--body", action="store_true", help="print the message bytes")
    p.set_defaults(func=cmd_queue_show)
    p = queue.add_parser("delete", parents=[common], help="remove messages from the queue")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(func=cmd_queue_delete)
    p = queue.add_parser("retry", parents=[common],
                         help="make a message's waiting recipients due now")
    p.add_argument("id", nargs="?")
    p.add_argument("--all", action="store_true", help="every waiting recipient (= flush)")
    p.set_defaults(func=cmd_queue_retry)
    queue.add_parser("flush", parents=[common], help="make every waiting recipient due now") \
        .set_defaults(func=cmd_queue_retry, all=True, id=None)

    captured = sub.add_parser(
        "captured", help="messages written by delivery.mode: capture").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    captured.add_parser("list", parents=[common, listing], help="list captured messages") \
        .set_defaults(func=cmd_captured_list)
    p = captured.add_parser("show", parents=[common],
                            help="print a captured message (by name or message id)")
    p.add_argument("name")
    p.set_defaults(func=cmd_captured_show)

    dkim = sub.add_parser("dkim", help="DKIM signing keys").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = dkim.add_parser("keygen", parents=[common],
                        help="create a signing key; print the DNS record and config to add")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--selector", required=True, metavar="S",
                   help="the key's name in DNS: S._domainkey.DOMAIN (e.g. r2026)")
    p.add_argument("--type", choices=("rsa", "ed25519"), default="rsa",
                   help="rsa (2048-bit, every receiver) or ed25519 (sign with both); "
                        "default rsa")
    p.add_argument("--out", metavar="FILE",
                   help="where to write the key (default: data_dir/dkim/DOMAIN.S.pem)")
    p.set_defaults(func=cmd_dkim_keygen)

    keys = sub.add_parser("tracking-keys", help="the keys that sign tracking links"
                          ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = keys.add_parser("list", parents=[common, listing], help="list the signing keys")
    p.set_defaults(func=cmd_tracking_keys_list)
    p = keys.add_parser("rotate", parents=[common],
                        help="start signing with a new key; old links keep working 60 days")
    p.set_defaults(func=cmd_tracking_keys_rotate)

    p = sub.add_parser("dns-check", parents=[common, listing],
                       help="check a sending domain's DKIM, SPF, DMARC, MAIL FROM and "
                            "tracking records; exit 1 if any needs action")
    p.add_argument("domain", metavar="DOMAIN", help="a domain under identities or an "
                                                    "account's identities")
    p.add_argument("--ip", action="append", metavar="ADDR",
                   help="an outbound address of the relay that SPF must authorise "
                        "(repeat; default: the addresses of server.hostname)")
    p.add_argument("--nameserver", action="append", metavar="HOST[:PORT]",
                   help="ask this DNS server (repeat; default: delivery.dns.nameservers, "
                        "else the system resolver)")
    p.set_defaults(func=cmd_dns_check)

    from smtprelay.cli.suppression import register as register_suppression

    register_suppression(sub, common, listing)

    from smtprelay.cli.feedback import register as register_feedback

    register_feedback(sub, common, listing)
    p = sub.add_parser("stats", parents=[common, listing],
                       help="per account: sent in 24 h against quota, suppression, spool; "
                            "per configuration set: sends, deliveries, bounces, complaints, "
                            "opens, clicks and rates")
    p.add_argument("--window", default="24h",
                   help="how far back the per-set figures go (e.g. 1h, 24h, 7d; at most "
                        "15d); default 24h")
    p.set_defaults(func=cmd_stats)

    sets = sub.add_parser("sets", help="configuration sets: pause and resume sending"
                          ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sets.add_parser("list", parents=[common, listing],
                        help="every set: accepting, paused (why, since when, by whom)")
    p.set_defaults(func=cmd_sets_list)
    p = sets.add_parser("pause", parents=[common],
                        help="refuse the set's new mail with 554 5.7.1 until resumed")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--reason", metavar="TEXT", help="why, kept with the pause")
    p.set_defaults(func=cmd_sets_pause)
    p = sets.add_parser("resume", parents=[common], help="lift a pause (manual or reputation)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_sets_resume)

    accounts = sub.add_parser("accounts", help="accounts: pause and resume sending"
                              ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = accounts.add_parser("list", parents=[common, listing],
                            help="every account: accepting or paused (why, since, by whom)")
    p.set_defaults(func=cmd_accounts_list)
    p = accounts.add_parser("pause", parents=[common],
                            help="refuse all the account's new mail with 554 5.7.1")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--reason", metavar="TEXT", help="why, kept with the pause")
    p.set_defaults(func=cmd_accounts_pause)
    p = accounts.add_parser("resume", parents=[common],
                            help="lift an account's pause (manual or reputation)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_accounts_resume)

    from smtprelay.cli.send_probe import register as register_send_test

    register_send_test(sub, common)

    tokens = sub.add_parser("admin-token", help="tokens for the admin API").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = tokens.add_parser("issue", parents=[common, listing],
                          help="print a signed token that expires, made with the secret in "
                               "http.admin_token_env's variable")
    p.add_argument("--expires", required=True, metavar="DURATION",
                   help="how long it is valid: 30m, 1h, 7d...")
    p.set_defaults(func=cmd_admin_token_issue)
    return parser


def _queue_states() -> tuple[str, ...]:
    from smtprelay.spool.model import FILTER_STATES

    return FILTER_STATES


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"smtprelay: configuration {exc.path} has {len(exc.problems)} problem(s):",
              file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandError, SchemaTooNew) as exc:
        print(f"smtprelay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_OK
