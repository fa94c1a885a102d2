import functools
import socket
import threading
from http.server import ThreadingHTTPServer

import openai
import pytest

from smoothguard import SmoothGuard
from smoothguard.server import BackgroundServer, ServerSettings, create_app
from support.server import KEY, LIMITS, QuietHandler, _Quiet, png_bytes

BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def image_host(tmp_path_factory):
    """A loopback web server with ``allowed/ok.png`` and ``secret.png``; yields its base URL."""
    folder = tmp_path_factory.mktemp("static")
    (folder / "allowed").mkdir()
    (folder / "allowed" / "ok.png").write_bytes(png_bytes(3))
    (folder / "secret.png").write_bytes(png_bytes(4))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()  # shutdown() stops serving; this closes the socket


@pytest.fixture(scope="module")
def server(tiny_llava, minilm, image_host):
    # A fixed seed (0), so that answers can be compared with the library's and across requests.
    guard = SmoothGuard(tiny_llava, sigma=0.1, num_copies=2, embedder=minilm)
    settings = ServerSettings(**LIMITS, allow_url_prefixes=(f"{image_host}allowed/",), fixed_seed=True)
    with BackgroundServer(create_app(guard, settings)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    """Three loopback endpoints: a web server with ``big.png`` (one byte over the server's body limit), a
    port bound but not listening (connections are refused) and one listening that never accepts (a
    request is sent, no answer comes: the fetch times out). Yields their base URLs."""
    folder = tmp_path_factory.mktemp("web")
    (folder / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(BODY_LIMIT - 7))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    refusing, silent = socket.socket(), socket.socket()
    refusing.bind(("127.0.0.1", 0))
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    urls = [f"http://127.0.0.1:{s.getsockname()[1]}/" for s in (httpd.socket, refusing, silent)]
    yield dict(zip(("web", "refusing", "silent"), urls, strict=True))
    httpd.shutdown()
    httpd.server_close()  # shutdown() stops serving; this closes the socket
    refusing.close()
    silent.close()


@pytest.fixture(scope="module")
def plain_server(tiny_llava, loopback):
    """An undefended server of the tiny LLaVA that fetches image URLs from the three loopback endpoints
    (0.5 s timeout) and allows sigma up to 5, past the normalized space's largest (4)."""
    settings = ServerSettings(
        max_num_copies=0,
        max_sigma=5.0,
        max_body_bytes=BODY_LIMIT,
        allow_url_prefixes=tuple(loopback.values()),
        fetch_timeout=0.5,
    )
    with BackgroundServer(create_app(SmoothGuard(tiny_llava, num_copies=0), settings)) as running:
        yield running
