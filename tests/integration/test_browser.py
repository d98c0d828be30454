"""The web client in a real browser (Debian's chromium, headless) on the local stack.

What a user does and sees: sign in, upload, create the job, watch its progress, see the result
(the inpainted image's pixels, the transcript); a second user whom the rules stop from reading
the first user's job; cancel from the page.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from devkit.firebase_auth import new_email
from devkit.webapp import WebApp, browser, chromium_path
from infra.localstack.stack import LocalStack

pytestmark = pytest.mark.pipelines("inpaint", "transcribe", "flaky")

if chromium_path() is None and os.environ.get("GPU_JOBS_REQUIRE_TOOLS") != "1":
    pytest.skip(
        "chromium is not installed (scripts/setup.sh installs it: apt-get install chromium)",
        allow_module_level=True,
    )

BLUE, RED = (30, 60, 200), (230, 20, 20)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


@pytest.fixture
def app(chromium: Any, stack: LocalStack) -> Iterator[WebApp]:
    context = chromium.new_context()
    web = WebApp(context.new_page(), stack.env["WEB_URL"]).open()
    yield web
    assert web.errors == [], web.errors
    context.close()


def red_square(tmp: Path) -> tuple[Path, Path]:
    """A blue picture with a red square in the middle, and the mask that marks the square."""
    image = Image.new("RGB", (96, 96), BLUE)
    mask = Image.new("L", (96, 96), 0)
    for x in range(36, 60):
        for y in range(36, 60):
            image.putpixel((x, y), RED)
            mask.putpixel((x, y), 255)
    image.save(tmp / "photo.png")
    mask.save(tmp / "mask.png")
    return tmp / "photo.png", tmp / "mask.png"


def test_sign_in_upload_watch_and_see_the_inpainted_image(app: WebApp, tmp_path: Path) -> None:
    started = time.perf_counter()
    uid = app.sign_up(new_email())
    assert uid and uid in (app.page.text_content("#whoami") or "")
    photo, mask = red_square(tmp_path)
    job_id = app.run("inpaint", photo, mask=mask)
    assert app.wait_final(timeout=60) == "succeeded", app.error
    app.wait_result_image()
    elapsed = time.perf_counter() - started
    assert "running" in app.statuses_seen or "queued" in app.statuses_seen, app.statuses_seen
    assert app.progress == 1.0
    r, g, b = app.image_pixel(0.5, 0.5)  # where the red square was
    assert b > 150 and r < 100, (r, g, b)
    assert app.image_pixel(0.1, 0.1) == BLUE  # outside the mask: the original's pixels
    assert app.listed()[job_id] == "succeeded"
    print(f"browser round trip (sign-up -> upload -> create -> result): {elapsed:.2f}s")


def test_an_anonymous_user_sees_the_transcript_and_a_player(app: WebApp, media_dir: Path) -> None:
    from devkit.speech import synthesize

    wav = synthesize(
        "Please send the quarterly report to the finance team.", media_dir / f"web-{uuid.uuid4().hex[:6]}.wav"
    )
    app.sign_in_anonymously()
    app.run("transcribe", wav)
    assert app.wait_final(timeout=60) == "succeeded", app.error
    app.page.wait_for_selector("#transcript:not([hidden])")
    assert "quarterly report" in app.transcript.lower()
    # The transcript comes with the job; the player waits for the results' signed URLs (an API
    # call after the transcript is shown), so it may appear a moment later.
    app.page.wait_for_selector("#player", state="visible", timeout=15_000)


def test_another_user_cannot_read_the_job(chromium: Any, stack: LocalStack, app: WebApp) -> None:
    app.sign_up(new_email())
    job_id = app.run("flaky", inputs={"steps": 2})
    assert app.wait_final() == "succeeded"

    other = WebApp(chromium.new_context().new_page(), stack.env["WEB_URL"]).open()
    other.sign_up(new_email())
    other.open_job(job_id)
    assert other.wait_final() == "unreadable"
    assert "permission-denied" in other.error
    assert job_id not in other.listed()
    # The same user in a fresh page reads it.
    app.open_job(job_id)
    assert app.wait_final() == "succeeded"


def test_sign_in_again_and_cancel_from_the_page(chromium: Any, stack: LocalStack, app: WebApp) -> None:
    email = new_email()
    app.sign_up(email)
    app.page.click("#signout")
    app.page.wait_for_selector("#signin-panel:not([hidden])")
    app.sign_in(email)
    job_id = app.run("flaky", inputs={"steps": 400, "step_seconds": 0.05})
    app.wait_status("running", timeout=30)
    app.cancel_in_list(job_id)
    assert app.wait_final(timeout=30) == "cancelled"
    app.page.wait_for_function(
        "id => document.querySelector(`#jobs li[data-job-id='${id}'] .status`).textContent === 'cancelled'",
        arg=job_id,
    )
    assert app.page.query_selector(f"#jobs li[data-job-id='{job_id}'] button.cancel") is None


def test_the_rules_refuse_a_job_document_they_do_not_allow(app: WebApp) -> None:
    # A pipeline name outside the rules' pattern: the SDK's write is refused in the browser.
    app.sign_up(new_email())
    app.page.evaluate("() => document.querySelector('#pipeline').add(new Option('Not-A-Pipeline'))")
    app.page.select_option("#pipeline", "Not-A-Pipeline")
    app.page.click("#submit")
    app.page.wait_for_function("() => document.querySelector('#notice').textContent")
    assert "permission-denied" in app.notice
    assert app.listed() == {}
