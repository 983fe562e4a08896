"""Prometheus metrics of the whole daemon, declared in one place so names stay consistent.

With worker processes (server.workers), each worker writes its metrics to files in a
directory the supervisor names in PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode; its counters survive a worker's restart), and the supervisor's
/metrics adds them to its own, labelled process="workers" (`exposition`): a counter's
total is the sum over both, as `sum(...)` gives in PromQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

WORKER_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"

CONNECTIONS_OPEN = Gauge(
    "smtprelay_smtp_connections_open", "SMTP connections open now", ["listener"],
    multiprocess_mode="livesum",  # the workers' open ones, summed; the dead's dropped
)
CONNECTIONS_TOTAL = Counter(
    "smtprelay_smtp_connections_total", "SMTP connections accepted", ["listener"]
)
CONNECTIONS_REFUSED = Counter(
    "smtprelay_smtp_connections_refused_total",
    "SMTP connections refused with 421 before the banner",
    ["reason"],
)
HTTP_CONNECTIONS_REFUSED = Counter(
    "smtprelay_http_connections_refused_total",
    "HTTP connections closed unanswered before a request (http.proxy_protocol)",
    ["reason"],
)
TLS_HANDSHAKE_FAILURES = Counter(
    "smtprelay_tls_handshake_failures_total", "TLS handshakes that failed", ["listener"]
)
AUTH_ATTEMPTS = Counter(
    "smtprelay_auth_attempts_total", "SMTP AUTH attempts by mechanism and result",
    ["mechanism", "result"],
)
AUTH_HASH_VERIFICATIONS = Counter(
    "smtprelay_auth_hash_verifications_total",
    "Slow password-hash computations (AUTH attempts the verification cache did not answer)",
)
MESSAGES_ACCEPTED = Counter(
    "smtprelay_messages_accepted_total", "Messages accepted and spooled", ["listener"]
)
MESSAGES_REJECTED = Counter(
    "smtprelay_messages_rejected_total", "Transactions or messages refused, by reason", ["reason"]
)
RECIPIENTS_ACCEPTED = Counter(
    "smtprelay_recipients_accepted_total", "Recipients of accepted messages"
)
MESSAGE_BYTES = Histogram(
    "smtprelay_message_size_bytes", "Size of accepted messages",
    buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216),
)
SPOOL_DEPTH = Gauge("smtprelay_spool_messages", "Messages in the spool with recipients pending")
SPOOL_COMMIT_SECONDS = Histogram(
    "smtprelay_spool_commit_seconds",
    "Time from handing a write to the spool until it is durable (group commit included)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SPOOL_BATCH_SIZE = Histogram(
    "smtprelay_spool_batch_size", "Writes that shared one commit (one fsync)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
# The other SQLite databases written with group commit (quota counters, feedback
# reports): the spool keeps its own two histograms above.
DB_COMMIT_SECONDS = Histogram(
    "smtprelay_db_commit_seconds",
    "Time from handing a write to a database until it is durable, by database",
    ["database"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DB_BATCH_SIZE = Histogram(
    "smtprelay_db_batch_size", "Writes that shared one commit (one fsync), by database",
    ["database"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
ACCEPT_SECONDS = Histogram(
    "smtprelay_accept_seconds", "Time from the end of DATA to the 250 reply",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DELIVERIES = Counter(
    "smtprelay_deliveries_total", "Recipient delivery attempts by result", ["result"]
)
DELIVERY_SECONDS = Histogram(
    "smtprelay_delivery_seconds", "Time from acceptance to delivery, per recipient",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 3600, 86400),
)
DELIVERIES_IN_FLIGHT = Gauge("smtprelay_deliveries_in_flight", "Messages being delivered now")
BOUNCES = Counter(
    "smtprelay_bounces_total", "Recipients bounced, by SES bounce type and subtype",
    ["type", "subtype"],
)
DEFERRALS = Counter(
    "smtprelay_deferrals_total", "Temporary delivery failures (the recipient waits for a retry)"
)
DELAYS = Counter("smtprelay_delivery_delays_total", "DeliveryDelay records, by SES delay type",
                 ["type"])
DSNS = Counter("smtprelay_dsns_total", "Bounce messages (RFC 3464 DSNs) queued to senders")
# The IP pools' warm-up (delivery.ip_pools), refreshed every few seconds by the daemon.
WARMUP_PERCENTAGE = Gauge(
    "smtprelay_warmup_percentage",
    "SES's WarmupPercentage of a pool address: 0 on its first day, 100 once warm",
    ["pool", "address"])
WARMUP_DAY = Gauge("smtprelay_warmup_day", "The day of its warm-up a pool address is on",
                   ["pool", "address"])
WARMUP_CAP = Gauge(
    "smtprelay_warmup_cap_today",
    "Today's warm-up cap of a pool address, in all (scope=total) and per mailbox provider "
    "(scope=per_provider); absent once the address is warm",
    ["pool", "address", "scope"])
WARMUP_SENT_TODAY = Gauge(
    "smtprelay_warmup_sent_today",
    "Recipients sent today (UTC) from a pool address, per mailbox provider",
    ["pool", "address", "provider"])
QUEUE_AGE_SECONDS = Histogram(
    "smtprelay_queue_age_seconds",
    "Age of a recipient (time since acceptance) at each delivery attempt",
    buckets=(0.1, 1, 10, 60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 5 * 86400),
)
OUTBOUND_CONNECTIONS = Gauge(
    "smtprelay_outbound_connections", "Outbound SMTP sessions open (in use and idle)"
)
OUTBOUND_LEASES = Gauge(
    "smtprelay_outbound_leases",
    "Cluster connection leases this node holds (store: redis; one per open session)",
)
OUTBOUND_CONNECTS = Counter(
    "smtprelay_outbound_connects_total", "Outbound connection attempts by result", ["result"]
)
DOMAIN_ACTIVE = Gauge(
    "smtprelay_domain_active_connections",
    "Outbound sessions in use per recipient domain (only domains with sessions in use)",
    ["domain"],
)
PROVIDER_SUSPENDED = Gauge(
    "smtprelay_provider_suspended",
    "1 while a shaping rule has suspended sending to a mailbox provider from a source "
    "address (only suspended ones are listed)", ["provider", "source"],
)
PROVIDER_THROTTLE = Gauge(
    "smtprelay_provider_throttle_factor",
    "The share of its limits a throttled provider gets from a source address (only "
    "throttled ones are listed)", ["provider", "source"],
)
SHAPING_RULE_HITS = Counter(
    "smtprelay_shaping_rule_hits_total",
    "Replies that matched a provider's shaping rule", ["provider", "rule", "action"],
)
SHAPING_DEFERRALS = Counter(
    "smtprelay_shaping_deferrals_total",
    "Transactions the relay deferred itself (SendingDeferral): reason suspended, "
    "provider_rate or domain_rate", ["reason"],
)
PROVIDER_TRANSACTIONS = Counter(
    "smtprelay_provider_transactions_total",
    "Transactions to a mailbox provider's hosts that shaping let through (not suspended)",
    ["provider"],
)
SHAPING_WAITS = Counter(
    "smtprelay_shaping_waits_total",
    "Transactions that waited (at most 2 s) for room under a rate limit",
)
EVENTS_PUBLISHED = Counter(
    "smtprelay_events_published_total", "Events handed to a destination",
    ["type", "configuration_set", "destination"]
)
EVENT_OUTBOX_DEPTH = Gauge(
    "smtprelay_event_outbox_depth", "Events waiting for at least one destination"
)
EVENT_PUBLISH_FAILURES = Counter(
    "smtprelay_event_publish_failures_total", "Failed attempts to hand events to a destination",
    ["destination"]
)
LINKS_TRACKED = Counter(
    "smtprelay_links_tracked_total", "Links rewritten for click tracking in accepted mail"
)
DKIM_SIGNATURES = Counter(
    "smtprelay_dkim_signatures_total", "DKIM signatures added, by algorithm", ["algorithm"]
)
DKIM_SIGN_SECONDS = Histogram(
    "smtprelay_dkim_sign_seconds", "Time to DKIM-sign one message (every signature on it)",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)
HTTP_REQUESTS = Counter(
    "smtprelay_http_requests_total",
    "HTTP requests answered, by route pattern (never the token) and status", ["route", "status"]
)
TRACKING_REQUESTS = Counter(
    "smtprelay_tracking_requests_total",
    "Tracking requests (click, open, unsubscribe) by result: ok, invalid (bad token), "
    "expired (past http.tracking_window: no event), machine (flagged, still recorded)",
    ["kind", "result"],
)
WEBHOOK_FAILURES = Counter(
    "smtprelay_webhook_failures_total",
    "Webhook event deliveries that failed (and are retried), by destination and reason: "
    "status_5xx, status_4xx, redirect (not followed), timeout, connect",
    ["configuration_set", "destination", "reason"],
)
EVENTS_SET_ASIDE = Counter(
    "smtprelay_events_set_aside_total",
    "Events a destination failing for longer than its retry_for could not take, appended "
    "to data_dir/events-undelivered/<set>.<destination>.ndjson instead",
    ["configuration_set", "destination"],
)
EVENT_DESTINATION_PENDING = Gauge(
    "smtprelay_event_destination_pending",
    "Outbox events after a destination's position (of every set: the ones it will pass "
    "over included), as of its last batch",
    ["configuration_set", "destination"],
)
EVENT_DESTINATION_UNCONFIRMED = Gauge(
    "smtprelay_event_destination_awaiting_confirmation",
    "1 while a webhook with format notification waits for its receiver to confirm the "
    "SNS subscription (GET the SubscribeURL; its events are held), 0 once confirmed",
    ["configuration_set", "destination"],
)
ADMIN_AUTH_FAILURES = Counter(
    "smtprelay_admin_auth_failures_total",
    "Admin API requests refused with 401 (no token, a wrong one, or an expired signed one)"
)
CONFIGURATION_SETS_PAUSED = Gauge(
    "smtprelay_configuration_sets_paused",
    "Configuration sets paused at run time (admin API, smtprelay sets pause, reputation)"
)
FEEDBACK_RECEIVED = Counter(
    "smtprelay_feedback_received_total",
    "Reports (DSNs, complaints, auto-replies...) the feedback listener accepted and stored"
)
FEEDBACK_RECIPIENTS_REFUSED = Counter(
    "smtprelay_feedback_recipients_refused_total",
    "RCPT refused by the feedback listener: verp (a forged, altered or retired tag), "
    "unsubscribe (the same, of a List-Unsubscribe mailto address) or unknown (none of "
    "those nor a feedback address)",
    ["reason"],
)
FEEDBACK_INBOX_DEPTH = Gauge(
    "smtprelay_feedback_inbox_depth", "Stored reports not yet processed"
)
FEEDBACK_REPORTS = Counter(
    "smtprelay_feedback_reports_total",
    "Processed reports by kind (delivery-report, complaint-report, auto-reply, "
    "unparseable) and result (matched: events or suppression made; ignored: nothing to "
    "do; unmatched: kept in the unmatched store)",
    ["kind", "result"],
)
FEEDBACK_UNMATCHED = Gauge(
    "smtprelay_feedback_unmatched", "Reports kept in the unmatched store (as of the last purge)"
)
FEEDBACK_BATCH_SECONDS = Histogram(
    "smtprelay_feedback_batch_seconds",
    "Time to process one batch of reports (parse, look up, record)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REPUTATION_STATE = Gauge(
    "smtprelay_reputation_state",
    "Reputation guard state per scope (set or account), name and metric (bounce, "
    "complaint): 0 ok, 1 warning (under review), 2 paused",
    ["scope", "name", "metric"],
)
REPUTATION_RATE = Gauge(
    "smtprelay_reputation_rate",
    "Bounce or complaint rate over the reputation window, as judged (scopes with a "
    "representative volume only)",
    ["scope", "name", "metric"],
)
REPUTATION_TRANSITIONS = Counter(
    "smtprelay_reputation_transitions_total",
    "Reputation state changes by scope, metric and new state",
    ["scope", "metric", "state"],
)

DELIVERY_RESULTS_UNRECORDED = Counter(
    "smtprelay_delivery_results_unrecorded_total",
    "Attempts to record delivery results the spool could not take (a full disk); the "
    "results are kept in memory and recorded once it can")

EVENTS_UNRENDERABLE = Counter(
    "smtprelay_events_unrenderable_total",
    "Event records no body could be made of, kept in data_dir/events-undelivered/"
    "<set>.<destination>.unrenderable and skipped so the stream goes on",
    ["configuration_set", "destination"])

FEEDBACK_UNMATCHED_DROPPED = Counter(
    "smtprelay_feedback_unmatched_dropped_total",
    "Unmatched feedback reports dropped, oldest first, to keep the unmatched store under "
    "feedback.unmatched_quota")

FEEDBACK_REFUSED = Counter(
    "smtprelay_feedback_refused_total",
    "Feedback listener refusals of a connection or report with a temporary reply, by "
    "reason: connections_per_ip (421), messages_per_ip (450), bytes_per_ip (452), "
    "spool_reserve (452: it would eat into store.spool_reserve), disk_full (452)",
    ["reason"])

# Set when a certificate is loaded into a listener's context (at start, at SIGHUP), so
# an alert can warn before a renewal that never happened shows up as failed handshakes.
TLS_CERTIFICATE_EXPIRY = Gauge(
    "smtprelay_tls_certificate_expiry_timestamp_seconds",
    "When the certificate in use expires (its notAfter, Unix time), by the configuration "
    "key that names its file: tls.cert_file (the SMTP listeners, and https when no "
    "tracking domain's matches) or tracking_domains.<name>.cert_file",
    ["certificate"])

WORKER_RESTARTS = Counter(
    "smtprelay_worker_restarts_total",
    "SMTP worker processes (server.workers) started again after they ended")


# What the workers' files say of these is not theirs to say: the queue and the events
# are the supervisor's (a worker only moves the gauge by its own acceptances). The
# certificates' expiry: the workers load the same files as the supervisor.
_SUPERVISOR_ONLY = frozenset({"smtprelay_spool_messages", "smtprelay_event_outbox_depth",
                              "smtprelay_configuration_sets_paused",
                              "smtprelay_tls_certificate_expiry_timestamp_seconds"})


class _WithWorkers:
    """This process's metrics, each family with the workers' samples added."""

    def __init__(self, worker_dir: Path) -> None:
        self._worker_dir = worker_dir

    def collect(self) -> Iterator[Metric]:
        collector = MultiProcessCollector(None, path=str(self._worker_dir))  # type: ignore[no-untyped-call]
        workers = {family.name: family
                   for family in collector.collect()}  # type: ignore[no-untyped-call]
        for family in REGISTRY.collect():
            theirs = workers.pop(family.name, None)
            if theirs is not None and family.name not in _SUPERVISOR_ONLY:
                family.samples.extend(
                    sample._replace(labels={**sample.labels, "process": "workers"})
                    for sample in theirs.samples)
            yield family


def exposition(worker_dir: Path | None = None) -> bytes:
    """The text /metrics answers: this process's metrics, and with `worker_dir` the
    worker processes' too."""
    if worker_dir is None:
        return generate_latest()
    return generate_latest(_WithWorkers(worker_dir))  # type: ignore[arg-type]
