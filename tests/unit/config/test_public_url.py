"""http.public_url, and the notification webhooks that need it (their SNS
SubscribeURL is built on it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprelay.app.preflight import load_checked
from smtprelay.config import ConfigError


def problems_for(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_checked(path)
    return info.value.problems


NOTIFICATION_WEBHOOK = """
listeners: [{name: s, port: 2587, tls: none}]
server: {data_dir: DATA}
configuration_sets:
  bulk:
    event_destinations:
      - {name: lists, type: webhook, format: notification, url: "https://lists.test/ses",
         secret_env: SMTPRELAY_TEST_SECRET}
"""


def test_a_notification_webhook_needs_http_public_url(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTPRELAY_TEST_SECRET", "s3cret-0123456789")
    text = NOTIFICATION_WEBHOOK.replace("DATA", str(tmp_path / "var"))
    [problem] = problems_for(tmp_path, text)
    assert problem.startswith(
        "configuration_sets.bulk.event_destinations[lists]: format notification on a webhook "
        "starts with SNS's SubscriptionConfirmation")
    assert "set http.public_url" in problem
    path = tmp_path / "ok.yaml"
    path.write_text(text + 'http: {public_url: "https://relay.example.com/smtprelay/"}\n')
    assert load_checked(path).config.http.public_url == "https://relay.example.com/smtprelay"
    # The event format and file destinations have no handshake, so no URL.
    path.write_text(text.replace("format: notification", "format: event"))
    assert load_checked(path).config.http.public_url is None


@pytest.mark.parametrize("url", ["relay.example.com", "ftp://relay.example.com",
                                 "https://relay.example.com/?x=1", "https://u:p@relay.test",
                                 "https://relay.example.com/#top", "https://"])
def test_http_public_url_must_be_an_http_base_url(tmp_path: Path, url: str) -> None:
    [problem] = problems_for(tmp_path, f"""
listeners: [{{name: s, port: 2587, tls: none}}]
http: {{public_url: "{url}"}}
""")
    assert problem.startswith("http.public_url:") and "base URL" in problem, problem
