"""The SMTP submission side: listeners, sessions, address syntax and the reply texts."""
