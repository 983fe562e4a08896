"""Finds the first attachment whose file name SES refuses, walking the MIME tree strictly."""

# This runs for every message on the event loop. The walk (smtprelay.mail.mime, strict
# reading) reads only each part's header block and never copies or decodes a body;
# where real-world mail is ambiguous it errs towards seeing *more* attachments than a
# careful parser would (a file name that a lenient mail client would show must not slip
# through), and it refuses a structure only when it cannot be walked at all.

from __future__ import annotations

import re
from dataclasses import dataclass

# MAX_DEPTH, MAX_PARTS and MimeError are part of this module's interface (policy.content
# catches MimeError).
from smtprelay.mail import encoded_words, mime
from smtprelay.mail.mime import MAX_DEPTH as MAX_DEPTH
from smtprelay.mail.mime import MAX_PARTS as MAX_PARTS
from smtprelay.mail.mime import MimeError as MimeError

# SES Developer Guide, "Amazon SES unsupported attachment types" (seed 004, line ~4800).
_SES_TABLE = """
    ade adp app asp bas bat cer chm cmd com cpl crt csh der exe fxp gadget hlp hta inf
    ins isp its js jse ksh lib lnk mad maf mag mam maq mar mas mat mau mav maw mda mdb
    mde mdt mdw mdz msc msh msh1 msh1xml msh2 msh2xml mshxml msi msp mst ops pcd pif plg
    prf prg ps1 ps1xml ps2 ps2xml psc1 psc2 reg scf scr sct shb shs sys tmp url vb vbe
    vbs vps vsmacros vss vst vsw vxd ws wsc wsf wsh xnk
"""
BLOCKED_EXTENSIONS = frozenset(_SES_TABLE.split())

# What Windows ignores at the end of a name ("a.exe." and "a.exe " open as a.exe), plus
# controls and invisible format characters that some clients drop when saving. Matched
# at the start of the reversed name: a `[...]+$` search is quadratic on a long run of
# spaces that does not reach the end.
_TRAILING = re.compile(r"[\s.\x00-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2060\ufeff]*")


@dataclass(frozen=True, slots=True)
class Blocked:
    filename: str  # decoded, as a mail client would show it
    extension: str  # lower case with the dot, e.g. ".exe"


def blocked_extension(filename: str) -> str | None:
    """The blocked extension ".exe" that `filename` would open as, or None."""
    # A NUL ends the name for C-based clients ("a.exe\0.pdf" saves as a.exe).
    for name in (filename, filename.split("\x00", 1)[0]):
        ignored = _TRAILING.match(name[::-1])  # always matches, possibly nothing
        stem = name[:len(name) - ignored.end()] if ignored else name
        dot = stem.rfind(".")
        if dot >= 0 and stem[dot + 1:].lower() in BLOCKED_EXTENSIONS:
            return "." + stem[dot + 1:].lower()
    return None


def first_blocked(data: bytes, root_fields: tuple[mime.Field, ...] | None = None
                  ) -> Blocked | None:
    """The first attachment in document order with a blocked extension; MimeError if
    unwalkable. `root_fields`: the message's header fields, when read already."""
    for part in mime.Walk(data, strict=True, root_fields=root_fields):
        # Every name in every Content-Type and Content-Disposition field, not only the
        # first: clients differ in which one they show.
        for name in part.filenames:
            blocked = _check_name(name)
            if blocked is not None:
                return blocked
    return None


def _check_name(name: str) -> Blocked | None:
    # Both the name as written and decoded: clients that do not decode encoded-words
    # show the raw text, and the raw text is what some of them save under.
    candidates = [name, encoded_words.decode_anywhere(name)] if "=?" in name else [name]
    for candidate in candidates:
        extension = blocked_extension(candidate)
        if extension is not None:
            return Blocked(candidate, extension)
    return None
