"""guest: see README and docs/formats.md."""
