"""Browser fixtures: Debian's chromium driven by Playwright's Python API, and web pages served
on origins of their own (a port each on 127.0.0.1), to test what a browser allows cross-origin."""

import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.async_api import Browser, async_playwright


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run bin/test, or .venv/bin/vdip stack browser"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        await launched.close()


WebSite = Callable[[str], str]


@pytest.fixture
def web_site() -> Iterator[WebSite]:
    """``web_site(html)`` serves ``html`` at ``/`` of a new origin (``http://127.0.0.1:PORT``),
    which it returns; every site stops at the end of the test."""
    servers: list[ThreadingHTTPServer] = []

    def serve(html: str) -> str:
        body = html.encode()

        class Page(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
