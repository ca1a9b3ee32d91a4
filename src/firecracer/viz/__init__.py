"""viz: see README and docs/formats.md."""
