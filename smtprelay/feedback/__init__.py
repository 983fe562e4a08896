"""The feedback loop's parsing core: what came back to a VERP address, and what it means.

Pure functions, no I/O: the feedback listener receives a message, calls
``analyse(raw)`` and acts on the answer (events, suppression entries), keeping
anything ``Unparseable`` with its reason. Modules, one job each:

* ``verp``: the signed envelope-sender tag naming message and recipient;
* ``mime``: bounded parsing of the message and its parts, the returned original;
* ``fields``: tolerant reading of "Name: value" fields;
* ``dsn``: RFC 3464 delivery status notifications -> ``DeliveryReport``;
* ``textbounce``: bounces without RFC 3464 fields (qmail, old Exim, Exchange wording);
* ``arf``: RFC 5965 complaint reports and forwarded spam reports -> ``ComplaintReport``;
* ``autoreply``: out-of-office and other RFC 3834 automatic replies -> ``AutoReply``;
* ``classify``: ``analyse`` and the helpers that trace a report to our message and
  make SES event records from it.
"""

from smtprelay.feedback.arf import ComplaintReport
from smtprelay.feedback.autoreply import AutoReply
from smtprelay.feedback.classify import (
    Attribution,
    Feedback,
    Unparseable,
    analyse,
    attribute,
    bounce_details,
    complaint_detail,
    delay_details,
    find_verp_tags,
    recover_tag,
    relay_message_ids,
)
from smtprelay.feedback.dsn_parse import DeliveryReport, RecipientStatus
from smtprelay.feedback.mime import OriginalMessage

__all__ = [
    "Attribution",
    "AutoReply",
    "ComplaintReport",
    "DeliveryReport",
    "Feedback",
    "OriginalMessage",
    "RecipientStatus",
    "Unparseable",
    "analyse",
    "attribute",
    "bounce_details",
    "complaint_detail",
    "delay_details",
    "find_verp_tags",
    "recover_tag",
    "relay_message_ids",
]
