"""How mail is handled per configuration set (suppression, tracking, unsubscribe, event
destinations), and what watches the mail sent: the mailbox simulator, the reputation
guard's thresholds, the feedback listener's addresses.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from smtprelay.config.values import (
    Duration,
    MailtoSetting,
    Model,
    Size,
    check_mailto,
    check_tracking_host,
    mailto_target,
    normalise_identity,
    plain_address,
    repeated,
)
from smtprelay.mail.address import domain_of

SuppressionReason = Literal["BOUNCE", "COMPLAINT"]


class SetSuppressionConfig(Model):
    # Which suppression-list reasons stop delivery for messages sent with this set;
    # an empty list sends even to suppressed addresses (SES's override).
    reasons: tuple[SuppressionReason, ...] = ("BOUNCE", "COMPLAINT")


class TrackingConfig(Model):
    # SES open and click tracking for this set's HTML parts.
    open: bool = False
    click: bool = False
    # Host name of the tracking links and pixel; must be listed under tracking_domains.
    domain: str | None = None
    # true: https links and pixel; false: http; null: each tracked link keeps its
    # original scheme (SES's default) and the pixel is https.
    https: bool | None = None

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return None if value is None else check_tracking_host(value)

    @model_validator(mode="after")
    def _domain_needed(self) -> TrackingConfig:
        if (self.open or self.click) and self.domain is None:
            raise ValueError("open or click tracking is on but tracking.domain is not set "
                             "(the host name the tracking links point to, such as "
                             "links.example.com)")
        return self


class UnsubscribeConfig(Model):
    # RFC 8058 one-click unsubscribe: List-Unsubscribe (https URL on the tracking
    # domain) and List-Unsubscribe-Post headers, and {{unsubscribe_url}} in bodies.
    one_click: bool = False
    # Replace a List-Unsubscribe the sender wrote instead of keeping theirs.
    override: bool = False
    # A mailto URI after the URL, for mail programs without RFC 8058: mail to it
    # unsubscribes as the button does, through the feedback listener. true: at the
    # unsubscribe host (domain, else tracking.domain); a domain: there. The address
    # is signed per message and recipient, <mailto:u-TAG@DOMAIN?subject=unsubscribe-
    # TOKEN>; the domain's MX must be the feedback listener. An address (the older
    # form): that fixed address, the token in the subject alone. null/false: none.
    mailto: MailtoSetting = None
    # Host name for the unsubscribe URL; default: tracking.domain.
    domain: str | None = None

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return None if value is None else check_tracking_host(value)

    @field_validator("mailto")
    @classmethod
    def _mailto(cls, value: MailtoSetting) -> MailtoSetting:
        return check_mailto(value)


EVENT_TYPES = ("Send", "Reject", "Bounce", "Complaint", "Delivery", "DeliveryDelay",
               "Subscription", "Open", "Click")
EventTypeName = Literal["Send", "Reject", "Bounce", "Complaint", "Delivery", "DeliveryDelay",
                        "Subscription", "Open", "Click", "Rendering Failure"]


# The event types SES sends feedback notifications for (notificationType).
NOTIFICATION_TYPES = ("Bounce", "Complaint", "Delivery")


class EventDestinationConfig(Model):
    # Unique within the set; the delivery position is saved under "<set>/<name>", so a
    # renamed destination starts from the events made after the rename.
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    type: Literal["file", "webhook", "redis_stream"]
    enabled: bool = True
    # SES event types this destination receives, or "all".
    event_types: list[EventTypeName] | Literal["all"] = "all"
    # file: SES JSON, one event per line (NDJSON), appended; fsync once per batch.
    path: Path | None = None
    # Rotate the file at this size: path -> path.1 -> ... -> path.<keep>.
    max_size: Size = 100 * 1024 * 1024
    keep: int = Field(default=5, ge=0)
    # webhook: each event is POSTed as SES JSON to this http(s) URL, signed with
    # HMAC-SHA256 under the secret held in the environment variable secret_env.
    # redis_stream: the Redis (redis://, rediss://, unix://) whose stream gets them.
    url: str | None = None
    # redis_stream: the stream each event is added to (XADD), trimmed to about
    # max_length entries (MAXLEN ~) so a consumer that stops cannot fill Redis.
    stream: str = Field(default="smtprelay:events", min_length=1, max_length=200)
    max_length: int = Field(default=1_000_000, ge=1000)
    secret_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # event: SES's event publishing JSON (eventType), every type event_types names.
    # notification: SES's feedback notifications (notificationType Bounce, Complaint,
    # Delivery; the other types are not sent), a webhook's wrapped in an SNS envelope
    # as an "SES bounces via SNS" endpoint reads them (docs/events.md).
    format: Literal["event", "notification"] = "event"
    # notification: the TopicArn written in the SNS envelope (no AWS account is behind
    # it). Default: arn:smtprelay:sns:<server.hostname>:<set>-<name>.
    topic_arn: str | None = Field(default=None, min_length=1, max_length=256)
    # A request not answered within this long counts as a failure and is retried.
    timeout: Duration = 10.0
    # How long a failing receiver is retried (backoff up to retry_max_interval)
    # before its oldest events are set aside in data_dir/events-undelivered/.
    retry_for: Duration = 3 * 86400.0
    retry_max_interval: Duration = 300.0

    @model_validator(mode="after")
    def _target(self) -> EventDestinationConfig:
        if self.type == "file" and self.path is None:
            raise ValueError("a file destination needs path (the NDJSON file to append to)")
        if self.type == "webhook":
            if not self.url or not re.match(r"^https?://[^/\s]+", self.url):
                raise ValueError("a webhook destination needs url: an http:// or https:// "
                                 "address to POST events to")
            if not self.secret_env:
                raise ValueError("a webhook destination needs secret_env: the name of the "
                                 "environment variable holding its signing secret")
        if self.type == "redis_stream" and (
                not self.url or not self.url.startswith(("redis://", "rediss://", "unix://"))):
            raise ValueError("a redis_stream destination needs url: the Redis to add the "
                             "events to (redis://host:6379/0, rediss:// or unix://)")
        return self

    def wants(self, event_type: str) -> bool:
        if self.format == "notification" and event_type not in NOTIFICATION_TYPES:
            return False  # SES has feedback notifications for these types only
        return self.enabled and (self.event_types == "all" or event_type in self.event_types)


class SetDeliveryConfig(Model):
    # The IP pool (ip_pools.<name>) this set's mail leaves from; default: the
    # relay-wide delivery.ip_pool.
    ip_pool: str | None = None


class ConfigurationSetConfig(Model):
    # Who may use the set (one tenant never uses another's): these accounts; by
    # default (null) the accounts whose default_configuration_set it is; shared: true
    # lets every account use it. Any other use gets SES's "554 5.3.0 Configuration
    # set does not exist", as if it did not.
    accounts: list[str] | None = None
    shared: bool = False
    sending_enabled: bool = True
    # SES DeliveryOptions.TlsPolicy: require (require_encrypted) refuses to deliver this
    # set's mail in clear, require_verified also wants a valid certificate (it waits in
    # the queue instead); a set only tightens delivery.tls; default: delivery.tls.
    tls: Literal["opportunistic", "require", "require_encrypted",
                 "require_verified"] | None = None
    delivery: SetDeliveryConfig = Field(default_factory=SetDeliveryConfig)
    suppression: SetSuppressionConfig = Field(default_factory=SetSuppressionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    unsubscribe: UnsubscribeConfig = Field(default_factory=UnsubscribeConfig)
    event_destinations: list[EventDestinationConfig] = Field(default_factory=list)

    @field_validator("event_destinations")
    @classmethod
    def _unique_names(cls, values: list[EventDestinationConfig]
                      ) -> list[EventDestinationConfig]:
        for name in repeated(v.name for v in values):
            raise ValueError(f"the destination name {name!r} is used twice")
        return values

    @property
    def publishes(self) -> bool:
        """Some destination is on: events for this set are worth recording."""
        return any(d.enabled for d in self.event_destinations)

    @property
    def unsubscribe_domain(self) -> str | None:
        return self.unsubscribe.domain or self.tracking.domain

    @property
    def unsubscribe_mailto(self) -> str | None:
        """Where the mailto unsubscribe goes: a domain, a fixed address, or None."""
        return mailto_target(self.unsubscribe.mailto, self.unsubscribe_domain)


def is_simulator_address(address: str, domain: str) -> bool:
    return domain_of(address) == domain


class SimulatorConfig(Model):
    # Recipients here never leave the machine (mailbox simulator,
    # smtprelay.delivery.simulator); the sandbox accepts them as it accepts verified
    # identities.
    domain: str = "simulator.smtprelay.invalid"
    # SES leaves simulator mail out of the bounce and complaint rates. True counts it
    # in the set statistics (so the reputation guard sees it): for rehearsing the
    # guard's warnings and pauses on a test relay without bouncing real mail.
    counts_for_reputation: bool = False

    def covers(self, address: str) -> bool:
        """The address is one of the simulator's (any local part, any +label)."""
        return is_simulator_address(address, self.domain)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return normalise_identity(value)


class RateThresholds(Model):
    # Rates as fractions (0.05 is 5%); at `warning` the scope is under review, at
    # `pause` the guard pauses it. A threshold of 1 or more can never be reached.
    warning: float = Field(gt=0)
    pause: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> RateThresholds:
        if self.pause < self.warning:
            raise ValueError(f"pause ({self.pause}) is below warning ({self.warning})")
        return self


class ReputationConfig(Model):
    # The reputation guard (smtprelay.policy.reputation): bounce and complaint rates per
    # configuration set and per account over a sliding window.
    enabled: bool = True
    # SES judges a "representative volume" of recent mail; a day of it is what a
    # sender's daily quota is counted over, and what the stats show by default.
    window: Duration = 86400.0
    # Fewer deliveries + hard bounces than this in the window: no verdict (5 bounces
    # out of 10 messages say little). Complaints are judged on deliveries.
    minimum_volume: int = Field(default=500, ge=1)
    check_interval: Duration = 60.0
    # SES's figures: under review at 5% bounces / 0.1% complaints, paused at 10% / 0.5%.
    bounce: RateThresholds = Field(
        default_factory=lambda: RateThresholds(warning=0.05, pause=0.10))
    complaint: RateThresholds = Field(
        default_factory=lambda: RateThresholds(warning=0.001, pause=0.005))
    # What the guard pauses: each configuration set over the pause threshold, and (with
    # `accounts`) an account over it: all its mail refused until resumed.
    pause_sets: bool = True
    pause_accounts: bool = True


class FeedbackConfig(Model):
    # Addresses besides the VERP ones (b-<tag>@<mail_from_domain>) the feedback
    # listener accepts mail for: where mailbox providers send complaint reports
    # (feedback loops: Yahoo, Microsoft JMRP, Comcast ...) and abuse@-style inboxes.
    addresses: list[str] = Field(default_factory=list)
    # Largest report accepted; DSNs usually return the original message (or its
    # headers). Past it: 552 5.3.4.
    max_message_size: Size = 10 * 1024 * 1024
    # Reports that could not be parsed or matched to a message we sent are kept this
    # long in data_dir/feedback.db (`smtprelay feedback unmatched`), then purged.
    unmatched_retention: Duration = 30 * 86400.0
    # Junk sent to the feedback addresses must not fill the disk: of an unmatched
    # report only its first unmatched_max_size bytes are kept, and all unmatched
    # reports together stay under unmatched_quota (the oldest are dropped first,
    # counted in smtprelay_feedback_unmatched_dropped_total).
    unmatched_max_size: Size = 256 * 1024
    unmatched_quota: Size = 100 * 1024 * 1024
    # Per client (an IPv4 address or an IPv6 /64), counted like Postfix's anvil:
    # sessions open at once (past it: 421 4.7.0 at connect), MAIL commands and
    # report bytes per rate_window (past them: 450 4.7.1 / 452 4.3.1 at MAIL). All
    # temporary: a real mail server retries later and loses nothing.
    max_connections_per_ip: int = Field(default=20, ge=1)
    max_messages_per_ip: int = Field(default=1000, ge=1)
    max_bytes_per_ip: Size = 100 * 1024 * 1024
    rate_window: Duration = 60.0

    @model_validator(mode="after")
    def _one_report_fits(self) -> FeedbackConfig:
        if self.max_bytes_per_ip < self.max_message_size:
            raise ValueError(
                f"max_bytes_per_ip ({self.max_bytes_per_ip}) is below max_message_size "
                f"({self.max_message_size}): raise max_bytes_per_ip to at least "
                "max_message_size, so that one report of the largest size can be taken")
        return self

    @field_validator("addresses")
    @classmethod
    def _plain_addresses(cls, values: list[str]) -> list[str]:
        return [plain_address(value) for value in values]
