"""The tracking routes over real sockets: redirects, the pixel, unsubscribe, and abuse.

Most tests start the HTTPServer alone (the routes need a config, a keyring and a
sink, nothing else) with a tiny recording sink; one runs the whole relay to check
that a link it wrote into a message redirects. Path tricks and slow or huge
requests go over raw sockets, because HTTP clients normalise what they send.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import smtplib
import ssl
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from smtprelay.app.live import Live
from smtprelay.config import Config, MachineDetectionConfig, load_config
from smtprelay.events.model import Engagement
from smtprelay.http.server import HTTPServer
from smtprelay.http.tracking import PIXEL
from smtprelay.infra import tls
from smtprelay.transform import tokens
from tests.support import (
    base_config,
    client_context,
    running,
    samples,
    spooled,
    write_config,
)

DOMAIN = "links.test"
PORTED = "go.example.com:8080"
MESSAGE_ID = "018bd0e1a2b3-0123456789abcdef"
BROWSER = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/124.0.0.0 Safari/537.36")
URL = "https://shop.example.com/p/item?a=1&b=%2F&c=%7E#reviews"
EXAMPLE = Path(__file__).parents[2] / "config" / "smtprelay.example.yaml"


@dataclass
class RecordingSink:
    """What the events store would get; `accept` decides unsubscribe's answer."""

    accept: bool = True
    engaged_with: list[Engagement] = field(default_factory=list)
    unsubscribed: list[Engagement] = field(default_factory=list)

    async def engaged(self, engagement: Engagement) -> None:
        self.engaged_with.append(engagement)

    async def unsubscribe(self, engagement: Engagement) -> bool:
        self.unsubscribed.append(engagement)
        return self.accept


@dataclass
class Served:
    server: HTTPServer
    ring: tokens.KeyRing
    sink: RecordingSink | None
    config: Config

    @property
    def port(self) -> int:
        return int(self.server.bound[0][1])

    @property
    def tls_port(self) -> int:
        return int(self.server.bound_tls[0][1])

    def token(self, kind: str = "click", *, url: str = URL, age: float = 3600.0,
              ring: tokens.KeyRing | None = None) -> str:
        issued = int(time.time() - age)
        payload: tokens.Payload
        if kind == "click":
            payload = tokens.ClickToken(MESSAGE_ID, 0, 3, url, issued, (("campaign", "x"),))
        elif kind == "open":
            payload = tokens.OpenToken(MESSAGE_ID, 0, issued)
        else:
            payload = tokens.UnsubscribeToken(MESSAGE_ID, 0, issued)
        return tokens.encode(payload, ring or self.ring)


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, *, sink: RecordingSink | None = None, no_sink: bool = False,
                http: dict[str, Any] | None = None,
                domains: dict[str, Any] | None = None) -> AsyncIterator[Served]:
    """An HTTPServer on a free loopback port, configured through a real YAML file."""
    settings = {"listen": ["127.0.0.1:0"], **(http or {})}
    tracking_domains = domains if domains is not None else {DOMAIN: {}, PORTED: {}}
    path = write_config(tmp_path / "smtprelay.yaml", base_config(
        tmp_path / "var", http=settings, tracking_domains=tracking_domains))
    config = load_config(path).config
    ring = tokens.KeyRing.generate()
    recorder = None if no_sink else (sink or RecordingSink())
    server = HTTPServer(config, lambda: True, keys=Live(config, keyring=ring), sink=recorder)
    await server.start()
    try:
        yield Served(server, ring, recorder, config)
    finally:
        await server.stop()


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def request(port: int, path: str, *, method: str = "GET", host: str = DOMAIN,
                  headers: dict[str, str] | None = None, data: Any = None,
                  user_agent: str | None = BROWSER) -> Answer:
    sent = {"Host": host, **(headers or {})}
    skip: list[str] = []
    if user_agent is None:
        skip.append("User-Agent")
    else:
        sent["User-Agent"] = user_agent
    async with aiohttp.ClientSession(skip_auto_headers=skip) as http, \
            http.request(method, f"http://127.0.0.1:{port}{path}", headers=sent, data=data,
                         allow_redirects=False) as response:
        return Answer(response.status, response.headers, await response.read())


async def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def raw_get(target: str, host: str = DOMAIN) -> bytes:
    return (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {BROWSER}\r\n"
            "Connection: close\r\n\r\n").encode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def assert_tracking_headers(headers: Any) -> None:
    assert headers["Cache-Control"] == "no-store, private"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "Set-Cookie" not in headers


# --- clicks ----------------------------------------------------------------------------

async def test_click_redirects_to_the_exact_url_and_records_the_click(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv:
        token = srv.token("click")
        answer = await request(srv.port, f"/c/{token}")
        assert answer.status == 302
        assert answer.headers["Location"] == URL  # query and fragment untouched
        assert_tracking_headers(answer.headers)
        assert srv.sink is not None
        [event] = srv.sink.engaged_with
        assert event.payload == tokens.decode(token, srv.ring)
        assert isinstance(event.payload, tokens.ClickToken)
        assert event.payload.tags == (("campaign", "x"),)
        assert (event.ip, event.user_agent, event.host) == ("127.0.0.1", BROWSER, DOMAIN)
        assert (event.machine, event.machine_reason) == (False, None)
        assert abs(event.at - time.time()) < 5
        # A query string added by someone on the way is ignored, never used.
        again = await request(srv.port, f"/c/{token}?url=https://evil.example/")
        assert again.headers["Location"] == URL


async def test_bad_tokens_get_a_plain_404_that_leads_nowhere(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv:
        retired = srv.token("click")  # signed by key 1, which is retired next
        srv.ring.rotate(time.time() - 61 * 86400)  # past the retirement grace period
        good = srv.token("click")
        middle = len(good) // 2
        tampered = good[:middle] + ("A" if good[middle] != "A" else "B") + good[middle + 1:]
        other = tokens.KeyRing([tokens.Key(7, b"k" * 32, time.time())])
        bad = {
            "tampered": tampered,
            "truncated": good[:-5],
            "10 KB": "A" * 10240,
            "retired key": retired,
            "unknown key": srv.token("click", ring=other),
            "open token on /c": srv.token("open"),
            "unsubscribe token on /c": srv.token("unsubscribe"),
            "not base64": "abc$def",
        }
        for name, token in bad.items():
            with pytest.raises(tokens.InvalidToken) if "on /c" not in name \
                    else contextlib.nullcontext():
                tokens.decode(token, srv.ring)
        for reason, token in bad.items():
            answer = await request(srv.port, f"/c/{token}")
            assert answer.status == 404, reason
            assert answer.text == "Link not found\n", reason
            assert "Location" not in answer.headers, reason
            assert_tracking_headers(answer.headers)
        empty = await request(srv.port, "/c/")
        assert empty.status == 404 and "Location" not in empty.headers
        for kind in ("c", "u"):
            answer = await request(srv.port, f"/{kind}/{tampered}")
            assert answer.status == 404 and tampered not in answer.text
        assert (await request(srv.port, f"/c/{good}")).status == 302
        assert srv.sink is not None and len(srv.sink.engaged_with) == 1


async def test_a_click_past_the_tracking_window_redirects_without_an_event(
        tmp_path: Path) -> None:
    async with serve(tmp_path, http={"tracking_window": "30d"}) as srv:
        late = await request(srv.port, f"/c/{srv.token('click', age=31 * 86400)}")
        assert late.status == 302 and late.headers["Location"] == URL
        pixel = await request(srv.port, f"/o/{srv.token('open', age=31 * 86400)}")
        assert pixel.body == PIXEL
        assert srv.sink is not None and srv.sink.engaged_with == []
        inside = await request(srv.port, f"/c/{srv.token('click', age=29 * 86400)}")
        assert inside.status == 302 and len(srv.sink.engaged_with) == 1


# --- opens -----------------------------------------------------------------------------

def check_gif(data: bytes) -> None:
    """A 1x1 GIF89a whose one pixel is the transparent colour (read field by field)."""
    assert len(data) == 43 and data[:6] == b"GIF89a" and data[-1:] == b";"
    width, height, packed = struct.unpack_from("<HHB", data, 6)
    assert (width, height) == (1, 1) and packed & 0x80  # global colour table
    table_size = 3 * 2 ** ((packed & 7) + 1)
    at = 13 + table_size
    assert data[at:at + 3] == b"!\xf9\x04" and data[at + 3] & 1  # transparency flag
    transparent_index = data[at + 6]
    at += 8
    assert data[at:at + 1] == b","
    left, top, w, h, flags = struct.unpack_from("<HHHHB", data, at + 1)
    assert (left, top, w, h, flags) == (0, 0, 1, 1, 0)
    at += 10
    min_code, size = data[at], data[at + 1]
    block = data[at + 2:at + 2 + size]
    assert data[at + 2 + size] == 0 and at + 3 + size == len(data) - 1
    # LZW, LSB first: clear code, the pixel's index, end code.
    bits = int.from_bytes(block, "little")
    width_bits = min_code + 1
    codes = [(bits >> (i * width_bits)) & ((1 << width_bits) - 1) for i in range(3)]
    assert codes == [1 << min_code, transparent_index, (1 << min_code) + 1]


async def test_open_pixel_is_a_transparent_gif_and_records_the_open(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv:
        token = srv.token("open")
        answer = await request(srv.port, f"/o/{token}")
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "image/gif"
        assert_tracking_headers(answer.headers)
        check_gif(answer.body)
        assert srv.sink is not None
        [event] = srv.sink.engaged_with
        assert isinstance(event.payload, tokens.OpenToken)
        assert (event.machine, event.ip, event.host) == (False, "127.0.0.1", DOMAIN)
        # A bad token still gets the image (no broken icon, nothing learnt), no event.
        for wrong in (token[:-3], srv.token("click"), "A" * 300):
            bad = await request(srv.port, f"/o/{wrong}")
            assert (bad.status, bad.body) == (200, PIXEL)
        assert len(srv.sink.engaged_with) == 1


# --- unsubscribe -----------------------------------------------------------------------

async def test_unsubscribe_page_then_one_click_post(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv:
        token = srv.token("unsubscribe", age=400 * 86400)  # no window for unsubscribing
        page = await request(srv.port, f"/u/{token}")
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
        assert_tracking_headers(page.headers)
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert re.search(r'<form method="post">\s*<input type="hidden" '
                         r'name="List-Unsubscribe" value="One-Click">', page.text)
        assert "this address" in page.text
        assert not re.search(r"src=|href=|<script|https?:", page.text)  # self-contained
        assert token not in page.text
        assert srv.sink is not None and srv.sink.unsubscribed == []  # GET changes nothing

        done = await request(srv.port, f"/u/{token}", method="POST",
                             data={"List-Unsubscribe": "One-Click"})
        assert done.status == 200 and "Location" not in done.headers
        assert "You are unsubscribed" in done.text
        assert_tracking_headers(done.headers)
        [event] = srv.sink.unsubscribed
        assert isinstance(event.payload, tokens.UnsubscribeToken)
        assert event.payload.recipient == 0 and event.machine is False

        with aiohttp.MultipartWriter("form-data") as form:
            part = form.append("One-Click")
            part.set_content_disposition("form-data", name="List-Unsubscribe")
        multipart = await request(srv.port, f"/u/{token}", method="POST", data=form)
        assert multipart.status == 200 and len(srv.sink.unsubscribed) == 2

        for body, ctype in ((b"", "application/x-www-form-urlencoded"),
                            (b"List-Unsubscribe=Yes", "application/x-www-form-urlencoded"),
                            (b"List-Unsubscribe=One-Click", "text/plain"),
                            (b'{"List-Unsubscribe": "One-Click"}', "application/json")):
            refused = await request(srv.port, f"/u/{token}", method="POST", data=body,
                                    headers={"Content-Type": ctype})
            assert refused.status == 400, (body, ctype)
            assert "List-Unsubscribe=One-Click" in refused.text
        assert len(srv.sink.unsubscribed) == 2
        bad = await request(srv.port, f"/u/{token[:-2]}", method="POST",
                            data={"List-Unsubscribe": "One-Click"})
        assert bad.status == 404

        srv.sink.accept = False
        later = await request(srv.port, f"/u/{token}", method="POST",
                              data={"List-Unsubscribe": "One-Click"})
        assert later.status == 503 and later.headers["Retry-After"].isdigit()


async def test_without_a_sink_tracking_works_and_unsubscribe_says_try_later(
        tmp_path: Path) -> None:
    async with serve(tmp_path, no_sink=True) as srv:
        assert (await request(srv.port, f"/c/{srv.token('click')}")).status == 302
        assert (await request(srv.port, f"/o/{srv.token('open')}")).body == PIXEL
        answer = await request(srv.port, f"/u/{srv.token('unsubscribe')}", method="POST",
                               data={"List-Unsubscribe": "One-Click"})
        assert answer.status == 503 and int(answer.headers["Retry-After"]) > 0


# --- hosts, proxies, machines ----------------------------------------------------------

async def test_only_tracking_domains_answer(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv:
        click = f"/c/{srv.token('click')}"
        for host in ("evil.example", "links.test.evil.example", "127.0.0.1", ""):
            answer = await request(srv.port, click, host=host)
            assert answer.status == 404 and "Location" not in answer.headers, host
            assert (await request(srv.port, f"/o/{srv.token('open')}", host=host)).status \
                == 404
            assert (await request(srv.port, f"/u/{srv.token('unsubscribe')}", host=host)
                    ).status == 404
        for host in ("links.test", "LINKS.TEST", "links.test:8443", "links.test.",
                     PORTED, "go.example.com"):
            answer = await request(srv.port, click, host=host)
            assert answer.status == 302, host
        assert srv.sink is not None
        assert {e.host for e in srv.sink.engaged_with} == {"links.test", "go.example.com"}
        # HTTP/1.0 without any Host header.
        response = await raw(srv.port, f"GET {click} HTTP/1.0\r\n\r\n".encode())
        assert status_of(response) == 404 and b"Location" not in response


async def test_client_address_behind_trusted_proxies(tmp_path: Path) -> None:
    click = "/c/{}"
    async with serve(tmp_path, http={"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]}
                     ) as srv:
        cases = [
            ({"X-Forwarded-For": "203.0.113.7"}, "203.0.113.7"),
            ({"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.1.2.3"}, "203.0.113.7"),
            ({"X-Forwarded-For": "10.9.9.9, 127.0.0.2"}, "10.9.9.9"),
            ({"X-Forwarded-For": "203.0.113.9:4711"}, "203.0.113.9"),
            ({"X-Forwarded-For": "unknown"}, "127.0.0.1"),
            ({"X-Forwarded-For": "garbage, 203.0.113.8"}, "203.0.113.8"),
            ({"Forwarded": 'for=198.51.100.4;proto=https, for="[2001:db8::1]:4711"'},
             "2001:db8::1"),
            ({"Forwarded": "for=_hidden"}, "127.0.0.1"),
            ({}, "127.0.0.1"),
        ]
        for headers, expected in cases:
            await request(srv.port, click.format(srv.token("click")), headers=headers)
            assert srv.sink is not None
            assert srv.sink.engaged_with[-1].ip == expected, headers
    async with serve(tmp_path) as srv:  # nobody trusted: the headers mean nothing
        await request(srv.port, click.format(srv.token("click")),
                      headers={"X-Forwarded-For": "203.0.113.7", "Forwarded": "for=1.2.3.4"})
        assert srv.sink is not None and srv.sink.engaged_with[-1].ip == "127.0.0.1"


async def test_machine_opens_and_clicks_are_flagged_not_dropped(tmp_path: Path) -> None:
    rules = {"too_fast": "5s",
             "user_agents": ["Barracuda", "python-requests", r"/^Link ?Checker\/\d/"],
             "image_proxies": [
                 {"name": "apple-mail-privacy", "user_agents": ["/^Mozilla/5\\.0$/"],
                  "networks": ["17.0.0.0/8"]},
                 {"name": "gmail", "user_agents": ["GoogleImageProxy"]}]}
    async with serve(tmp_path, http={"machine_detection": rules,
                                     "trusted_proxies": ["127.0.0.1/32"]}) as srv:
        sink = srv.sink
        assert sink is not None

        async def last(path: str, **options: Any) -> Engagement:
            before = len(sink.engaged_with)
            await request(srv.port, path, **options)
            assert len(sink.engaged_with) == before + 1  # flagged, never dropped
            return sink.engaged_with[-1]

        head = await request(srv.port, f"/c/{srv.token('click')}", method="HEAD")
        assert head.status == 302 and head.headers["Location"] == URL
        assert (sink.engaged_with[-1].machine, sink.engaged_with[-1].machine_reason) == (
            True, "head-request")
        cases = [
            (f"/c/{srv.token('click')}",
             {"user_agent": "Mozilla/5.0 (compatible; BARRACUDA link protection)"},
             "scanner-user-agent:Barracuda"),
            (f"/c/{srv.token('click')}", {"user_agent": "python-requests/2.31"},
             "scanner-user-agent:python-requests"),
            (f"/c/{srv.token('click')}", {"user_agent": "LinkChecker/10.2"},
             r"scanner-user-agent:/^Link ?Checker\/\d/"),
            (f"/c/{srv.token('click')}", {"user_agent": None}, "no-user-agent"),
            (f"/o/{srv.token('open')}", {"user_agent": "Mozilla/5.0"},
             "image-proxy:apple-mail-privacy"),
            (f"/o/{srv.token('open')}",
             {"headers": {"X-Forwarded-For": "17.58.1.2"}},
             "image-proxy:apple-mail-privacy"),
            (f"/o/{srv.token('open')}",
             {"user_agent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
                            "(via ggpht.com GoogleImageProxy)"}, "image-proxy:gmail"),
            (f"/o/{srv.token('open')}", {"method": "HEAD"}, "head-request"),
        ]
        for path, options, reason in cases:
            event = await last(path, **options)
            assert (event.machine, event.machine_reason) == (True, reason)
        fast = await last(f"/c/{srv.token('click', age=0)}")
        assert fast.machine and fast.machine_reason is not None
        assert re.fullmatch(r"too-fast:[01]\.\ds", fast.machine_reason)
        # A person: a browser, some time after delivery; an Apple address clicking
        # is a person too (the image-proxy rules are for opens).
        for path, options in ((f"/c/{srv.token('click', age=60)}", {}),
                              (f"/o/{srv.token('open', age=1)}", {}),
                              (f"/c/{srv.token('click')}",
                               {"headers": {"X-Forwarded-For": "17.58.1.2"}})):
            event = await last(path, **options)
            assert (event.machine, event.machine_reason) == (False, None), path
    # The rules as shipped (and as documented in the example config).
    async with serve(tmp_path) as srv:
        assert srv.sink is not None
        for agent, reason in (("curl/8.5.0", "curl/"), ("Mozilla/5.0 (compatible; "
                              "Googlebot/2.1)", "bot"), ("Go-http-client/1.1",
                              "Go-http-client")):
            await request(srv.port, f"/c/{srv.token('click')}", user_agent=agent)
            assert srv.sink.engaged_with[-1].machine_reason == f"scanner-user-agent:{reason}"
        await request(srv.port, f"/c/{srv.token('click', age=1)}")
        assert srv.sink.engaged_with[-1].machine_reason is not None
        assert srv.sink.engaged_with[-1].machine_reason.startswith("too-fast:")


def test_the_example_config_documents_the_default_rules() -> None:
    documented = yaml.safe_load(EXAMPLE.read_text())["http"]["machine_detection"]
    assert MachineDetectionConfig.model_validate(documented) == MachineDetectionConfig()


# --- TLS -------------------------------------------------------------------------------

def served_certificate(port: int, server_name: str | None,
                       context: ssl.SSLContext | None = None) -> bytes:
    import socket

    ctx = context or client_context()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def der_of(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
async def test_https_serves_each_tracking_domain_its_certificate(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    for name in ("a.test", "b.test"):
        tls.ensure_self_signed(certs / f"{name}.pem", certs / f"{name}.key", name)
    domains = {name: {"cert_file": str(certs / f"{name}.pem"),
                      "key_file": str(certs / f"{name}.key")} for name in ("a.test", "b.test")}
    domains["c.test"] = {}  # no certificate of its own: the relay's
    async with serve(tmp_path, domains=domains,
                     http={"tls_listen": ["127.0.0.1:0"]}) as srv:
        port = srv.tls_port
        relay_cert = der_of(srv.config.cert_path)
        for name, expected in (("a.test", der_of(certs / "a.test.pem")),
                               ("B.TEST", der_of(certs / "b.test.pem")),
                               ("c.test", relay_cert), ("other.example", relay_cert),
                               (None, relay_cert)):
            got = await asyncio.to_thread(served_certificate, port, name)
            assert got == expected, name
        # A client that verifies: a.test's certificate is valid for a.test.
        verifying = ssl.create_default_context(cafile=str(certs / "a.test.pem"))
        verifying.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        await asyncio.to_thread(served_certificate, port, "a.test", verifying)
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.to_thread(served_certificate, port, "b.test", verifying)
        # TLS 1.2 is enough; 1.1 (which this machine's OpenSSL still speaks) is refused.
        twelve = client_context()
        twelve.maximum_version = ssl.TLSVersion.TLSv1_2
        await asyncio.to_thread(served_certificate, port, "a.test", twelve)
        old = client_context()
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with contextlib.suppress(ssl.SSLError):
            old.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, OSError)):
            await asyncio.to_thread(served_certificate, port, "a.test", old)
        # The routes work over TLS too.
        token = srv.token("click")
        async with aiohttp.ClientSession() as http, http.get(
                f"https://127.0.0.1:{port}/c/{token}", ssl=verifying,
                server_hostname="a.test", headers={"Host": "a.test", "User-Agent": BROWSER},
                allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == URL
        assert srv.sink is not None and srv.sink.engaged_with[-1].host == "a.test"


# --- well-known files -------------------------------------------------------------------

async def test_deep_link_files_per_tracking_domain(tmp_path: Path) -> None:
    aasa = tmp_path / "aasa.json"
    aasa.write_bytes(b'{"applinks": {"details": [{"appIDs": ["ABCDE12345.com.example.app"],'
                     b' "components": [{"/": "/c/*"}]}]}}')
    links = tmp_path / "assetlinks.json"
    links.write_bytes(b'[{"relation": ["delegate_permission/common.handle_all_urls"]}]')
    domains = {DOMAIN: {"apple_app_site_association": str(aasa), "assetlinks": str(links)},
               "other.test": {}}
    async with serve(tmp_path, domains=domains) as srv:
        for path, source in (("/.well-known/apple-app-site-association", aasa),
                             ("/.well-known/assetlinks.json", links)):
            answer = await request(srv.port, path)
            assert answer.status == 200 and answer.body == source.read_bytes()
            assert answer.headers["Content-Type"] == "application/json"
            assert (await request(srv.port, path, host="other.test")).status == 404
            assert (await request(srv.port, path, host="evil.example")).status == 404
        encoded = await raw(srv.port, raw_get("/.well-known/assetlinks%2Ejson"))
        assert status_of(encoded) == 404
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    for source, problem in ((tmp_path / "missing.json", "No such file"), (broken, "not JSON")):
        config = Config.model_validate(base_config(tmp_path / "var", tracking_domains={
            DOMAIN: {"assetlinks": str(source)}}))
        server = HTTPServer(config, lambda: True)
        with pytest.raises(OSError, match=rf"tracking_domains\.{DOMAIN}\.assetlinks: .*{problem}"):
            await server.start()
        await server.stop()


# --- abuse -----------------------------------------------------------------------------

async def test_path_tricks_are_404_over_a_raw_socket(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv:
        token = srv.token("click")
        ok = await raw(srv.port, raw_get(f"/c/{token}"))
        assert status_of(ok) == 302 and f"Location: {URL}\r\n".encode() in ok
        quoted = "".join(f"%{ord(ch):02X}" for ch in token[:4]) + token[4:]
        targets = [
            f"/c/../c/{token}", f"/o/../c/{token}", f"/c/%2e%2e/c/{token}",
            f"/c/{token}%2F", f"/c/{token}%2f..", f"/c//{token}", f"//c/{token}",
            f"/c/{token}/", f"/c/{token}/..", f"/./c/{token}", f"/c/./{token}",
            f"/%63/{token}", f"/c%2F{token}", f"/c/{quoted}", f"/C/{token}",
            f"/c/{token}%00", f"/c/{token};x", f"http://evil.example/c/{token}",
            f"/c/{token}\\..", "/c/..", "/c/%2e%2e", "/u/..%2F..%2Fmetrics",
        ]
        for target in targets:
            response = await raw(srv.port, raw_get(target))
            assert status_of(response) in (400, 404), target
            assert b"\r\nLocation:" not in response, target
            assert token.encode() not in response.partition(b"\r\n\r\n")[2], target
        assert srv.sink is not None and len(srv.sink.engaged_with) == 1


async def test_a_slowloris_client_is_cut_off_and_others_are_served(tmp_path: Path) -> None:
    async with serve(tmp_path, http={"read_timeout": "2s"}) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: links.test\r\nX-Slow: ")
        await writer.drain()
        started = time.monotonic()

        async def trickle() -> None:
            with contextlib.suppress(OSError):
                for _ in range(30):
                    await asyncio.sleep(1)
                    writer.write(b"a")
                    await writer.drain()

        dripping = asyncio.create_task(trickle())
        try:
            await asyncio.sleep(0.5)
            normal = await request(srv.port, "/healthz")  # served meanwhile
            assert (normal.status, normal.text) == (200, "ok\n")
            async with asyncio.timeout(10):
                leftover = await reader.read()  # EOF: the server closed the connection
            elapsed = time.monotonic() - started
            assert b"200" not in leftover
            assert 1.5 <= elapsed <= 4.5, elapsed
        finally:
            dripping.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        assert (await request(srv.port, "/healthz")).status == 200


async def test_huge_headers_are_refused_and_nothing_breaks(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv:
        big = f"GET /healthz HTTP/1.1\r\nHost: links.test\r\nX-Big: {'A' * 100_000}\r\n\r\n"
        assert status_of(await raw(srv.port, big.encode())) in (400, 431)
        many = "".join(f"X-H{i}: v\r\n" for i in range(500))
        answer = await raw(srv.port, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
        assert status_of(answer) in (400, 431)
        huge_body = b"List-Unsubscribe=One-Click&x=" + b"A" * 200_000
        too_big = await request(srv.port, f"/u/{srv.token('unsubscribe')}", method="POST",
                                data=huge_body, headers={
                                    "Content-Type": "application/x-www-form-urlencoded"})
        assert too_big.status == 413
        assert (await request(srv.port, "/healthz")).status == 200


async def test_metrics_count_routes_and_results_never_tokens(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv:
        before = samples((await request(srv.port, "/metrics")).text)
        good, bad = srv.token("click", age=60), srv.token("click")[:-4]
        await request(srv.port, f"/c/{good}")
        await request(srv.port, f"/c/{bad}")
        await request(srv.port, f"/o/{srv.token('open', age=90 * 86400)}")
        await request(srv.port, f"/c/{srv.token('click')}", user_agent="curl/8")
        await request(srv.port, "/nothing/here")
        text = (await request(srv.port, "/metrics")).text
        after = samples(text)

        def delta(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        assert delta("smtprelay_http_requests_total", route="/c/{token}", status="302") == 2
        assert delta("smtprelay_http_requests_total", route="/c/{token}", status="404") == 1
        assert delta("smtprelay_http_requests_total", route="/o/{token}", status="200") == 1
        assert delta("smtprelay_http_requests_total", route="other", status="404") == 1
        assert delta("smtprelay_tracking_requests_total", kind="click", result="ok") == 1
        assert delta("smtprelay_tracking_requests_total", kind="click", result="invalid") == 1
        assert delta("smtprelay_tracking_requests_total", kind="click", result="machine") == 1
        assert delta("smtprelay_tracking_requests_total", kind="open", result="expired") == 1
        assert good not in text and bad not in text


# --- the whole relay -------------------------------------------------------------------

def test_a_link_the_relay_wrote_redirects_on_its_http_listener(tmp_path: Path) -> None:
    sets = {"transactional": {"tracking": {"click": True, "open": True,
                                           "domain": "links.example.com", "https": True}}}
    html = ('<html><body><a href="https://shop.example.com/?a=1&amp;b=%2F">Shop</a>'
            "</body></html>")
    data = (b"From: app@example.com\r\nTo: someone@example.net\r\nSubject: tracked\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            + html.encode() + b"\r\n")
    with running(tmp_path, configuration_sets=sets,
                 tracking_domains={"links.example.com": {}}) as relay:
        cred = relay.credential()
        with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=30) as smtp:
            smtp.starttls(context=client_context())
            smtp.login(cred.username, cred.password)
            smtp.sendmail("app@example.com", ["someone@example.net"], data)
        [stored] = spooled(relay.config)
        body = stored["data"].decode()
        click = re.search(r"https://links\.example\.com(/c/[A-Za-z0-9_-]+)", body)
        pixel = re.search(r"https://links\.example\.com(/o/[A-Za-z0-9_-]+)", body)
        assert click and pixel

        async def follow() -> tuple[Answer, Answer]:
            return (await request(relay.http_port, click.group(1), host="links.example.com"),
                    await request(relay.http_port, pixel.group(1), host="links.example.com"))

        redirect, image = asyncio.run(follow())
        assert redirect.status == 302
        assert redirect.headers["Location"] == "https://shop.example.com/?a=1&b=%2F"
        assert image.body == PIXEL
