"""Headless Chromium (Debian's) signed in to a bench stack as its admin, for the benches
that time pages."""

from __future__ import annotations

import shutil


def signed_in_page(playwright, stack, profile: str, admin_password: str, **options):
    """``(browser, page)``: a persistent-profile Chromium and a page signed in as admin."""
    browser = playwright.chromium.launch_persistent_context(
        profile, executable_path=shutil.which("chromium"), headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync"],
        **options,
    )  # fmt: skip
    page = browser.new_page()
    page.goto(f"{stack.url}/login/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", admin_password)
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(f"{stack.url}/")
    return browser, page
