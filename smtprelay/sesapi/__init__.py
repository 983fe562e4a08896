"""The SES API: SES v2 (REST-JSON) and v1 (Query) requests into the submission pipeline."""
