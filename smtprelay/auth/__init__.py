"""Authentication: SMTP credentials (storage, password hashing, verification, lockout) and
the SES API's keys and AWS Signature Version 4."""
