"""Outbound delivery: MX resolution, the SMTP client, scheduling, retries and bounces."""
