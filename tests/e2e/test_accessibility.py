"""WCAG 2.1 AA on every page in both themes, checked by axe-core (from the npm registry,
through the dashboard's lockfile) in a real browser; and the keyboard path through a page."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from devstack import Stack

import signalfire.gateway
from tests.e2e.test_dashboard import token
from tests.e2e.test_screenshots import PAGES, scene  # noqa: F401 - the fixture

AXE = Path(signalfire.gateway.__file__).with_name("web") / "node_modules" / "axe-core" / "axe.min.js"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("chromium") is None, reason="needs Debian's chromium (make provision-test)"
    ),
    pytest.mark.skipif(not AXE.exists(), reason="needs the dashboard's npm packages (make provision)"),
]


def signed_in(browser: Any, running: Stack, theme: str) -> Any:
    # bypass_csp only so the test can inject axe; the dashboard itself runs under its CSP.
    page = browser.new_page(viewport={"width": 1280, "height": 860}, color_scheme=theme, bypass_csp=True)
    page.goto(running.gateway_url + "/")
    page.fill("#token", token(running))
    page.click("button[type=submit]")
    page.wait_for_selector("#live.on", timeout=10_000)
    return page


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_page_meets_wcag_21_aa(browser: Any, running: Stack, scene: dict[str, str], theme: str) -> None:  # noqa: F811
    page = signed_in(browser, running, theme)
    found: list[str] = []
    for name, path, ready in PAGES:
        page.evaluate(f"location.hash = {path.format(**scene)!r}")
        page.wait_for_selector(ready, timeout=10_000)
        page.wait_for_timeout(300)
        page.add_script_tag(path=str(AXE))
        result = page.evaluate(
            """async () => await axe.run(document, {
                runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
            })"""
        )
        for violation in result["violations"]:
            targets = [" ".join(node["target"]) for node in violation["nodes"][:3]]
            found.append(
                f"{name}: {violation['id']} ({violation['impact']}): {violation['help']} at {targets}"
            )
    page.close()
    assert not found, "\n".join(found)


def test_the_keyboard_reaches_the_skip_link_and_the_navigation(browser: Any, running: Stack) -> None:
    page = signed_in(browser, running, "light")
    # A returning user: the token is remembered, the page loads signed in.
    page.reload()
    page.wait_for_selector("#live.on", timeout=10_000)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    # Past the skip link the focus moves into the page, with a visible focus ring.
    focused = page.evaluate(
        "(() => { const e = document.activeElement; const s = getComputedStyle(e);"
        " return [e.closest('main') !== null, s.outlineStyle !== 'none' || s.boxShadow !== 'none']; })()"
    )
    assert focused == [True, True]
    page.close()
