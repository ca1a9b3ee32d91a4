"""Drive a headless Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

Used by the viewer's tests, its load benchmark and ``firecracer view --screenshot``: standard library
only (no websocket, no Playwright). Chromium reads NUL-terminated JSON messages on fd 3 and writes its
own on fd 4. Every wait has a timeout; ``close()`` (or leaving the ``with`` block) ends the browser and
removes its throw-away profile on every path.

Public API: ``find_chromium() -> str | None``, ``Browser`` (``open(url)``, ``evaluate(expr)``,
``wait_for(expr)``, ``mouse(type, x, y)``, ``click(x, y)``, ``screenshot(path)``, ``set_viewport(w, h)``,
``close()``), ``BrowserError``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from firecracer.errors import FirecracerError

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio"]


class BrowserError(FirecracerError):
    """Chromium could not be started, died, or a DevTools command failed or timed out."""


def find_chromium() -> str | None:
    """``$CHROMIUM``, else ``chromium`` / ``chromium-browser`` / ``google-chrome`` on PATH."""
    env = os.environ.get("CHROMIUM")
    if env and os.access(env, os.X_OK):
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium with one page; commands go to that page's DevTools session."""

    def __init__(self, executable: str | None = None, width: int = 1400, height: int = 900,
                 timeout: float = 60.0) -> None:
        exe = executable or find_chromium()
        if exe is None:
            raise BrowserError("no Chromium found (apt-get install chromium, or set CHROMIUM)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="fcr-chromium-")
        self._lock = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._next = 0
        self._dead: str | None = None
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        log = os.path.join(self.profile, "chromium.log")
        argv = [exe, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                f"--window-size={width},{height}", "about:blank"]
        try:
            self.pid = os.posix_spawn(exe, argv, os.environ, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
                (os.POSIX_SPAWN_DUP2, to_chrome_r, 3),
                (os.POSIX_SPAWN_DUP2, from_chrome_w, 4)], setsid=True)
        except OSError as exc:
            for fd in (to_chrome_r, from_chrome_w, self._to_chrome, self._from_chrome):
                os.close(fd)
            shutil.rmtree(self.profile, ignore_errors=True)
            raise BrowserError(f"cannot start {exe}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                os.close(to_chrome_r)
                os.close(from_chrome_w)
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()
        try:
            self.session = self._attach()
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.set_viewport(width, height)
        except BaseException:
            self.close()
            raise

    # -- transport
    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_chrome, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    self._dead = self._dead or "Chromium closed the DevTools pipe"
                    self._lock.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._lock:
                    if "id" in msg:
                        self._replies[int(msg["id"])] = msg
                    else:
                        self._events.append(msg)
                        del self._events[:-200]
                    self._lock.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False,
             timeout: float | None = None) -> dict[str, Any]:
        """One DevTools command; returns its ``result`` or raises ``BrowserError``."""
        with self._lock:
            self._next += 1
            mid = self._next
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if not browser:
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._to_chrome, view)
                view = view[n:]
        except OSError as exc:
            raise BrowserError(f"DevTools {method}: pipe write failed ({exc})") from exc
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._lock:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if self._dead:
                    raise BrowserError(f"DevTools {method}: {self._dead}")
                if left <= 0:
                    raise BrowserError(f"DevTools {method}: no answer within {timeout or self.timeout:.0f} s")
                self._lock.wait(left)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise BrowserError(f"DevTools {method}: {reply['error'].get('message', reply['error'])}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def _attach(self) -> str:
        deadline = time.monotonic() + self.timeout
        while True:
            targets = self.send("Target.getTargets", browser=True)["targetInfos"]
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                raise BrowserError("Chromium opened no page")
            time.sleep(0.05)
        res = self.send("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True},
                        browser=True)
        return str(res["sessionId"])

    # -- page
    def set_viewport(self, width: int, height: int) -> None:
        """CSS viewport size (device scale factor 1)."""
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def open(self, url: str, timeout: float | None = None) -> None:
        """Navigate and wait for the load event."""
        with self._lock:
            self._events.clear()
        res = self.send("Page.navigate", {"url": url})
        if res.get("errorText"):
            raise BrowserError(f"cannot open {url}: {res['errorText']}")
        self.wait_event("Page.loadEventFired", timeout)

    def wait_event(self, method: str, timeout: float | None = None) -> dict[str, Any]:
        """The next event named ``method`` (already received ones count)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._lock:
            while True:
                for i, ev in enumerate(self._events):
                    if ev.get("method") == method:
                        del self._events[: i + 1]
                        params: dict[str, Any] = ev.get("params", {})
                        return params
                left = deadline - time.monotonic()
                if self._dead:
                    raise BrowserError(f"waiting for {method}: {self._dead}")
                if left <= 0:
                    raise BrowserError(f"no {method} within {timeout or self.timeout:.0f} s")
                self._lock.wait(left)

    def evaluate(self, expression: str, timeout: float | None = None) -> Any:
        """Value of a JS expression (promises awaited); a thrown exception becomes ``BrowserError``."""
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in res:
            det = res["exceptionDetails"]
            text = det.get("exception", {}).get("description") or det.get("text")
            raise BrowserError(f"JS error in {expression[:60]!r}: {text}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float | None = None, interval: float = 0.05) -> Any:
        """Poll a JS expression until it is truthy; returns its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            v = self.evaluate(expression)
            if v:
                return v
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression!r} still false after {timeout or self.timeout:.0f} s")
            time.sleep(interval)

    def mouse(self, kind: str, x: float, y: float, button: str = "none", buttons: int = 0) -> None:
        """A real input event (``mouseMoved``, ``mousePressed``, ``mouseReleased``) at CSS pixels."""
        self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": button,
                                               "buttons": buttons, "clickCount": 1})

    def click(self, x: float, y: float) -> None:
        """Move, press and release the left button at (x, y)."""
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, "left", 1)
        self.mouse("mouseReleased", x, y, "left", 0)

    def screenshot(self, path: str | Path | None = None) -> bytes:
        """PNG of the viewport; also written to ``path`` when given."""
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        if path is not None:
            Path(path).write_bytes(data)
        return data

    # -- lifetime
    def close(self) -> None:
        """End Chromium (its whole process group) and remove the profile; safe to call twice."""
        pid = getattr(self, "pid", None)
        if pid:
            self.pid = 0
            with contextlib.suppress(BrowserError, OSError):
                self.send("Browser.close", browser=True, timeout=5)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)      # helpers (renderer, zygote) left in the group
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:     # until the group is gone (orphans reaped by init)
                try:
                    os.killpg(pid, 0)
                except (ProcessLookupError, PermissionError):
                    break
                time.sleep(0.02)
        if getattr(self, "_reader", None) is not None:
            self._reader.join(timeout=5)
        for fd in ("_to_chrome", "_from_chrome"):
            f = getattr(self, fd, -1)
            if f >= 0:
                setattr(self, fd, -1)
                with contextlib.suppress(OSError):
                    os.close(f)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
