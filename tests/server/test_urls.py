"""Image URLs and ``--allow-url-prefix``: every URL is normalised before it is checked, and the normal form
is what gets fetched. Against a real uvicorn server and two loopback image hosts that log every path they
are asked for, so a refused URL is shown to fetch nothing."""

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from smoothguard import ConfigError, SmoothGuard
from smoothguard.server import BackgroundServer, ServerSettings, create_app
from smoothguard.server.urls import UrlPrefix, UrlRefused, normalize_url
from support.server import error_of, image_part, png_bytes, post, user


class ImageHost:
    """A loopback static web server over ``folder`` that records the path of every request."""

    def __init__(self, folder) -> None:
        self.paths: list[str] = []
        host = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                host.paths.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """Two image hosts over the same files: img/ok.png, img/sub/, imgX/ok.png, pics/ok.png, picsX/ok.png,
    secret.png."""
    folder = tmp_path_factory.mktemp("static")
    for name in ("img", "img/sub", "imgX", "pics", "picsX"):
        (folder / name).mkdir()
    for name in ("img/ok.png", "imgX/ok.png", "pics/ok.png", "picsX/ok.png", "secret.png"):
        (folder / name).write_bytes(png_bytes(len(name)))
    running = [ImageHost(folder), ImageHost(folder)]
    for host in running:
        host.thread.start()
    yield running
    for host in running:
        host.httpd.shutdown()
        host.httpd.server_close()  # shutdown() stops serving; this closes the socket


@pytest.fixture(scope="module")
def server(tiny_llava, hosts):
    allowed, _ = hosts
    guard = SmoothGuard(tiny_llava, num_copies=0)
    # "/img/" with its slash, "/pics" without: both mean "under that segment".
    prefixes = (f"{allowed.base}/img/", f"{allowed.base}/pics")
    settings = ServerSettings(max_num_copies=0, default_max_new_tokens=2, allow_url_prefixes=prefixes)
    with BackgroundServer(create_app(guard, settings)) as running:
        yield running


def ask_url(server, url):
    return post(server.url, {"messages": user("Hi", image_part(url))})


REFUSED = {
    "dot-dot": "{A}/img/../secret.png",
    "dot-dot above the root": "{A}/img/../../secret.png",
    "encoded dot-dot": "{A}/img/%2e%2e/secret.png",
    "mixed-case encoded dot-dot": "{A}/img/%2E%2e/secret.png",
    "encoded dot-dot, encoded slash": "{A}/img/%2e%2e%2fsecret.png",
    "encoded slash": "{A}/img/..%2fsecret.png",
    "double-encoded dot-dot": "{A}/img/%252e%252e/secret.png",
    "dot-dot with a parameter": "{A}/img/..;/secret.png",
    "three dots": "{A}/img/.../secret.png",
    "fullwidth dots": "{A}/img/%EF%BC%8E%EF%BC%8E/secret.png",
    "empty segment": "{A}/img//ok.png",
    "empty segment then dot-dot": "{A}/img/sub//../../secret.png",
    "leading double slash": "{A}//img/ok.png",
    "backslash": "{A}/img/..\\secret.png",
    "backslash before the host": "{A}\\@127.0.0.1/img/ok.png",
    "encoded backslash": "{A}/img/..%5csecret.png",
    "encoded backslash, upper case": "{A}/img/..%5Csecret.png",
    "NUL": "{A}/img/ok.png%00",
    "newline": "{A}/img/\nok.png",
    "tab": "{A}/i\tmg/ok.png",
    "space": "{A}/img/ok.png ",
    "userinfo": "http://user:pass@127.0.0.1:{PA}/img/ok.png",
    "host as userinfo": "{A}@127.0.0.1:{PB}/img/ok.png",
    "other port": "{B}/img/ok.png",
    "other host": "http://localhost:{PA}/img/ok.png",
    "other scheme": "https://127.0.0.1:{PA}/img/ok.png",
    "prefix of a segment (with slash)": "{A}/imgX/ok.png",
    "prefix of a segment (no slash)": "{A}/picsX/ok.png",
    "bad escape": "{A}/img/%zz.png",
    "bad port": "http://127.0.0.1:+{PA}/img/ok.png",
    "numeric host form": "http://2130706433:{PA}/img/ok.png",
    "invalid IPv6 host": "http://[::g]:{PA}/img/ok.png",
}


def _url(template: str, hosts) -> str:
    a, b = hosts
    return template.format(A=a.base, B=b.base, PA=a.port, PB=b.port)


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_urls_fetch_nothing(server, hosts, case):
    for host in hosts:
        host.paths.clear()
    response = ask_url(server, _url(REFUSED[case], hosts))
    error = error_of(response)
    assert (response.status_code, error["code"]) == (422, "image_url_not_allowed"), error
    assert error["param"] == "messages[0].content[1]" and "data: URI" in error["message"]
    assert hosts[0].paths == [] and hosts[1].paths == []


@pytest.mark.parametrize(
    ("template", "fetched"),
    [
        ("{A}/img/ok.png", "/img/ok.png"),
        ("{A}/pics/ok.png", "/pics/ok.png"),
        ("{A}/img/sub/../ok.png", "/img/ok.png"),  # resolved, and the resolved URL is the one fetched
        ("{A}/img/./ok.png#fragment", "/img/ok.png"),
        ("HTTP://127.0.0.1:{PA}/img/%6Fk.png", "/img/ok.png"),  # scheme case, an escape of a plain letter
        ("{A}/img/ok.png?size=small", "/img/ok.png?size=small"),
    ],
)
def test_allowed_urls_are_fetched_in_normal_form(server, hosts, template, fetched):
    hosts[0].paths.clear()
    response = ask_url(server, _url(template, hosts))
    assert response.status_code == 200, response.text
    assert hosts[0].paths == [fetched] and hosts[1].paths == []


def test_normal_form():
    assert normalize_url("HTTP://Example.ORG:80/a/./b/../c%41?q=1#f").url == "http://example.org/a/cA?q=1"
    assert normalize_url("https://example.org:443").url == "https://example.org/"
    assert normalize_url("http://[0:0::1]:8080/x").url == "http://[::1]:8080/x"
    assert normalize_url("http://bücher.example/x").url == "http://xn--bcher-kva.example/x"
    assert normalize_url("http://h/a%20b/c/").url == "http://h/a%20b/c/"
    assert normalize_url("http://h/a/..").url == "http://h/"


def test_prefixes_match_by_origin_and_segments():
    prefix = UrlPrefix.parse("http://example.org/img/")
    assert prefix.matches(normalize_url("http://EXAMPLE.org:80/img/cat.png"))
    assert prefix.matches(normalize_url("http://example.org/img/a/b/../cat.png"))
    assert prefix.matches(normalize_url("http://example.org/img"))
    for other in (
        "http://example.org/imgX/cat.png",
        "http://example.org/im/cat.png",
        "http://example.org/cat.png",
        "http://example.org:8080/img/cat.png",
        "https://example.org/img/cat.png",
        "http://example.org./img/cat.png",
        "http://sub.example.org/img/cat.png",
        "http://example.org/img/../cat.png",
    ):
        assert not prefix.matches(normalize_url(other)), other
    assert UrlPrefix.parse("https://example.org/").matches(normalize_url("https://example.org/any/path.png"))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/x",
        "http:/x",
        "http://:80/x",
        "http://h:0/x",
        "http://h:99999/x",
        "http://h%2e/x",
        "http://[::g]/x",
        "http://h/a%ff",
        "http://h/a\u200b",
        "http://h/.. /x",
        "http://h/" + "a" * 9000,
    ],
)
def test_malformed_urls_are_refused(url):
    with pytest.raises(UrlRefused):
        normalize_url(url)


@pytest.mark.parametrize(
    "prefix", ["http://h", "http://h/img/?q", "http://h/img/#f", "http://h/a/../img/", "http://u@h/img/", "ftp://h/"]
)
def test_bad_prefixes_are_config_errors(prefix):
    with pytest.raises(ConfigError, match="URL prefix"):
        ServerSettings(allow_url_prefixes=(prefix,))
