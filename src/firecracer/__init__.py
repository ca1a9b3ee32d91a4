"""firecracer: study a JVM across a Firecracker microVM snapshot and restore.

The package is split by pipeline stage (``vmm``, ``uffd``, ``image``, ``guest``, ``analysis``,
``viz``, ``experiment``); ``cli`` is a thin layer over them. Library code never prints.
"""

__version__ = "0.1.0"
