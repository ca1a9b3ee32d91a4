"""Serve a written report over HTTP on loopback (``firecracer view --serve``).

Only 127.0.0.1 by default, only the report's directory, read-only (``http.server``'s GET/HEAD).
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from types import TracebackType

from firecracer.errors import FirecracerError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Library code never prints."""


class ReportServer:
    """An HTTP server for one directory, on a background thread; ``url`` points at the report."""

    def __init__(self, report: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.report = Path(report).resolve()
        handler = functools.partial(_QuietHandler, directory=str(self.report.parent))
        try:
            self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise FirecracerError(f"cannot serve on {host}:{port} ({exc.strerror or exc}); pick another "
                                  "--port, or 0 for any free one") from None
        self.httpd.daemon_threads = True
        h, p = self.httpd.server_address[:2]
        self.url = f"http://{h!s}:{p}/{self.report.name}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="report-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ReportServer:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
