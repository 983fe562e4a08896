"""The daemon: wiring every stage together, its lifecycle, signals and systemd."""
