"""analysis: see README and docs/formats.md."""
