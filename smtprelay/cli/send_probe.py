"""`smtprelay send-test`: a smoke test of a running relay through its own front door.

Submits one small message over the relay's submission listener (STARTTLS or implicit
TLS as configured, then AUTH), prints the queue id, and with ``--wait`` follows it in
the spool until every recipient is final, printing each outcome: Delivery, Bounce
with its SES type and subtype, and Complaint when the message's set recorded one.
By default it writes to ``success@<simulator.domain>``, so nothing leaves the machine.

Certificates: for a listener on a loopback address the certificate is not verified
(a relay's own self-signed one is the common case, and the connection never leaves
the host); for any other address it is verified against the system's trust store,
with the server's host name.
"""

from __future__ import annotations

import argparse
import email.utils
import ipaddress
import json
import os
import smtplib
import ssl
import sys
import time
from typing import Any

from smtprelay.config import Config, ListenerConfig, load_config
from smtprelay.mail.address import local_of

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
USER_ENV, PASSWORD_ENV = "SMTPRELAY_USER", "SMTPRELAY_PASSWORD"
_FINAL = {"delivered", "bounced", "suppressed"}


class SendTestError(Exception):
    """An expected failure, said to the operator without a traceback."""


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "send-test", parents=[common],
        help="submit a test message to the running relay (default: the mailbox "
             "simulator's success@) and, with --wait, print what happened to it")
    p.add_argument("--to", action="append", metavar="ADDRESS",
                   help="recipient (repeatable); default success@<simulator.domain>; "
                        "try bounce@, ooto@, complaint@, suppressionlist@ too")
    p.add_argument("--from", dest="sender", metavar="ADDRESS",
                   help="sender; default send-test@ the account's first identity")
    p.add_argument("--set", metavar="NAME", help="configuration set (X-SES-CONFIGURATION-SET)")
    p.add_argument("--account", metavar="NAME",
                   help="the account whose identity is the default sender (default: the "
                        "only account, if there is one)")
    p.add_argument("--user", help=f"SMTP user name (default: ${USER_ENV})")
    p.add_argument("--password", help=f"SMTP password (default: ${PASSWORD_ENV}; prefer "
                                      "the environment, command lines are visible to all)")
    p.add_argument("--listener", metavar="NAME",
                   help="the submission listener to use (default: the first one)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="follow the message until every recipient is final, at most this long")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_send_test)


def cmd_send_test(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except SendTestError as exc:
        print(f"smtprelay send-test: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config).config
    listener = _listener(config, args.listener)
    recipients = args.to or [f"success@{config.simulator.domain}"]
    sender = args.sender or _default_sender(config, args.account)
    user = args.user or os.environ.get(USER_ENV)
    password = args.password or os.environ.get(PASSWORD_ENV)
    if not user or not password:
        raise SendTestError(
            f"no credentials: give --user and --password, or set {USER_ENV} and "
            f"{PASSWORD_ENV} (create some with `smtprelay credentials create ACCOUNT`)")
    host = _connect_host(listener.address)
    queue_id = _submit(config, listener, host, user, password, sender, recipients, args.set)
    result: dict[str, Any] = {"queue_id": queue_id, "from": sender, "to": recipients,
                              "listener": listener.name}
    if not args.json:
        print(f"queued as {queue_id} (from <{sender}> to {', '.join(recipients)} via "
              f"{listener.name} {host}:{listener.port})")
    if args.wait > 0:
        outcomes = _follow(config, queue_id, args.wait)
        result["recipients"] = outcomes
        if not args.json:
            for row in outcomes:
                print(f"  {row['recipient']}: {row['outcome']}"
                      + (f" ({row['detail']})" if row.get("detail") else ""))
    if args.json:
        print(json.dumps(result, indent=2))
    if args.wait > 0 and any(row["outcome"] == "pending" for row in result["recipients"]):
        return EXIT_FAILURE
    return EXIT_OK


def _listener(config: Config, name: str | None) -> ListenerConfig:
    candidates = [entry for entry in config.listeners if entry.role == "submission"]
    if name is not None:
        candidates = [entry for entry in candidates if entry.name == name]
        if not candidates:
            known = ", ".join(e.name for e in config.listeners if e.role == "submission")
            raise SendTestError(f"--listener {name}: no submission listener of that name in "
                                f"the configuration (listeners: {known or 'none'})")
    if not candidates:
        raise SendTestError("the configuration has no submission listener (listeners[] "
                            "with role: submission) to send through")
    if candidates[0].port == 0:
        raise SendTestError(f"listeners[{candidates[0].name}].port is 0 (chosen by the "
                            "system): send-test cannot know it; give the listener a port")
    return candidates[0]


def _default_sender(config: Config, account: str | None) -> str:
    if account is None:
        if len(config.accounts) != 1:
            raise SendTestError("give --from ADDRESS or --account NAME: the configuration "
                                f"has {len(config.accounts)} accounts")
        account = next(iter(config.accounts))
    settings = config.accounts.get(account)
    if settings is None:
        raise SendTestError(f"--account {account}: no such account in the configuration")
    if not settings.identities:
        raise SendTestError(f"accounts.{account} has no identities to send from; give --from")
    identity = settings.identities[0]
    return identity if "@" in identity else f"send-test@{identity}"


def _connect_host(address: str) -> str:
    """Where to connect for a listener's bind address (the wildcard means loopback)."""
    if address in ("0.0.0.0", ""):
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address


def _tls_context(host: str) -> ssl.SSLContext:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    context = ssl.create_default_context()
    if loopback:
        # The relay's own (often self-signed) certificate, on this machine.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _message(sender: str, recipients: list[str], set_name: str | None) -> bytes:
    lines = [f"From: {sender}", f"To: {', '.join(recipients)}",
             "Subject: smtprelay send-test", f"Date: {email.utils.formatdate()}",
             f"Message-ID: {email.utils.make_msgid(domain=sender.rpartition('@')[2])}"]
    if set_name:
        lines.append(f"X-SES-CONFIGURATION-SET: {set_name}")
    lines += ["", "A test message sent by `smtprelay send-test`.", ""]
    return "\r\n".join(lines).encode()


def _submit(config: Config, listener: ListenerConfig, host: str, user: str, password: str,
            sender: str, recipients: list[str], set_name: str | None) -> str:
    context = _tls_context(host)
    where = f"{listener.name} ({host}:{listener.port})"
    try:
        smtp: smtplib.SMTP
        if listener.tls == "implicit":
            smtp = smtplib.SMTP_SSL(host, listener.port, timeout=30, context=context)
        else:
            smtp = smtplib.SMTP(host, listener.port, timeout=30)
        with smtp:
            smtp.ehlo()
            if listener.tls == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            smtp.login(user, password)
            code, text = smtp.mail(sender)
            if code != 250:
                raise SendTestError(f"MAIL FROM:<{sender}> refused: {code} {_text(text)}")
            refused = {}
            for rcpt in recipients:
                code, text = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = f"{code} {_text(text)}"
            if refused:
                raise SendTestError("recipients refused: " + "; ".join(
                    f"{rcpt}: {reply}" for rcpt, reply in refused.items()))
            code, text = smtp.data(_message(sender, recipients, set_name))
            if code != 250:
                raise SendTestError(f"{where} refused the message: {code} {_text(text)}")
            return _text(text).split()[-1]
    except SendTestError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        raise SendTestError(f"{where} refused the credentials: {exc.smtp_code} "
                            f"{_text(exc.smtp_error)}") from None
    except smtplib.SMTPResponseException as exc:
        raise SendTestError(f"{where} refused the message: {exc.smtp_code} "
                            f"{_text(exc.smtp_error)}") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise SendTestError(f"cannot talk to the relay at {where}: {exc} (is `smtprelay "
                            "serve` running with this configuration?)") from None


def _text(reply: bytes | str) -> str:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())


def _follow(config: Config, queue_id: str, timeout: float) -> list[dict[str, Any]]:
    """Each recipient's outcome, once all are final or `timeout` is over (read from the
    spool with a connection of our own, as the other spool commands do)."""
    from smtprelay.spool.store import get_message, get_outcomes, open_for_cli

    deadline = time.monotonic() + timeout
    while True:
        conn = open_for_cli(config.spool_path)
        try:
            message = get_message(conn, queue_id)
            outcomes = get_outcomes(conn, queue_id)
            complained = _complained(conn, queue_id)
        finally:
            conn.close()
        if message is None:
            raise SendTestError(f"message {queue_id} is not in the spool at "
                                f"{config.spool_path} (deleted, or another relay's spool?)")
        done = all(r.state.value in _FINAL for r in message.recipients)
        if done and complained is None and any(
                local_of(r.address).split("+")[0].lower() == "complaint"
                for r in message.recipients) and time.monotonic() < deadline:
            time.sleep(0.2)  # the simulator's Complaint follows the Delivery
            continue
        if done or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    rows: list[dict[str, Any]] = []
    for r in message.recipients:
        final = [o for o in outcomes if o.index == r.index and o.kind in ("delivery", "bounce")]
        row: dict[str, Any] = {"recipient": r.address, "state": r.state.value}
        if final and final[-1].kind == "delivery":
            row["outcome"] = "Delivery"
            row["detail"] = final[-1].diagnostic or ""
        elif final:
            o = final[-1]
            row["outcome"] = f"Bounce {o.bounce_type}/{o.bounce_subtype}"
            row["bounce_type"], row["bounce_subtype"] = o.bounce_type, o.bounce_subtype
            row["detail"] = o.diagnostic or ""
        else:
            row["outcome"] = "pending"
            row["detail"] = f"{r.state.value}, no final outcome within {timeout:g}s"
        if complained and r.address.lower() in complained:
            row["outcome"] += " + Complaint"
            row["complaint"] = True
        rows.append(row)
    return rows


def _complained(conn: Any, queue_id: str) -> set[str] | None:
    """Recipients named by Complaint events of the message still in the outbox."""
    found: set[str] | None = None
    for (detail,) in conn.execute("SELECT detail FROM events WHERE message_id = ? AND"
                                  " type = 'Complaint'", (queue_id,)):
        found = found or set()
        for entry in json.loads(detail).get("complainedRecipients", []):
            found.add(str(entry.get("emailAddress", "")).lower())
    return found
