"""``python -m firecracer`` runs the CLI."""

from firecracer.cli import main

if __name__ == "__main__":
    main()
