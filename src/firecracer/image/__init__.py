"""image: see README and docs/formats.md."""
