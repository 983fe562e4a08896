"""The value parsers the configuration's fields are made of (smtprelay.config.values)."""

from __future__ import annotations

import pytest

from smtprelay.config import parse_nameserver


@pytest.mark.parametrize(("text", "address", "port"), [
    ("127.0.0.1:5353", "127.0.0.1", 5353), ("127.0.0.1", "127.0.0.1", 53),
    ("[::1]:5353", "::1", 5353), ("[::1]", "::1", 53), ("::1", "::1", 53),
    (" 127.0.0.53 ", "127.0.0.53", 53)])
def test_nameserver_forms(text: str, address: str, port: int) -> None:
    nameserver = parse_nameserver(text)
    assert (nameserver.address, nameserver.port) == (address, port)
