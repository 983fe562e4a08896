"""The durable queue: accepted messages, per-recipient outcomes, the event outbox and
per-set statistics, in one SQLite database written with group commit.

The spool is the only durable hand-off between acceptance and delivery: a message is
acknowledged only once it is here, fsynced.
"""
