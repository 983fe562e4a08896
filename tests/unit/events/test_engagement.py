"""How a contact's preferences are written in a Subscription event."""

from __future__ import annotations

from smtprelay.config import ContactListConfig
from smtprelay.events.engagement import preferences
from smtprelay.events.model import SubscriptionStatus, TopicPreferences, TopicStatus
from smtprelay.policy.contacts import Contact

NEWS = ContactListConfig.model_validate({
    "account": "acme", "unsubscribe_domain": "links.example.com",
    "topics": [{"name": "sports", "display_name": "S", "default_subscription_status": "OPT_IN"},
               {"name": "daily", "display_name": "D", "default_subscription_status": "OPT_OUT"}]})
IN, OUT = SubscriptionStatus.OPT_IN, SubscriptionStatus.OPT_OUT


def test_every_topic_of_the_list_with_the_contacts_status_or_its_default() -> None:
    assert preferences(None, NEWS) == TopicPreferences(False, (
        TopicStatus("sports", IN), TopicStatus("daily", OUT)))
    contact = Contact("news", "a@example.net", True, {"daily": "OPT_IN", "gone": "OPT_OUT"})
    # A topic the list no longer has is still shown, after the list's own.
    assert preferences(contact, NEWS) == TopicPreferences(True, (
        TopicStatus("sports", IN), TopicStatus("daily", IN), TopicStatus("gone", OUT)))


def test_a_sets_implicit_list_has_no_topics() -> None:
    assert preferences(None, None) == TopicPreferences(False, ())
    assert preferences(Contact("configuration-set:m", "a@example.net", True), None) == \
        TopicPreferences(True, ())
