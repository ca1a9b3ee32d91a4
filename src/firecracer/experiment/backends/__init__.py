"""Backends that execute study runs (see :mod:`firecracer.experiment.backend`)."""
