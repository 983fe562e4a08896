"""SQLite for every store: connections with the relay's pragmas and versioned schemas."""
