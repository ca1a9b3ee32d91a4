"""What a built image says about itself (``image.json`` beside ``rootfs.ext4``), for those who boot it.

The image's init is not ``/sbin/init``: a kernel booted without ``init=`` falls back to ``/bin/sh``
and no JVM starts. Whoever boots a firecracer image (``vm boot``, the jvm experiment backend, the
demo) adds the argument from here, so the manifest stays the one place that knows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from firecracer.errors import FormatError


def read_manifest(rootfs: str | Path) -> dict[str, Any] | None:
    """``image.json`` next to ``rootfs``, or ``None`` for images we did not build."""
    path = Path(rootfs).parent / "image.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FormatError(path, 0, f"unreadable image manifest: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != "firecracer-image":
        return None
    return data


def with_image_init(boot_args: str, rootfs: str | Path | None) -> str:
    """``boot_args`` plus ``init=`` of a firecracer image, unless the caller already chose an init."""
    if rootfs is None or any(a.startswith("init=") for a in boot_args.split()):
        return boot_args
    m = read_manifest(rootfs)
    init = m.get("init") if m else None
    return f"{boot_args} init={init}".strip() if isinstance(init, str) and init else boot_args
