"""smtprelay: a self-hosted sending relay, the sending side of Amazon SES as one daemon."""

__version__ = "0.1.0"
