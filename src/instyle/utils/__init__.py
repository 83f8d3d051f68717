"""Small shared helpers (config validation, atomic file writes, devices)."""
