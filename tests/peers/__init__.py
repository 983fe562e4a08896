"""Real third-party peers (Postfix, ...) that tests and benchmarks run on loopback."""
