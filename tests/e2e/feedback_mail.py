"""Reports as remote systems write them, for sending to the feedback listener in tests.

`postfix_dsn` is shaped like Postfix 3's bounce (the three RFC 3464 parts, the original's
headers returned), `arf_report` like a mailbox provider's RFC 5965 complaint, and
`auto_reply` like an Exchange out-of-office notice. Everything is CRLF, as on the wire.
"""

from __future__ import annotations

import email.utils
import time


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def _date() -> str:
    return email.utils.formatdate(time.time(), usegmt=True)


def postfix_dsn(verp_address: str, statuses: list[tuple[str, str, str, str]], *,
                original_headers: str = "", reporting_mta: str = "mx.dest.test",
                boundary: str = "8E5E3C1234.1700000006/mx.dest.test") -> bytes:
    """A Postfix bounce to ``verp_address``; statuses: (recipient, action, status, the
    remote's reply), e.g. ("a@dest.test", "failed", "5.1.1", "550 5.1.1 User unknown")."""
    human = "\n".join(f"<{rcpt}>: host {reporting_mta}[192.0.2.25] said: {reply}"
                      for rcpt, _, _, reply in statuses)
    groups = "\n\n".join(
        f"Final-Recipient: rfc822; {rcpt}\nOriginal-Recipient: rfc822;{rcpt}\n"
        f"Action: {action}\nStatus: {status}\nRemote-MTA: dns; {reporting_mta}\n"
        f"Diagnostic-Code: smtp; {reply}"
        for rcpt, action, status, reply in statuses)
    headers = original_headers or f"Return-Path: <{verp_address}>\nSubject: hello\n"
    return _crlf(f"""Return-Path: <>
Date: {_date()}
From: MAILER-DAEMON@{reporting_mta} (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {verp_address}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Message-Id: <{time.time_ns()}@{reporting_mta}>

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host {reporting_mta}.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

{human}

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; {reporting_mta}
X-Postfix-Queue-ID: 8E5E3C1234
X-Postfix-Sender: rfc822; {verp_address}
Arrival-Date: {_date()}

{groups}

--{boundary}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{headers.rstrip()}

--{boundary}--
""")


def report_without_status_part(verp_address: str) -> bytes:
    """A multipart/report that lost its delivery-status part and names nobody."""
    return _crlf(f"""From: MAILER-DAEMON@filter.dest.test
To: {verp_address}
Subject: Delivery problem
Date: {_date()}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

Something went wrong with a message you sent.

--b1--
""")


def arf_report(to: str, *, original_mail_from: str | None, original: str | None,
               feedback_type: str = "abuse",
               user_agent: str = "Yahoo!-Mail-Feedback/2.0") -> bytes:
    """An RFC 5965 complaint; ``original``: the returned message (None: left out)."""
    mail_from = (f"Original-Mail-From: <{original_mail_from}>\n"
                 if original_mail_from else "")
    third = (f"""--frontier
Content-Type: message/rfc822
Content-Disposition: inline

{original.rstrip()}

""" if original is not None else "")
    return _crlf(f"""From: "Mail AntiSpam Feedback" <feedback@arf.provider.test>
To: {to}
Subject: FW: hello
Date: {_date()}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="frontier"
Message-ID: <{time.time_ns()}.arf@arf.provider.test>

--frontier
Content-Type: text/plain; charset=us-ascii

This is an email abuse report for an email message received from IP 127.0.0.1.

--frontier
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: {user_agent}
Version: 1
{mail_from}Arrival-Date: {_date()}
Source-IP: 127.0.0.1

{third}--frontier--
""")


def auto_reply(to: str) -> bytes:
    return _crlf(f"""From: Bob <bob@dest.test>
To: {to}
Subject: Automatic reply: hello
Date: {_date()}
Auto-Submitted: auto-replied
X-Auto-Response-Suppress: All
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

I am out of the office until Monday. For anything urgent write to carol@dest.test.
""")


# -- a flood of reports, from a process of its own ----------------------------------------

def blast(port: int, rcpt: str, data: bytes, count: int) -> None:
    """Send ``data`` to ``rcpt`` ``count`` times on one connection, pipelining MAIL, RCPT
    and DATA (RFC 2920) as a busy MTA does; every reply must be a success."""
    import socket

    body = data.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    envelope = f"MAIL FROM:<>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        replies = sock.makefile("rb")

        def expect(prefix: bytes) -> None:
            while True:
                line = replies.readline()
                if not line.startswith(prefix):
                    raise SystemExit(f"unexpected reply {line!r}, wanted {prefix!r}")
                if line[3:4] != b"-":
                    return

        expect(b"220")
        sock.sendall(b"EHLO blaster.dest.test\r\n")
        expect(b"250")
        for _ in range(count):
            sock.sendall(envelope)
            expect(b"250")
            expect(b"250")
            expect(b"354")
            sock.sendall(body)
            expect(b"250")
        sock.sendall(b"QUIT\r\n")
        expect(b"221")


def main() -> None:
    """python -m tests.e2e.feedback_mail PORT RCPT FILE COUNT CONNECTIONS"""
    import sys
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    port, rcpt, path, count, connections = sys.argv[1:6]
    data = Path(path).read_bytes()
    started = time.monotonic()
    shares = [int(count) // int(connections)] * int(connections)
    shares[0] += int(count) - sum(shares)
    with ThreadPoolExecutor(len(shares)) as pool:
        for future in [pool.submit(blast, int(port), rcpt, data, n) for n in shares]:
            future.result()
    print(f"{count} reports over {connections} connections in "
          f"{time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
