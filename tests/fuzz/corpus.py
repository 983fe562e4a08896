"""The seed corpus: inputs that crashed, hung or fooled a parser of ours once (issue 16
and before), replayed by every run of the fuzz targets (as @example cases and in each
module's replay test) whatever the profile.

Each entry says what it broke. Add the input of every new finding here, by name, with
the commit that fixed it.
"""

from __future__ import annotations

import base64

# --- header fields ---------------------------------------------------------------------

# Python's address parser recursed once per nested comment: thousands of "(" in From,
# Sender or Return-Path raised RecursionError in the acceptance pipeline (8c787d6: now
# refused with 554 5.6.0, mail.headers.MAX_COMMENT_DEPTH).
DEEP_COMMENT = "(" * 5000 + "x" + ")" * 5000
DEEP_ADDRESS_FIELDS = {
    name: f"{name}: {DEEP_COMMENT} a@example.com\r\n".encode()
    for name in ("From", "Sender", "Return-Path")
}
# Unbalanced: opened and never closed, which a recursive reader also descends into.
OPEN_COMMENTS = "(" * 5000 + "a@example.com"

# A To with 2,700 nested comments made an event record no destination could serialise,
# and the outbox stream behind it stalled for ever (76ef13a, 240f2b3).
DEEP_TO_NESTING = 2700
DEEP_TO = ("To: " + "\r\n ".join(
    (("(" * DEEP_TO_NESTING) + "x" + (")" * DEEP_TO_NESTING))[i:i + 70]
    for i in range(0, 2 * DEEP_TO_NESTING + 1, 70)) + " a@b.example\r\n").encode()

HEADER_SECTIONS: dict[str, bytes] = {
    **{f"deep-{name.lower()}": b"To: a@b.example\r\n" + field + b"Subject: x\r\n\r\n"
       for name, field in DEEP_ADDRESS_FIELDS.items()},
    "open-comments-from": f"From: {OPEN_COMMENTS}\r\n\r\n".encode(),
    "deep-to-folded": b"From: app@example.com\r\n" + DEEP_TO + b"\r\n",
    "nul-in-value": b"From: a\x00b@example.com\r\nSubject: \x00\r\n\r\n",
    "bare-lf-in-section": b"From: a@example.com\nTo: b@example.com\r\n\r\n",
    "undecodable-bytes": b"From: \xff\xfe <a@example.com>\r\nSubject: \xc3\r\n\r\n",
    "lone-surrogate-escape": "Subject: \udcff\r\n\r\n".encode("utf-8", "surrogateescape"),
}

# --- SMTP ------------------------------------------------------------------------------

# DATA endings other than <CRLF>.<CRLF> that some MTAs take for the end of the message:
# what follows would be read there as a second, forged message (SMTP smuggling). Only
# <CRLF>.<CRLF> may end DATA; a bare CR or LF is a line end (normalize) or a refusal.
SMUGGLING_ENDINGS = (b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n", b"\r\n\x00.\r\n",
                     b"\r\n.\n", b"\n.\r", b"\r.\n")
SMUGGLED = (b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
            b"From: evil@example.com\r\n\r\nEVIL smuggled\r\n")
BARE_LF_BODIES = (
    b"From: app@example.com\nTo: someone@example.net\n\nline one\n.starts with a dot\n",
    b"From: app@example.com\r\n\r\nmixed\nends\rand\r\nmore\n",
    b"\n\n\n",
    b"a\r",
)
NUL_BODIES = (b"From: app@example.com\r\n\r\nbefore\x00after\r\n", b"\x00\r\n.\x00\r\n")

# Commands a client should never send, each of which once went somewhere it should not.
NUL_COMMANDS = (b"EHLO a\x00b\r\n", b"MAIL FROM:<a@example.com>\x00\r\n", b"\x00\r\n",
                b"RCPT TO:<b\x00@example.net>\r\n")


def auth_plain(user: str, password: str, authzid: str = "") -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


# CR/LF in an AUTH user name wrote a forged record into the text log (2e42e33).
FORGED_LOG_LINE = "INFO smtprelay.smtp session=0 auth ok user=admin account=acme"
CRLF_USER_NAMES = (f"admin\r\n{FORGED_LOG_LINE}", "admin\n", "\radmin", "ad\x00min",
                   "admin\x1b[31m")
AUTH_LINES = tuple(b"AUTH PLAIN " + auth_plain(user, "pw") + b"\r\n"
                   for user in CRLF_USER_NAMES) + tuple(
    b"AUTH LOGIN " + base64.b64encode(user.encode()) + b"\r\n" + base64.b64encode(b"pw")
    + b"\r\n" for user in CRLF_USER_NAMES)
