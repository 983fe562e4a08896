"""Operator actions shared by the CLI and the admin API, so the two cannot drift."""
