"""The transform stage on its own: which tokens a message gets, and the unsubscribe fields."""

from __future__ import annotations

import email
import email.policy
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay.config import ConfigurationSetConfig
from smtprelay.mail.headers import content_type, parse_header_section
from smtprelay.transform import tokens, tracking, unsubscribe
from smtprelay.transform.links import OPEN_TRACKER, DuplicateOpenTracker
from smtprelay.transform.tracking import ListUnsubscribe, Result, Transformer

RING = tokens.KeyRing.generate(1_700_000_000)
MID = "018bd0e1a2b3-0123456789abcdef"
TRACKED = ConfigurationSetConfig.model_validate({
    "tracking": {"open": True, "click": True, "domain": "t.example.com:8443", "https": False},
    "unsubscribe": {"one_click": True}})


def apply(data: bytes, settings: ConfigurationSetConfig | None = TRACKED,
          recipients: int = 1) -> bytes:
    result = Transformer(RING).apply(data, message_id=MID, recipient_count=recipients,
                                     issued_at=1_700_000_100.5, settings=settings)
    return result.data


def test_plain_message_without_markup_is_the_same_object() -> None:
    data = b"From: a@example.com\r\nSubject: s\r\n\r\nJust text.\r\n"
    assert apply(data, settings=None) is data


def test_placeholder_split_by_a_soft_line_break_is_found() -> None:
    data = (b"From: a@example.com\r\nSubject: s\r\nContent-Type: text/plain\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            b"Leave: {{unsubscr=\r\nibe_url}} or {{amazonSESUnsubscribeUrl}}\r\n")
    out = apply(data)
    text = email.message_from_bytes(out, policy=email.policy.default).get_content()
    [url, again] = re.findall(r"http://t\.example\.com:8443/u/[A-Za-z0-9_-]+", text)
    assert url == again
    payload = tokens.decode(url.rsplit("/", 1)[1], RING, 1_700_000_200)
    assert payload == tokens.UnsubscribeToken(MID, 0, 1_700_000_100)


def test_duplicate_open_tracker_in_base64_is_found_without_tracking() -> None:
    import base64
    html = f"<p>{OPEN_TRACKER}</p>{OPEN_TRACKER}".encode()
    data = (b"From: a@example.com\r\nContent-Type: text/html\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(html) + b"\r\n")
    with pytest.raises(DuplicateOpenTracker):
        apply(data, settings=None)


def test_unsubscribe_fields_are_added_after_the_last_field() -> None:
    data = b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n"
    out = apply(data)
    assert re.fullmatch(
        rb"From: a@example.com\r\nSubject: s\r\nList-Unsubscribe: <http://t\.example\.com:8443"
        rb"/u/[A-Za-z0-9_-]+>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        rb"\r\nbody\r\n", out), out


def test_body_less_message_without_final_crlf() -> None:
    fields_only = b"From: a@example.com\r\nSubject: s"
    out = unsubscribe.add(fields_only, parse_header_section(fields_only),
                          unsubscribe.header_fields("https://u.example/u/T"), override=False)
    assert out == (b"From: a@example.com\r\nSubject: s\r\n"
                   b"List-Unsubscribe: <https://u.example/u/T>\r\n"
                   b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")


def test_header_fields_fold_between_uris() -> None:
    fields = unsubscribe.header_fields("https://u.example/u/" + "T" * 51, "leave@example.com",
                                       "T" * 51)
    assert fields.split(b"\r\n")[:2] == [
        b"List-Unsubscribe: <https://u.example/u/" + b"T" * 51 + b">,",
        b" <mailto:leave@example.com?subject=unsubscribe-" + b"T" * 51 + b">"]
    parsed = email.message_from_bytes(fields + b"\r\n", policy=email.policy.default)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_override_removes_every_sender_field() -> None:
    data = (b"From: a@example.com\r\nList-Unsubscribe: <mailto:x@example.com>\r\n"
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nSubject: s\r\n\r\nb\r\n")
    new = unsubscribe.header_fields("https://u.example/u/T")
    assert unsubscribe.add(data, parse_header_section(data), new, override=False) is data
    out = unsubscribe.add(data, parse_header_section(data), new, override=True)
    assert out == b"From: a@example.com\r\nSubject: s\r\n" + new + b"\r\nb\r\n"


@given(st.integers(1, 60), st.booleans())
def test_every_token_in_a_tracked_message_verifies(recipients: int, https: bool) -> None:
    settings = TRACKED.model_copy(update={"tracking": TRACKED.tracking.model_copy(
        update={"https": https})})
    data = (b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n"
            b'<a href="https://a.example/?q=1&amp;r=2">a</a><a href="http://b.example/">b</a>\r\n')
    out = apply(data, settings, recipients).decode()
    scheme = "https" if https else "http"
    found = re.findall(scheme + r"://t\.example\.com:8443/([cou])/([A-Za-z0-9_-]+)", out)
    expected_recipient = 0 if recipients == 1 else None
    kinds = [kind for kind, _ in found]
    assert sorted(kinds) == (["c", "c", "o", "u"] if recipients == 1 else ["c", "c", "o"])
    for _, token in found:
        assert tokens.decode(token, RING, 1_700_000_200).recipient == expected_recipient


# --- the text/plain shortcut: the pipeline passes the top level's media type -----------

_TYPES = st.sampled_from([
    None, "text/plain", "TEXT/PLAIN; charset=utf-8", "text/html", "Text/HTML", "text/plain ;x",
    "multipart/alternative; boundary=b", "multipart/mixed; boundary=\"b\"", "textplain",
    "text/plain/x", "message/rfc822", "text/html\r\n\t; charset=utf-8", "text/\r\n html"])
_BODIES = st.sampled_from([
    b"Just text with ses:no-track in it.\r\n",
    b'<a href="https://example.com/" ses:no-track>x</a>\r\n',
    b"--b\r\nContent-Type: text/html\r\n\r\n<a ses:tags=\"a:b\" href=\"http://x/\">x</a>\r\n"
    b"--b--\r\n",
    b"--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"PGEgc2VzOm5vLXRyYWNrIGhyZWY9Imh0dHA6Ly94LyI+eDwvYT4=\r\n--b--\r\n",
])


@given(_TYPES, _BODIES)
def test_the_media_type_shortcut_changes_nothing(ctype: str | None, body: bytes) -> None:
    head = b"From: a@example.com\r\nSubject: s\r\n"
    if ctype is not None:
        head += b"Content-Type: " + ctype.encode() + b"\r\n"
    data = head + b"\r\n" + body
    fields = parse_header_section(data)
    transformer = Transformer(RING)
    for settings in (None, ConfigurationSetConfig()):
        without = transformer.apply(data, message_id=MID, recipient_count=1,
                                    issued_at=1_700_000_100.5, settings=settings)
        with_type = transformer.apply(data, message_id=MID, recipient_count=1,
                                      issued_at=1_700_000_100.5, settings=settings,
                                      media_type=content_type(fields))
        assert with_type.data == without.data
        assert with_type.problems == without.problems


def test_content_type_reads_the_top_level_as_the_email_package_does() -> None:
    for value, media in (("text/HTML; charset=utf-8", "text/html"), ("garbage", "text/plain"),
                         ("a/b/c", "text/plain"), (" Multipart/Mixed ; boundary=x",
                                                    "multipart/mixed")):
        data = b"Content-Type: " + value.encode() + b"\r\n\r\nx"
        assert content_type(parse_header_section(data)) == media
        assert email.message_from_bytes(data).get_content_type() == media
    assert content_type(parse_header_section(b"Subject: s\r\n\r\nx")) == "text/plain"


# --- contact lists ---------------------------------------------------------------------

NEWS = ListUnsubscribe("news", "sports", "links.example.com")


def list_apply(data: bytes, settings: ConfigurationSetConfig | None,
               recipients: int = 1) -> Result:
    return Transformer(RING).apply(data, message_id=MID, recipient_count=recipients,
                                   issued_at=1_700_000_100.5, settings=settings,
                                   list_unsubscribe=NEWS)


@pytest.mark.parametrize("settings", [None, ConfigurationSetConfig(), TRACKED])
def test_a_list_message_gets_the_lists_link_whatever_the_set_says(
        settings: ConfigurationSetConfig | None) -> None:
    data = (b"From: a@example.com\r\nList-Unsubscribe: <https://sender.example/u>\r\n"
            b"Subject: s\r\nContent-Type: text/plain\r\n\r\nLeave: {{unsubscribe_url}}\r\n")
    result = list_apply(data, settings)
    url = result.unsubscribe_url
    assert url is not None and url.startswith("https://links.example.com/u/")
    payload = tokens.decode(url.rsplit("/", 1)[1], RING, 1_700_000_200)
    assert payload == tokens.UnsubscribeToken(MID, 0, 1_700_000_100, "news", "sports")
    fields = {f.key: f.value for f in parse_header_section(result.data)}
    # The sender's own List-Unsubscribe is replaced (SES: "overrides them"), and no
    # mailto: is offered for a list.
    assert fields["list-unsubscribe"] == f"<{url}>"
    assert fields["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
    assert f"Leave: {url}".encode() in result.data


def test_a_list_message_to_several_recipients_gets_no_link() -> None:
    data = b"From: a@example.com\r\nSubject: s\r\nContent-Type: text/plain\r\n\r\nHi\r\n"
    result = list_apply(data, None, recipients=2)
    assert result.unsubscribe_url is None and b"List-Unsubscribe" not in result.data
    assert result.problems == ["no unsubscribe link: the message has several recipients "
                               "(an unsubscribe link must name one)"]


def test_the_list_link_crosses_to_a_worker_process() -> None:
    """The pool's frame carries the list (a worker run in this process reads it)."""
    import io
    import pickle

    from smtprelay.transform import worker

    data = b"From: a@example.com\r\nSubject: s\r\nContent-Type: text/plain\r\n\r\nHi\r\n"
    plan = tracking.plan_of(None, NEWS)
    assert plan is not None
    frame = worker.request(MID, 0, 1_700_000_100.5, pickle.dumps(RING), plan, data)
    out = io.BytesIO()
    assert worker.serve(io.BytesIO(frame), out) == 0
    status, details_size, _ = worker.REPLY.unpack(out.getvalue()[:worker.REPLY.size])
    assert status == worker.OK
    details = pickle.loads(  # noqa: S301 - from the worker run just above
        out.getvalue()[worker.REPLY.size:worker.REPLY.size + details_size])
    url = details[2]
    payload = tokens.decode(url.rsplit("/", 1)[1], RING, 1_700_000_200)
    assert isinstance(payload, tokens.UnsubscribeToken)
    assert (payload.contact_list, payload.topic) == ("news", "sports")


def test_a_worker_signs_what_it_transformed_with_the_keys_in_the_frame() -> None:
    """The frame carries the DKIM keys (PEM); the worker's signatures cover its output."""
    import io
    import pickle
    from pathlib import Path

    import dkim as dkimpy

    from smtprelay.transform import dkim, worker

    key = dkim.SigningKey("example.com", "s1", "rsa-sha256", dkim.generate_key("rsa"),
                          Path("-"))
    data = (b"From: a@example.com\r\nTo: b@example.net\r\nSubject: s\r\n"
            b"Content-Type: text/html\r\n\r\n<a href=\"https://x.example/\">x</a>\r\n")
    plan = tracking.Plan(click_domain="links.example.com")
    frame = worker.request(MID, 0, 1_700_000_100.5, pickle.dumps(RING), plan, data,
                           worker.keys_blob([key]))
    out = io.BytesIO()
    assert worker.serve(io.BytesIO(frame), out) == 0
    reply = out.getvalue()
    status, details_size, data_size = worker.REPLY.unpack(reply[:worker.REPLY.size])
    assert status == worker.OK
    details = pickle.loads(  # noqa: S301 - from the worker run just above
        reply[worker.REPLY.size:worker.REPLY.size + details_size])
    body = reply[worker.REPLY.size + details_size:]
    assert len(body) == data_size and b"links.example.com/c/" in body
    signatures, changed = details[4], details[7]
    assert changed and signatures.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    record = dkim.public_record(key.private_key).encode()
    assert dkimpy.verify(signatures + body, dnsfunc=lambda *_, **__: record)
