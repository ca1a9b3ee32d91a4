"""uffd: see README and docs/formats.md."""
