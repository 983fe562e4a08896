"""The unsubscribe confirmation page: what it names for a contact list's message."""

from __future__ import annotations

from smtprelay.config import Config
from smtprelay.http.tracking import CONFIRM_PAGE, confirm_page
from smtprelay.transform.tokens import UnsubscribeToken

MID = "018bd0e1a2b3-0123456789abcdef"
CONFIG = Config.model_validate({
    "listeners": [{"name": "s", "port": 2587, "tls": "none"}],
    "accounts": {"acme": {"identities": ["example.com"]}},
    "tracking_domains": {"links.example.com": {}},
    "contact_lists": {"news": {
        "account": "acme", "description": "News & <b>offers</b>",
        "unsubscribe_domain": "links.example.com",
        "topics": [{"name": "sports", "display_name": "Sports <script>",
                    "description": "Scores \"live\"", "default_subscription_status": "OPT_IN"}],
    }},
})


def test_a_topic_is_named_and_escaped() -> None:
    page = confirm_page(CONFIG, UnsubscribeToken(MID, 0, 1, "news", "sports"))
    assert "stop receiving <strong>Sports &lt;script&gt;</strong> emails" in page
    assert "<p>Scores &quot;live&quot;</p>" in page and "<script>" not in page
    assert 'name="List-Unsubscribe" value="One-Click"' in page


def test_a_whole_list_shows_its_description() -> None:
    page = confirm_page(CONFIG, UnsubscribeToken(MID, 0, 1, "news", None))
    assert "stop receiving any of these emails" in page
    assert "News &amp; &lt;b&gt;offers&lt;/b&gt;" in page


def test_without_a_known_list_the_page_is_the_plain_one() -> None:
    assert confirm_page(CONFIG, UnsubscribeToken(MID, 0, 1)) == CONFIRM_PAGE
    assert confirm_page(CONFIG, UnsubscribeToken(MID, 0, 1, "gone", None)) == CONFIRM_PAGE
