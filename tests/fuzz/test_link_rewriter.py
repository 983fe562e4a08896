"""Fuzz target: the link rewriter (smtprelay/transform/links.py), on whole messages.

Messages are generated as a sender's tool writes them: a multipart/mixed holding a
text and HTML alternative, maybe an HTML attachment, a forwarded message with HTML in
it and an image; HTML from tag soup with links, ses:* attributes, comments, Outlook
conditionals, raw-text elements and placeholders; each text part in 7bit/8bit,
quoted-printable or base64 and a charset its text fits. rewrite() raises nothing but
DuplicateOpenTracker, and only for two placeholders in the inline HTML. Without
tracking and without anything for it to remove, the message comes back byte for byte.
With tracking, links are numbered from 0 without gaps, no more than max_links, each
an http(s) URL; and every part but the inline HTML and text keeps its fields and body
byte for byte, as does the top-level header section.
"""

from __future__ import annotations

import base64
import quopri
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtprelay.mail.mime import Walk
from smtprelay.transform.links import OPEN_TRACKER, DuplicateOpenTracker, rewrite

MARK = "https://t.test/c/"
PIXEL = "https://t.test/o/TOKEN"

_URL = st.one_of(
    st.sampled_from(["https://example.com/", "http://example.org/p?q=1&amp;r=2",
                     "HTTPS://EXAMPLE.COM/A", " https://e.com/x ", "https://e.com/a\tb",
                     "https://e.com/&copy=1", "https://e.com/%zz", "https://ü.example/",
                     "mailto:a@example.com", "tel:+1", "#top", "javascript:x()", "/relative",
                     "{{url}}", "%%url%%", "*|URL|*", "https://", "https://e.com/" + "a" * 5000,
                     ""]),
    st.from_regex(r"https?://[a-z]{1,8}\.example/[a-z0-9/?=&#%.-]{0,30}", fullmatch=True),
)
_ATTRIBUTE = st.one_of(
    st.builds(lambda quote, url: f"href={quote}{url}{quote}", st.sampled_from(['"', "'", ""]),
              _URL),
    st.sampled_from(["ses:no-track", "SES:NO-TRACK", 'ses:tags="a:b;c:d"', "ses:tags='x'",
                     'ses:tags="bad tag:!"', 'class="x"', "href", "href=", 'title=">"', "/",
                     "data-x='<a href=\"https://e.com/\">'"]),
)
_TAG = st.builds(lambda name, attributes, close: f"<{name} {' '.join(attributes)}{close}>",
                 st.sampled_from(["a", "A", "v:roundrect", "area", "img", "p"]),
                 st.lists(_ATTRIBUTE, max_size=3), st.sampled_from(["", "/", " "]))
_HTML_PIECE = st.one_of(
    _TAG,
    st.sampled_from(["</a>", "<p>", "text", "é", "&amp;", "&nbsp;", "<!--", "-->", "<!-- x -->",
                     "<!--[if mso]>", "<![endif]-->", "<script>", "</script>",
                     "<style>a{}</style>", "<title>t</title>", "<textarea>", "</textarea>",
                     "</body>", "<body>", "\r\n", " ", "<", ">", '"', "'", "=", "{{unsubscribe}}",
                     "{{ses:openTracker}}"]),
)
_HTML = st.lists(_HTML_PIECE, max_size=30).map("".join)
_PLAIN = st.lists(st.sampled_from(["text ", "é", "\r\n", "https://example.com/ ",
                                   "{{unsubscribe}}", "=", "."]), max_size=15).map("".join)


@dataclass(frozen=True)
class Text:
    media: str
    text: str
    charset: str
    cte: str
    attachment: bool = False


_CHARSETS = ["utf-8", "iso-8859-1", "us-ascii", "windows-1252"]


@st.composite
def _text_part(draw: st.DrawFn, media: str, attachment: bool = False) -> Text:
    text = draw(_HTML if media == "text/html" else _PLAIN)
    charset = draw(st.sampled_from(_CHARSETS))
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        charset = "utf-8"
    cte = draw(st.sampled_from(["7bit", "8bit", "quoted-printable", "base64", ""]))
    return Text(media, text, charset, cte, attachment)


def _part(text: Text) -> bytes:
    raw = text.text.encode(text.charset)
    if text.cte == "base64":
        body = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    elif text.cte == "quoted-printable":
        body = quopri.encodestring(raw.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    else:
        body = raw
    head = f"Content-Type: {text.media}; charset={text.charset}\r\n"
    if text.cte:
        head += f"Content-Transfer-Encoding: {text.cte}\r\n"
    if text.attachment:
        head += 'Content-Disposition: attachment; filename="page.html"\r\n'
    return head.encode() + b"\r\n" + body


def _multipart(subtype: str, boundary: str, parts: list[bytes]) -> bytes:
    return (f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
            + b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
            + b"--" + boundary.encode() + b"--")


@dataclass(frozen=True)
class Generated:
    data: bytes
    texts: tuple[Text, ...]  # every text part, the inline HTML one second

    @property
    def inline_placeholders(self) -> int:
        return self.texts[1].text.count(OPEN_TRACKER)

    @property
    def anything_to_remove(self) -> bool:
        """ses:* attributes or a placeholder in an inline text part (the rewriter takes
        them out even when it tracks nothing)."""
        return any("ses:" in t.text.lower() or OPEN_TRACKER in t.text for t in self.texts[:2])


@st.composite
def _message(draw: st.DrawFn) -> Generated:
    texts = [draw(_text_part("text/plain")), draw(_text_part("text/html"))]
    parts = [_multipart("alternative", "=_alt", [_part(texts[0]), _part(texts[1])])]
    if draw(st.booleans()):
        texts.append(draw(_text_part("text/html", attachment=True)))
        parts.append(_part(texts[-1]))
    if draw(st.booleans()):
        texts.append(draw(_text_part("text/html")))
        forwarded = b"From: b@example.org\r\n" + _part(texts[-1])
        parts.append(b"Content-Type: message/rfc822\r\n\r\n" + forwarded)
    if draw(st.booleans()):
        parts.append(b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                     + base64.b64encode(draw(st.binary(max_size=60))))
    return Generated(b"From: a@example.com\r\nTo: b@example.net\r\nMIME-Version: 1.0\r\n"
                     + _multipart("mixed", "=_mixed", parts) + b"\r\n", tuple(texts))


def _inline_text(data: bytes) -> set[tuple[int, ...]]:
    """Paths of the parts the rewriter may change: inline text/html and text/plain
    outside forwarded messages, and the multiparts that hold them."""
    parts = list(Walk(data, strict=False))
    forwarded = [p.path for p in parts if p.content_type.startswith("message/")]
    changeable: set[tuple[int, ...]] = set()
    for part in parts:
        if part.content_type in ("text/html", "text/plain") \
                and part.disposition != "attachment" \
                and not any(part.path[:len(f)] == f for f in forwarded):
            changeable.update(part.path[:n] for n in range(len(part.path) + 1))
    return changeable


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_message(), st.booleans(), st.sampled_from([250, 3, 0]), st.booleans())
def test_rewriting_a_message_touches_only_its_inline_text(
        generated: Generated, pixel: bool, max_links: int, replace: bool) -> None:
    message = generated.data
    calls: list[tuple[int, str]] = []

    def click(index: int, url: str, tags: dict[str, str]) -> str:
        calls.append((index, url))
        return f"{MARK}{index}"

    try:
        result = rewrite(message, make_click_url=click, open_pixel_url=PIXEL if pixel else None,
                         max_links=max_links,
                         replacements={"{{unsubscribe}}": "https://t.test/u/T"} if replace
                         else None)
    except DuplicateOpenTracker as exc:
        assert exc.count == generated.inline_placeholders >= 2
        return
    assert generated.inline_placeholders < 2
    assert [link.index for link in result.links] == list(range(len(result.links)))
    assert len(result.links) <= max_links
    assert all(link.url[:8].lower().startswith(("http://", "https://"))
               for link in result.links)
    # Every tracked link was asked for; some asked for may not have been kept (a part
    # that could not be encoded back is left untouched).
    assert {(link.index, link.url) for link in result.links} <= set(calls)
    before = {p.path: p for p in Walk(message, strict=False)}
    after = {p.path: p for p in Walk(result.data, strict=False)}
    assert before.keys() == after.keys()
    assert before[()].header == after[()].header
    changeable = _inline_text(message)
    for path, part in before.items():
        if path not in changeable:
            assert (after[path].header, after[path].body) == (part.header, part.body), path


_PATHOLOGICAL = [
    b"Content-Type: text/html\r\n\r\n" + b"<a href=https://e.com/ " * 3000,
    b"Content-Type: text/html\r\n\r\n<!--" + b"<a href='https://e.com/'>" * 3000,
    b"Content-Type: text/html\r\n\r\n" + b"<a " + b"x=" * 20000 + b">",
    b"Content-Type: text/html\r\n\r\n" + b"<script>" + b"<a href=https://e.com/>" * 3000,
]


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_message())
def test_without_tracking_nothing_changes(generated: Generated) -> None:
    try:
        result = rewrite(generated.data, make_click_url=None, open_pixel_url=None)
    except DuplicateOpenTracker:
        assert generated.inline_placeholders >= 2
        return
    assert result.links == []
    if not generated.anything_to_remove:
        assert result.data == generated.data


def test_replay_pathological_html() -> None:
    """Tags that never close, comments that never end, raw text that never ends: linear,
    and the same bytes back when nothing is tracked."""
    for data in _PATHOLOGICAL:
        assert rewrite(data, make_click_url=None, open_pixel_url=None).data == data
        rewrite(data, make_click_url=lambda i, url, tags: f"{MARK}{i}", open_pixel_url=PIXEL)
