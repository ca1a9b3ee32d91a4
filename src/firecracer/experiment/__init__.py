"""experiment: see README and docs/formats.md."""
