"""The attachment walker's own terms (smtprelay.policy.attachments): SES's list of blocked
extensions, the nesting depth and part count it walks, and names made to be slow."""

from __future__ import annotations

import time

from smtprelay.mail import replies as R
from smtprelay.policy import attachments
from tests.unit.messages import TEXT_PART, attachment, check, mixed, msg


def test_every_extension_on_the_ses_list_is_blocked() -> None:
    assert len(attachments.BLOCKED_EXTENSIONS) == 90
    for extension in attachments.BLOCKED_EXTENSIONS:
        data = mixed(attachment(f'attachment; filename="file.{extension.upper()}"'))
        assert check(data) == R.blocked_attachment(f"file.{extension.upper()}",
                                                   f".{extension}")
    for allowed in ("pdf", "zip", "docx", "png", "txt", "html", "ics", "csv", "7z"):
        assert attachments.blocked_extension(f"file.{allowed}") is None


def test_unwalkable_depth_and_part_count_are_bad_mime() -> None:
    def nested(levels: int) -> bytes:
        body = "Content-Type: text/plain\n\nhi"
        for level in range(levels):
            body = (f"Content-Type: multipart/mixed; boundary=l{level}\n\n"
                    f"--l{level}\n{body}\n--l{level}--")
        return msg("From: a@example.com\n" + body.split("\n\n", 1)[0] + "\n",
                   body.split("\n\n", 1)[1])

    assert check(nested(attachments.MAX_DEPTH)) is None
    assert check(nested(attachments.MAX_DEPTH + 1)) is R.BAD_MIME
    assert check(mixed(*[TEXT_PART] * (attachments.MAX_PARTS - 1))) is None
    assert check(mixed(*[TEXT_PART] * attachments.MAX_PARTS)) is R.BAD_MIME


def test_hostile_names_are_not_slow() -> None:
    started = time.perf_counter()
    assert attachments.blocked_extension(" " * 100_000 + "x") is None
    assert check(mixed(attachment('attachment; filename="' + " " * 15_000 + 'x"'))) is None
    assert check(mixed(attachment("attachment; filename=\"" + "\\x" * 7_000))) is None
    part = "Content-Type: a/b; name=\"" + "=?utf-8?q?a?= " * 1000 + "\"\n\nx"
    assert check(mixed(part)) is None
    assert time.perf_counter() - started < 0.1
