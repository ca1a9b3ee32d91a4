"""The guest's PID 1 (``init.py``), copied into the image as ``/sbin/firecracer-init``.

It is standard-library Python so that the host can import and test its pure parts (kernel-argument
parsing, the JVM command line) without a VM.
"""
