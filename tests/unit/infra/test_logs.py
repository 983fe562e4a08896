"""The text log: one line per record, whatever a client-supplied value holds."""

from __future__ import annotations

import io
import logging

from smtprelay.infra import logs


def test_control_characters_in_a_message_are_escaped_onto_one_line() -> None:
    assert logs.escape_controls("plain text, ünïcode") == "plain text, ünïcode"
    assert logs.escape_controls("a\r\nb\tc\x00d\x7f") == "a\\r\\nb\\tc\\x00d\\x7f"
    formatter = logs._TextFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("smtprelay", logging.WARNING, __file__, 1,
                               "auth failed user=%s", ("admin\r\nINFO auth ok user=admin",),
                               None)
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line
    assert line == "WARNING auth failed user=admin\\r\\nINFO auth ok user=admin"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.emit(record)
    assert stream.getvalue().count("\n") == 1
