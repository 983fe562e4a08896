"""SMTP authentication: credential storage, password hashing, verification and lockout."""
