"""The dashboard in a real headless Chromium against the whole stack, as a member and a
viewer would use it: submit the recipe from the form and watch the live list take it to
RUNNING, cancel it from the list, clone it with a changed flag and follow it to the end,
register its checkpoint, compare the two, create and revoke an API token. A viewer sees no
buttons and gets 403 when it posts anyway. No page may log a console error; every page is
screenshotted into the CI artifacts."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.e2e.test_jobs import jobs_stack, wait_state
from tests.monitoring.test_e2e import ARTIFACTS, CHROMIUM

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)"),
]

USERS = """
from django.contrib.auth import get_user_model
from controlplane.tenancy.models import Membership, Project, Role
default = Project.objects.get(name="default")
for name, role in (("mia", Role.MEMBER), ("vic", Role.VIEWER)):
    user = get_user_model().objects.create_user(name, password=name + "-pass-123")
    Membership.objects.create(user=user, project=default, role=role)
"""
FAST = "'6', --seq-len, '64', --micro-batch, '2', --checkpoint-every, '3', --log-every, '1'"


@pytest.fixture(scope="module")
def stack():
    for instance in jobs_stack():
        made = instance.manage("shell", "-c", USERS)
        assert made.returncode == 0, made.stderr
        yield instance


class Browser:
    """One Chromium; a page per user, each page's console errors collected."""

    def __init__(self, playwright, url: str) -> None:
        self.url = url
        self.errors: list[str] = []
        self.browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"],
        )  # fmt: skip
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def login(self, name: str):
        context = self.browser.new_context(viewport={"width": 1400, "height": 900})
        page = self.tab(context, name)
        page.goto(f"{self.url}/login/")
        page.fill("input[name=username]", name)
        page.fill("input[name=password]", f"{name}-pass-123")
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_url(f"{self.url}/")
        return page

    def tab(self, context, name: str):
        """A new page of this user's, its errors collected and its confirmations accepted."""
        page = context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"{name}: {exc}"))
        page.on(
            "console",
            lambda m: m.type == "error" and self.errors.append(f"{name}: {m.text} {m.location}"),
        )
        page.on("dialog", lambda dialog: dialog.accept())  # "Cancel job #3?": yes
        return page

    def shot(self, page, name: str) -> None:
        page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)

    def close(self) -> None:
        self.browser.close()


def wait_row(stack, page, job_id: int, state: str, timeout: float) -> None:
    """Wait for the list's row of the job to say ``state`` (no reload: it is live)."""
    cell = f"document.querySelector('tr[data-job=\"{job_id}\"] .state')?.textContent"
    try:
        page.wait_for_function(f"() => {cell} === '{state}'", timeout=timeout * 1000)
    except Exception:
        shown = page.evaluate(f"() => {cell}")
        actual = stack.api.get(f"/api/v1/jobs/{job_id}/").json()["state"]
        page.screenshot(path=str(ARTIFACTS / "dashboard-failed.png"), full_page=True)
        raise AssertionError(
            f"{page.url}: row says {shown!r}, the job is {actual}, wanted {state}"
        ) from None


def test_a_member_runs_follows_compares_and_manages_from_the_browser(stack):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = Browser(p, stack.url)
        try:
            flows(stack, chromium)
        finally:
            chromium.close()
    assert chromium.errors == []


def flows(stack, chromium: Browser) -> None:
    mia = chromium.login("mia")
    # The list, open before anything runs, is the one that must see the job arrive.
    listing = chromium.tab(mia.context, "mia")
    listing.goto(f"{stack.url}/jobs/")
    listing.wait_for_function("() => document.getElementById('conn').textContent === 'live'")

    # Submit the built-in recipe from the form.
    mia.goto(f"{stack.url}/jobs/new/")
    form = mia.locator("#recipe-form")
    form.locator("input[name=name]").fill("web-run")
    form.locator("select[name=project]").select_option("default")
    form.locator("input[name=max_steps]").fill("100000")
    form.locator("input[name=procs_per_node]").fill("1")
    form.locator("input[name=tags]").fill("ui, first")
    chromium.shot(mia, "submit")
    form.locator("button[type=submit]").click()
    mia.wait_for_url(re.compile(r".*/jobs/\d+/$"))
    first = int(mia.url.rstrip("/").split("/")[-1])

    # The list put it on top live and follows it to RUNNING without a reload.
    wait_row(stack, listing, first, "running", 90)
    assert listing.locator("#jobs tbody tr").first.get_attribute("data-job") == str(first)
    assert listing.locator(".total-count").first.text_content() == "1"  # was "0 in all"
    chromium.shot(listing, "list-running")

    # Cancel it from the list (the confirmation is accepted); the row follows.
    with listing.expect_navigation():
        listing.locator(f'tr[data-job="{first}"] button.danger').click()
    wait_row(stack, listing, first, "cancelled", 60)
    assert wait_state(stack, first, {"CANCELLED"})["state"] == "CANCELLED"

    # Clone and edit: the YAML editor holds its spec; change --max-steps and run that.
    mia.goto(f"{stack.url}/jobs/{first}/")
    mia.click("#clone")
    mia.wait_for_url("**/jobs/new/?from=*")
    spec = mia.locator("#spec").input_value()
    assert "'100000'" in spec and "tags: [ui, first]" in spec, spec
    edited = spec.replace("'100000'", FAST).replace("name: web-run", "name: web-run-short")
    mia.locator("#spec").fill(edited)
    mia.locator("#yaml-form button[type=submit]").click()
    mia.wait_for_url(re.compile(r".*/jobs/\d+/$"))
    second = int(mia.url.rstrip("/").split("/")[-1])
    assert second != first
    # Its page follows it live to the end, charts and all.
    mia.wait_for_function(
        "() => document.getElementById('state').textContent === 'succeeded'", timeout=180_000
    )
    done = stack.api.get(f"/api/v1/jobs/{second}/").json()
    assert done["args"][done["args"].index("--max-steps") + 1] == "6"
    mia.reload()
    mia.wait_for_selector("#charts .js-plotly-plot", timeout=20_000)
    assert mia.locator("#scalars tr[data-metric=loss]").count() == 1
    chromium.shot(mia, "job-succeeded")

    # Register its checkpoint as a model version.
    register = mia.locator("form.register").first
    register.locator("input[name=model]").fill("web-ckpt")
    register.locator("button[type=submit]").click()
    mia.wait_for_selector(".messages .success")
    assert "web-ckpt v1" in mia.locator(".messages").inner_text()
    models = stack.api.get("/api/v1/models/", params={"name": "web-ckpt"}).json()["results"]
    versions = stack.api.get(f"/api/v1/models/{models[0]['id']}/versions/").json()
    assert [(v["version"], v["source"]) for v in versions] == [(1, "checkpoint")]

    # Compare the two from the list's selection: specs diffed, metrics overlaid.
    mia.goto(f"{stack.url}/jobs/?tag=ui")
    for job_id in (first, second):
        mia.check(f'tr[data-job="{job_id}"] input[name=ids]')
    mia.click("#compare")
    mia.wait_for_url("**/jobs/compare/?*")
    assert sorted(re.findall(r"ids=(\d+)", mia.url)) == sorted([str(first), str(second)])
    differs = mia.locator("tr.differs").all_inner_texts()
    assert any("args" in row for row in differs) and any("name" in row for row in differs)
    mia.wait_for_selector("#charts .js-plotly-plot", timeout=20_000)
    chromium.shot(mia, "compare")

    # An API token: shown once, works, then revoked and refused.
    mia.goto(f"{stack.url}/tokens/")
    mia.fill("#create-token input[name=name]", "ci-token")
    with mia.expect_navigation():
        mia.click("#create-token button[type=submit]")
    secret = mia.locator("#token-secret").inner_text().strip()
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {secret}"}) as api:
        assert api.get("/api/v1/jobs/").status_code == 200
        mia.reload()
        assert secret not in mia.content()  # shown that once only
        with mia.expect_navigation():
            mia.locator("tr", has_text="ci-token").locator("button.danger").click()
        assert api.get("/api/v1/jobs/").status_code == 401
    chromium.shot(mia, "tokens")
    for path in ("/projects/", "/models/", "/telemetry/", "/"):
        mia.goto(f"{stack.url}{path}")
        mia.wait_for_load_state("networkidle")
    chromium.shot(mia, "models")

    # A viewer: the same pages with no buttons, and a 403 for a post made anyway.
    vic = chromium.login("vic")
    vic.goto(f"{stack.url}/jobs/")
    assert vic.locator(f'tr[data-job="{first}"]').count() == 1
    assert vic.locator("#jobs button.danger").count() == 0
    assert vic.locator("a.button", has_text="Submit a job").count() == 0
    vic.goto(f"{stack.url}/jobs/{second}/")
    assert vic.locator("#actions").count() == 0 and vic.locator("form.register").count() == 0
    chromium.shot(vic, "viewer-job")
    token = next(c["value"] for c in vic.context.cookies() if c["name"] == "csrftoken")
    posted = vic.request.post(
        f"{stack.url}/jobs/{second}/resubmit/",
        headers={"X-CSRFToken": token, "Referer": f"{stack.url}/jobs/{second}/"},
    )
    assert posted.status == 403
    assert vic.request.get(f"{stack.url}/jobs/new/").status == 403
    assert stack.api.get("/api/v1/jobs/").json()["count"] == 2  # nothing made by the viewer


def test_a_sweep_page_follows_the_sweep_live_and_charts_it(stack):
    import json

    from playwright.sync_api import sync_playwright

    from tests.e2e.test_jobs import code_archive

    body = {
        "name": "web-sweep",
        "project": "default",
        "method": "grid",
        "job": {
            "entrypoint": ["python", "quadratic.py"],
            "args": ["--steps", "4", "--step-seconds", "0.5"],
            "max_restarts": 0,
        },
        "parameters": {"lr": [0.05, 0.3, 0.2]},
        "metric": "loss",
        "max_concurrent": 3,
    }
    response = stack.api.post(
        "/api/v1/sweeps/",
        data={"sweep": json.dumps(body)},
        files={"code": ("code.tgz", code_archive(), "application/gzip")},
    )
    assert response.status_code == 201, response.text  # fmt: skip
    sweep_id = response.json()["id"]
    with sync_playwright() as p:
        chromium = Browser(p, stack.url)
        try:
            mia = chromium.login("mia")
            mia.goto(f"{stack.url}/sweeps/")
            assert mia.locator(f'tr[data-sweep="{sweep_id}"]').count() == 1
            mia.goto(f"{stack.url}/sweeps/{sweep_id}/?sort=metric")
            assert mia.locator("#cancel-form").count() == 1  # running: it can be cancelled
            # No reload: the page follows the sweep to its end and draws the three trials.
            mia.wait_for_function("() => document.body.dataset.sweepEnded === '1'",
                                  timeout=90_000)  # fmt: skip
            assert mia.locator("#state").inner_text() == "succeeded"
            assert mia.locator("#sweep-chart").get_attribute("data-drawn") == "3"
            drawn = "() => document.getElementById('sweep-chart').data.map((t) => t.type)"
            assert mia.evaluate(drawn) == ["parcoords"]
            rows = mia.locator("#trials tbody tr")
            assert rows.count() == 3 and mia.locator("#cancel-form").count() == 0
            best = mia.locator("#trials tr.best")
            assert best.get_attribute("data-trial") == "1" and rows.first.get_attribute(
                "data-trial") == "1"  # lr 0.3 converges fastest, sorted first  # fmt: skip
            mia.select_option("#chart-kind select", "lr")
            mia.wait_for_selector("#sweep-chart .scatterlayer .point")
            assert mia.evaluate(drawn) == ["scatter", "scatter"]  # the trials, the best
            chromium.shot(mia, "sweep")
        finally:
            chromium.close()
    assert chromium.errors == []
