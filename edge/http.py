"""The gateway's HTTP endpoint: /metrics, /healthz, /api/status and the status page.

How this works: a stdlib ``ThreadingHTTPServer`` in a daemon thread, one
short-lived thread per request. It owns no state: every answer comes from the
callables it is given (the service renders metrics, judges health and builds
the status document), so the server knows nothing of logs or bridges. The
status page is static HTML, CSS and JavaScript from ``edge/status_page/``,
served from the package, with no CDN: it works on a site without internet.

:class:`SampleRing` is the server-side history the page's charts draw: one
sample a second, the last 15 minutes by default, so a page opened late still
shows the recent past.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import threading
from collections import deque
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["StatusServer", "SampleRing", "STATIC_DIR", "METRICS_CONTENT_TYPE"]

log = logging.getLogger("tidegate.http")

STATIC_DIR = Path(__file__).with_name("status_page")
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SampleRing:
    """A bounded history of samples (dicts of numbers with a time), oldest dropped first.

    Thread-safe. Args:
        size: samples kept (900 = 15 minutes at one a second).
    """

    def __init__(self, size: int = 900) -> None:
        self._samples: deque[dict[str, float]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, sample: Mapping[str, float]) -> None:
        with self._lock:
            self._samples.append(dict(sample))

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)

    def latest(self) -> dict[str, float] | None:
        with self._lock:
            return dict(self._samples[-1]) if self._samples else None

    def columns(self) -> dict[str, list[float]]:
        """The history as one list per key (what a chart wants), oldest first."""
        with self._lock:
            samples = list(self._samples)
        keys: list[str] = []
        for sample in samples:
            for key in sample:
                if key not in keys:
                    keys.append(key)
        return {key: [sample.get(key, 0.0) for sample in samples] for key in keys}


class _Handler(BaseHTTPRequestHandler):
    server_version = "tidegate"
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, head: bool = False,
              extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, document: object, head: bool) -> None:
        body = json.dumps(document, separators=(",", ":"), default=str).encode()
        self._send(status, body, "application/json", head)

    def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's name
        self._route(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._route(head=False)

    def _route(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        app = self.server.app
        try:
            if path == "/metrics":
                self._send(200, app.metrics_text().encode(), METRICS_CONTENT_TYPE, head)
            elif path == "/healthz":
                healthy, detail = app.health()
                self._json(200 if healthy else 503, {"healthy": healthy, **detail}, head)
            elif path == "/api/status":
                self._json(200, app.status(), head)
            elif path in ("/", "/index.html"):
                self._static("index.html", head)
            elif path.startswith("/static/"):
                self._static(path[len("/static/"):], head)
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", head)
        except BrokenPipeError:
            pass
        except Exception as exc:  # one bad request must not take the endpoint down
            log.exception("HTTP %s failed", path)
            self._send(500, f"internal error: {exc}\n".encode(), "text/plain; charset=utf-8", head)

    def _static(self, name: str, head: bool) -> None:
        root = self.server.app.static_dir.resolve()
        target = (root / name).resolve()
        if root not in target.parents or not target.is_file():
            self._send(404, b"not found\n", "text/plain; charset=utf-8", head)
            return
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        self._send(200, target.read_bytes(), content_type, head)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: StatusServer) -> None:
        self.app = app
        super().__init__(address, _Handler)


class StatusServer:
    """Serves the gateway's HTTP endpoint from a background thread.

    Args:
        host: address to listen on.
        port: TCP port; 0 picks a free one (see :attr:`port`).
        metrics_text: renders /metrics (Prometheus text).
        health: returns (healthy, details) for /healthz (200 or 503).
        status: returns the /api/status document.
        static_dir: the status page's files.

    Raises:
        OSError: the address cannot be bound (port in use, no permission).
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics_text: Callable[[], str],
        health: Callable[[], tuple[bool, dict[str, Any]]],
        status: Callable[[], dict[str, Any]],
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self.metrics_text = metrics_text
        self.health = health
        self.status = status
        self.static_dir = static_dir
        self._server = _Server((host, port), self)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="tidegate-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

