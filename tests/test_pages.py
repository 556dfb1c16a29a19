"""The pages tokend serves (/login, /account): headers, nothing inline, language, the
provider buttons, the return_to rule, and the strings the page scripts use."""

from __future__ import annotations

import itertools
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from service.pages import LANGUAGES, negotiate, strings
from service.pages.returnto import safe_return_to
from service.settings import Settings
from tests.conftest import ClientFactory

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "service" / "static"
PAGES = ("/login", "/account")
SCRIPTS = {"/login": "login.js", "/account": "account.js"}
CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
PROVIDERS = json.dumps(
    {
        name: {"issuer": "https://idp.example", "client_id": "tokend", "client_secret": "s"}
        for name in ("google", "corp-sso")
    }
)


class Page(HTMLParser):
    """Every start tag of a page, with its attributes, and the config block's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.config_text = ""
        self.text: list[str] = []
        self._in_config = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        self._in_config = tag == "script" and attributes.get("id") == "tokend-config"

    def handle_endtag(self, tag: str) -> None:
        self._in_config = False

    def handle_data(self, data: str) -> None:
        if self._in_config:
            self.config_text += data
        else:
            self.text.append(data)

    @property
    def config(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.config_text)
        return value

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [
            a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())
        ]


async def fetch(client: TestClient[Any, Any], path: str, **headers: str) -> tuple[Any, Page]:
    resp = await client.get(path, headers=headers)
    assert resp.status == 200, await resp.text()
    page = Page()
    page.feed(await resp.text())
    return resp, page


@pytest.mark.parametrize("path", PAGES)
async def test_a_page_is_html_with_the_security_headers(
    make_client: ClientFactory, path: str
) -> None:
    client = await make_client()
    resp, page = await fetch(client, path)
    assert resp.content_type == "text/html"
    assert resp.headers["Content-Security-Policy"] == CSP
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert any("Accept-Language" in v for v in resp.headers.getall("Vary"))
    assert resp.headers["Content-Language"] in LANGUAGES
    assert page.find("main"), "the page has a main landmark"


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("lang", LANGUAGES)
async def test_nothing_in_a_page_is_inline(
    make_client: ClientFactory, path: str, lang: str
) -> None:
    client = await make_client(TOKEND_OIDC_PROVIDERS=PROVIDERS)
    _, page = await fetch(client, f"{path}?lang={lang}")
    scripts = page.find("script")
    assert {a.get("src") for a in scripts if a.get("src")} == {f"/static/{SCRIPTS[path]}"}
    for attrs in scripts:
        assert attrs.get("src") or attrs.get("type") == "application/json", attrs
        if attrs.get("src"):
            assert attrs.get("type") == "module"
    assert not page.find("style")
    for tag, attrs in page.tags:
        assert "style" not in attrs, (tag, attrs)
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        for name in ("href", "src", "action"):
            value = attrs.get(name) or ""
            assert not value.lower().startswith(("javascript:", "http:", "https:", "//")), value
    assert [a.get("href") for a in page.find("link")] == ["/static/pages.css"]


@pytest.mark.parametrize(
    ("accept", "query", "lang"),
    [
        ("ko-KR,ko;q=0.9,en;q=0.8", "", "ko"),
        ("ko", "", "ko"),
        ("en-US,en;q=0.9", "", "en"),
        ("fr-FR,fr;q=0.9", "", "en"),
        ("", "", "en"),
        ("en;q=0.5, ko;q=0.8", "", "ko"),
        ("ko;q=0, en;q=0.1", "", "en"),
        ("ko", "?lang=en", "en"),
        ("en", "?lang=ko", "ko"),
        ("ko", "?lang=xx", "ko"),
    ],
)
async def test_the_language_follows_accept_language_and_lang(
    make_client: ClientFactory, accept: str, query: str, lang: str
) -> None:
    client = await make_client()
    for path in PAGES:
        headers = {"Accept-Language": accept} if accept else {}
        resp, page = await fetch(client, path + query, **headers)
        assert page.find("html") == [{"lang": lang}]
        assert resp.headers["Content-Language"] == lang
        assert page.config["lang"] == lang
    _, page = await fetch(client, "/login" + query, **headers)
    text = " ".join(page.text)
    assert strings(lang)["username_label"] in text
    assert strings(lang)["password_label"] in text
    if lang == "ko":
        assert "사용자 이름" in text and "비밀번호" in text
    _, page = await fetch(client, "/account" + query, **headers)
    text = " ".join(page.text)
    assert strings(lang)["sign_out_others"] in text
    expected = {"en": "Sign out all other devices", "ko": "다른 모든 기기에서 로그아웃"}[lang]
    assert expected in text


def test_negotiation_rules() -> None:
    assert negotiate(None) == "en"
    assert negotiate("*") == "en"
    assert negotiate("ko-KR") == "ko"
    assert negotiate("en, ko") == "en"  # equal q: the first wins
    assert negotiate("ko;q=0.5, en;q=0.5") == "ko"
    assert negotiate("en;q=bad, ko;q=0.1") == "ko"  # a malformed q counts as 0
    assert negotiate("ko;q=2") == "en"  # out of range: ignored
    assert negotiate("ko", "en") == "en"


async def test_the_login_page_has_the_form_the_browser_tests_use(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    _, page = await fetch(client, "/login")
    assert page.find("form", id="login-form")
    assert page.find("input", name="username", id="username")
    assert page.find("input", name="password", type="password", id="password")
    assert page.find("label", **{"for": "username"}) and page.find("label", **{"for": "password"})
    assert page.find("button", type="submit")
    assert page.find("div", id="login-error", role="alert")
    assert not page.find("button", **{"data-provider": "google"})
    assert page.config["providers"] == []


async def test_one_button_per_configured_provider(make_client: ClientFactory) -> None:
    client = await make_client(TOKEND_OIDC_PROVIDERS=PROVIDERS)
    for lang, label in (("en", "Continue with {}"), ("ko", "{} 계정으로 계속하기")):
        resp = await client.get(f"/login?lang={lang}")
        html = await resp.text()
        page = Page()
        page.feed(html)
        for name in ("google", "corp-sso"):
            (button,) = page.find("button", **{"data-provider": name})
            assert button["type"] == "button"
            assert f'data-provider="{name}">{label.format(name)}</button>' in html
        assert page.config["providers"] == ["google", "corp-sso"]


async def test_the_account_page_has_what_the_browser_tests_use(
    make_client: ClientFactory,
) -> None:
    client = await make_client(TOKEND_OIDC_PROVIDERS=PROVIDERS)
    _, page = await fetch(client, "/account")
    assert page.find("ul", id="sessions")
    assert page.find("button", id="sign-out-others", type="button")
    assert page.find("button", id="sign-out-everywhere", type="button")
    assert page.find("form", id="password-form")
    for name in ("current_password", "new_password"):
        (field,) = page.find("input", name=name, type="password")
        assert page.find("label", **{"for": field["id"] or ""})
    assert page.find("ul", id="identities")
    assert page.config["providers"] == ["google", "corp-sso"]
    headings = [int(t[1]) for t, _ in page.tags if re.fullmatch(r"h[1-6]", t)]
    assert headings[0] == 1 and all(b - a <= 1 for a, b in itertools.pairwise(headings))


HOSTILE = [
    "https://evil.example/account",
    "//evil.example/account",
    "/\\evil.example",
    "/\t/evil.example",
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    "data:text/html,hi",
    "https://user@127.0.0.1:8080/account",
    "https://127.0.0.1:8080.evil.example/",
    "http://app.example.com.evil.example/",
    "evil.example",
]


@pytest.mark.parametrize("hostile", HOSTILE)
async def test_a_hostile_return_to_is_not_put_in_the_page(
    make_client: ClientFactory, hostile: str
) -> None:
    client = await make_client(TOKEND_ALLOWED_ORIGINS="https://app.example.com")
    resp = await client.get("/login", params={"return_to": hostile})
    html = await resp.text()
    page = Page()
    page.feed(html)
    assert page.config["returnTo"] == "/account"
    assert "evil" not in html and "javascript" not in html.lower() and "alert(" not in html


@pytest.mark.parametrize(
    "allowed",
    [
        "/account",
        "/account?tab=sessions",
        "https://app.example.com/after",
        "http://127.0.0.1:8080/x",
    ],
)
async def test_an_allowed_return_to_is_kept(make_client: ClientFactory, allowed: str) -> None:
    client = await make_client(
        TOKEND_ALLOWED_ORIGINS="https://app.example.com", TOKEND_ISSUER="http://127.0.0.1:8080"
    )
    _, page = await fetch(client, f"/login?return_to={_quote(allowed)}")
    assert page.config["returnTo"] == allowed
    links = [a.get("href") or "" for a in page.find("a", hreflang="ko")]
    assert links and "return_to=" in links[0]


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def test_the_return_to_rule_follows_the_oidc_return_to_list() -> None:
    settings = Settings.from_env({"TOKEND_OIDC_RETURN_TO": "https://spa.example.com/done"})
    assert safe_return_to("https://spa.example.com/done?x=1", settings)
    assert safe_return_to("https://spa.example.com/other", settings) is None
    assert safe_return_to("/x" + "a" * 3000, settings) is None


async def test_the_config_cannot_end_its_script_block(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.get("/login", params={"return_to": "/</script><script>x()</script>"})
    html = await resp.text()
    assert html.count("</script>") == 2  # the config block's and the module's
    page = Page()
    page.feed(html)
    assert page.config["returnTo"] == "/</script><script>x()</script>"  # a path here: harmless


@pytest.mark.parametrize(
    ("env", "cookie"), [({}, False), ({"TOKEND_REFRESH_COOKIE": "true"}, True)]
)
async def test_the_config_says_whether_cookie_mode_is_on(
    make_client: ClientFactory, env: dict[str, str], cookie: bool
) -> None:
    client = await make_client(**env)
    for path in PAGES:
        _, page = await fetch(client, path)
        assert page.config["cookie"] is cookie


# --- the static files and the strings the scripts use -----------------------------------

_KEY = re.compile(r"""\bt\(\s*['"]([a-z_]+)['"]""")


def test_the_strings_have_the_same_keys_in_every_language() -> None:
    keys = {lang: set(strings(lang)) for lang in LANGUAGES}
    assert keys["en"] == keys["ko"]
    for lang in LANGUAGES:
        assert all(isinstance(v, str) and v.strip() for v in strings(lang).values())
        # every placeholder of the English string is in the translation too
        for key, text in strings("en").items():
            assert set(re.findall(r"\{\w+\}", text)) == set(
                re.findall(r"\{\w+\}", strings(lang)[key])
            ), (lang, key)


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("lang", LANGUAGES)
async def test_every_string_a_page_script_uses_is_in_its_config(
    make_client: ClientFactory, path: str, lang: str
) -> None:
    script = STATIC / SCRIPTS[path]
    used = set(_KEY.findall(script.read_text()))
    assert used, f"{script.name} uses no strings?"
    client = await make_client()
    _, page = await fetch(client, f"{path}?lang={lang}")
    missing = used - set(page.config["strings"])
    assert not missing, f"{script.name} uses {sorted(missing)}, not in the {lang} config"


@pytest.mark.parametrize("name", ["login.js", "account.js", "pages.css"])
def test_the_page_files_exist_and_load_nothing_from_elsewhere(name: str) -> None:
    text = (STATIC / name).read_text()
    assert not re.search(r"https?://|//cdn|@import", text)
    if name.endswith(".js"):
        imports = re.findall(r"""^import .* from ['"]([^'"]+)['"]""", text, re.MULTILINE)
        assert imports == ["/static/tokend-client.js"]
        assert not re.search(r"\beval\(|new Function\(|innerHTML|insertAdjacentHTML", text)
