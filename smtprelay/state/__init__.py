"""State that every worker process must agree on: send rates and 24-hour quotas (and,
as they move here, AUTH lockouts and connection counts), behind one interface
(state.api.SharedState) with a local backend for one machine (state.local, served to
worker processes by state.service) that a Redis backend can replace for several nodes.
"""
