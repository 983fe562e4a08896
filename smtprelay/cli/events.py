"""`smtprelay events tail`: the events the running relay commits, as they come.

It reads the admin API's live tail (GET /api/v1/events/stream, smtprelay.events.tail)
on the daemon's HTTP listener: the first address of ``http.listen`` unless --url says
otherwise, with the token from the variable ``http.admin_token_env`` names (in this
command's environment, as in the daemon's). Without --follow it prints the latest
events the relay keeps and ends; with it, it goes on until interrupted. --json
prints each event as one line of JSON, as the API sends it.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from smtprelay.cli.common import EXIT_OK, CommandError, config_from
from smtprelay.config import Config, parse_host_port
from smtprelay.events.tail import EVENT_TYPES, RECENT
from smtprelay.http import admin_auth
from smtprelay.infra.logs import escape_controls

STREAM_PATH = "/api/v1/events/stream"


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    group = sub.add_parser("events", help="the relay's events as they happen").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = group.add_parser(
        "tail", parents=[common, listing],
        help="the latest events, and with --follow each new one as it is committed",
        description="Reads the running relay's live tail through its admin API: the "
                    "token comes from the variable http.admin_token_env names. Only sets "
                    "with an event destination make events.")
    p.add_argument("--type", action="append", default=[], choices=EVENT_TYPES,
                   metavar="TYPE", help="only this event type (repeat for several): "
                   + ", ".join(EVENT_TYPES))
    p.add_argument("--set", action="append", default=[], metavar="SET",
                   help="only this configuration set (repeat for several; '' for mail "
                        "sent without one)")
    p.add_argument("-n", "--recent", type=int, default=10, metavar="N",
                   help=f"start with the latest N events the relay keeps (0-{RECENT}; "
                        "default 10)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new events until interrupted")
    p.add_argument("--url", metavar="URL",
                   help="the relay's HTTP listener, such as http://127.0.0.1:8080 "
                        "(default: the first address of http.listen)")
    p.set_defaults(func=cmd_tail)


def listener_url(config: Config) -> str:
    """http://host:port of the first http.listen address (a wildcard one asked on
    loopback)."""
    if not config.http.listen:
        raise CommandError("http.listen is empty: give the relay's address with --url")
    host, port = parse_host_port(config.http.listen[0])
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def token_of(config: Config) -> str:
    name = config.http.admin_token_env
    secret = admin_auth.secret_from_env(name)
    if secret is None:
        raise CommandError(
            "http.admin_token_env: " + (f"the variable {name} is unset or empty in this "
                                        f"command's environment; set it as the daemon has it"
                                        if name else "not set, so the relay has no admin "
                                        "API to read events from"))
    return secret


def summary(event: dict[str, Any]) -> str:
    """A few words on what the event says (its recipients first)."""
    skip = {"eventType", "eventId", "messageId", "configurationSet", "timestamp", "mail"}
    detail: Any = next((value for key, value in event.items() if key not in skip), {})
    if not isinstance(detail, dict):
        return str(detail)
    words: list[str] = []
    for key in ("bounceType", "bounceSubType", "delayType", "complaintFeedbackType",
                "reason", "link", "ipAddress", "errorMessage"):
        if detail.get(key):
            words.append(f"{key}={detail[key]}")
    for key in ("recipients", "bouncedRecipients", "complainedRecipients",
                "delayedRecipients"):
        found = detail.get(key)
        if isinstance(found, list):
            addresses = [item if isinstance(item, str) else str(item.get("emailAddress", ""))
                         for item in found]
            words.insert(0, ",".join(addresses))
    mail = event.get("mail")
    if isinstance(mail, dict) and not words:
        words.append(f"from={mail.get('source') or '<>'} "
                     f"to={','.join(map(str, mail.get('destination', [])))}")
    return " ".join(words)


def line_of(event: dict[str, Any]) -> str:
    stamp = str(event.get("timestamp", "")).replace("T", " ")
    return escape_controls(
        f"{stamp:<24} {event.get('eventType', '?'):<13} "
        f"set={event.get('configurationSet') or '-'} msg={event.get('messageId')} "
        f"{summary(event)}".rstrip())


def print_stream(lines: Iterable[bytes], as_json: bool) -> None:
    for raw in lines:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            continue  # a keep-alive
        item = json.loads(text)
        if "dropped" in item and "eventType" not in item:
            print(f"smtprelay: {item['dropped']} event(s) skipped: this terminal read too "
                  "slowly", file=sys.stderr)
            continue
        print(text if as_json else line_of(item), flush=True)


def cmd_tail(args: argparse.Namespace) -> int:
    if not 0 <= args.recent <= RECENT:
        raise CommandError(f"--recent must be from 0 to {RECENT}")
    config = config_from(args)
    base = (args.url or listener_url(config)).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise CommandError(f"--url {base}: give an http:// or https:// address")
    query = urlencode([*(("type", t) for t in args.type),
                       *(("configuration_set", s) for s in args.set),
                       ("recent", str(args.recent)),
                       ("follow", "true" if args.follow else "false")])
    request = urllib.request.Request(f"{base}{STREAM_PATH}?{query}", headers={  # noqa: S310
        "Authorization": f"Bearer {token_of(config)}", "Accept": "application/x-ndjson"})
    try:
        # No read timeout with --follow: the relay writes a keep-alive line when quiet.
        with urllib.request.urlopen(  # noqa: S310 - http(s) only, checked above
                request, timeout=None if args.follow else 30) as answer:
            print_stream(answer, args.json)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = detail.strip()[:200]
        raise CommandError(f"{base}{STREAM_PATH}: {exc.code} {detail}"
                           + ("; check the token in the variable http.admin_token_env names"
                              if exc.code == 401 else "")) from None
    except urllib.error.URLError as exc:
        raise CommandError(f"{base}: cannot reach the relay's HTTP listener ({exc.reason}); "
                           "is it running? (--url to name another address)") from None
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK
