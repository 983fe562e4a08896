"""The bundled provider table classifies real providers' MX host names."""

from __future__ import annotations

import pytest

from smtprelay.delivery.providers import ProviderTableError, bundled, parse_providers


@pytest.mark.parametrize(("host", "provider"), [
    ("gmail-smtp-in.l.google.com.", "google"),
    ("ASPMX.L.GOOGLE.COM", "google"),
    ("alt1.aspmx.l.google.com", "google"),
    ("smtp.google.com", "google"),
    ("hotmail-com.olc.protection.outlook.com", "microsoft-consumer"),
    ("contoso-com.mail.protection.outlook.com", "microsoft-365"),
    ("mta5.am0.yahoodns.net", "yahoo"),
    ("mx-aol.mail.gm0.yahoodns.net", "yahoo"),
    ("mx01.mail.icloud.com", "apple"),
    ("mx2h1.comcast.net", "comcast"),
    ("mx00.emig.gmx.net", "gmx"),
    ("mx-ha03.web.de", "gmx"),
    ("smtp-in.orange.fr", "orange"),
    ("mx.yandex.ru", "yandex"),
    ("mxs.mail.ru", "mailru"),
    ("mx1.qq.com", "qq"),
    ("mx.example.net", None),
    ("google.com.evil.example", None),
    ("notgoogle.com", None),
])
def test_bundled_table_classifies_mx_hosts(host: str, provider: str | None) -> None:
    assert bundled().provider_of(host) == provider


def test_operator_table_overrides_and_extends() -> None:
    mine = parse_providers({"providers": {
        "google": {"mx": ["*.gmail.test"]},
        "sink": {"mx": ["*.sink.test"]},
    }}, "rules.yaml")
    table = bundled().merged(mine)
    assert table.provider_of("mx.gmail.test") == "google"
    assert table.provider_of("aspmx.l.google.com") is None  # replaced, not extended
    assert table.provider_of("a.sink.test") == "sink"
    assert table.provider_of("mx.yandex.ru") == "yandex"


@pytest.mark.parametrize("data", [
    None, {"providers": []}, {"providers": {"x": "*.x"}}, {"providers": {"x": {"mx": [""]}}},
])
def test_malformed_tables_name_the_file(data: object) -> None:
    with pytest.raises(ProviderTableError, match=r"rules\.yaml"):
        parse_providers(data, "rules.yaml")
