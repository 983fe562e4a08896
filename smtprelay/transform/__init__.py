"""What the relay changes in an accepted message before it is spooled: trace fields
and hygiene, click and open tracking (in worker processes), one-click unsubscribe and,
last, the DKIM signature.
"""
