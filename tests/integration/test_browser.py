"""The web client in a real browser (Debian's chromium, headless) on the local stack.

What a user does and sees: sign in, fill the job form (built from GET /v1/pipelines), upload,
create the job, watch its progress, see the result (the inpainted image's pixels, the
transcript); a second user whom the rules stop from reading the first user's job; cancel from
the page.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from devkit.firebase_auth import new_email, sign_up
from devkit.webapp import FINAL, WebApp, browser, chromium_path
from infra.client import Client
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


#: what the form sets, per pipeline of the test stack, through its controls (a pipeline not named
#: here runs with its required file fields only), and which sample file goes to which file field
FORM_VALUES: dict[str, dict[str, Any]] = {
    "inpaint": {"output_format": "png", "steps": 4, "prompt": "a blue wall"},
    "transcribe": {"language": "en", "beam_size": 1, "word_timestamps": True},
    "flaky": {"steps": 3, "step_seconds": 0.01},
    "flakyslow": {"steps": 2, "step_seconds": 0.01},
    "flakyparts": {"steps": 2, "step_seconds": 0.01},
    "edit": {"instruction": "make it snow", "steps": 2, "seed": 7},
    "t2v": {"prompt": "a red ball", "num_frames": 5, "fps": 8, "width": 32, "height": 32, "steps": 2},
    "tts": {"text": "The form sent this sentence.", "format": "opus"},
    "video": {"language": "en"},
    "automaton": {"dimensions": 2, "rule": "B3/S23", "width": 32, "height": 32, "frames": 4},
}
FORM_FILES: dict[str, dict[str, str]] = {
    "inpaint": {"image": "photo", "mask": "mask"},
    "edit": {"image": "photo"},
    "transcribe": {"media": "speech"},
    "video": {"video": "video"},
}


def _attribute(value: float | None) -> str:
    """A number as the page writes it into an attribute (``1.0`` is ``1``); none is empty."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def _control_of(prop: dict[str, Any]) -> dict[str, Any]:
    """What the form should build for a schema property (``X | None`` is X's control)."""
    members = [m for m in prop.get("anyOf", []) if m.get("type") != "null"]
    node = {**members[0], **prop} if len(members) == 1 else prop
    if "x-file" in node:
        return {"kind": "file", "accept": ",".join(node["x-file"]["contentTypes"])}
    if "enum" in node:
        return {"kind": "select", "options": {json.dumps(v) for v in node["enum"]}}
    if node.get("type") in ("integer", "number"):
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        return {"kind": "number", "min": _attribute(low), "max": _attribute(high)}
    if node.get("type") == "boolean":
        return {"kind": "checkbox", "value": node.get("default") is True}
    if node.get("type") == "string":
        return {"kind": "text", "value": node.get("default") or ""}
    return {"kind": "json"}


def test_the_form_of_every_enabled_pipeline_is_built_from_the_api_and_runs_a_job(
    app: WebApp, stack: LocalStack, client: Client, tmp_path: Path, media_dir: Path
) -> None:
    from devkit.speech import make_video_with_speech, synthesize

    app.sign_up(new_email())
    assert sorted(app.pipelines) == sorted(stack.config.enabled_pipelines)
    reader = sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])
    listing = httpx.get(f"{stack.env['API_URL']}/v1/pipelines", headers=reader.headers, timeout=30).json()
    photo, mask = red_square(tmp_path)
    samples = {"photo": photo, "mask": mask}
    samples["speech"] = synthesize(
        "The form sent this recording.", media_dir / f"form-{uuid.uuid4().hex[:6]}.wav"
    )
    if "video" in app.pipelines:
        samples["video"] = make_video_with_speech("A short clip.", tmp_path / "clip.mp4", duration=2.0)
    # Every form is filled and submitted first, then the jobs run side by side: the user's list
    # shows each of them end as succeeded, and each job holds what its form was given.
    sent: dict[str, tuple[str, dict[str, Any], dict[str, Path]]] = {}
    started = time.perf_counter()
    for info in listing["pipelines"]:
        name, schema = info["name"], info["inputSchema"]
        required = set(schema.get("required", []))
        controls = app.choose(name)
        # One control per input, in the schema's order, of the input's kind.
        assert list(controls) == list(schema["properties"]), name
        for field, prop in schema["properties"].items():
            want, got = _control_of(prop), controls[field]
            where = f"{name}.{field}"
            assert got["required"] == (field in required), where
            if want["kind"] == "text":
                assert got["kind"] in ("text", "textarea") and got["value"] == want["value"], (where, got)
            elif want["kind"] == "number":
                assert got["kind"] == "number", (where, got)
                assert (got["min"], got["max"]) == (want["min"], want["max"]), (where, got)
            elif want["kind"] == "select":
                assert got["kind"] == "select" and set(got["options"]) == want["options"], (where, got)
            else:
                assert {k: got[k] for k in want} == want, (where, got)
        chosen = FORM_FILES.get(name) or {
            field: "photo" if any(t.startswith("image/") for t in rule["contentTypes"]) else "speech"
            for field, rule in info["files"].items()
            if field in required
        }
        files = {field: samples[sample] for field, sample in chosen.items()}
        values = FORM_VALUES.get(name, {})
        sent[name] = (app.run(name, inputs=values, files=files), values, files)
    assert sorted(sent) == sorted(stack.config.enabled_pipelines)
    ids = {job_id: name for name, (job_id, _, _) in sent.items()}
    shown = wait_listed_final(app, list(ids), timeout=300)
    elapsed = time.perf_counter() - started
    jobs = {name: client.get(job_id) for name, (job_id, _, _) in sent.items()}
    errors = {name: job.error for name, job in jobs.items() if job is not None and job.error}
    assert {ids[i]: s for i, s in shown.items()} == dict.fromkeys(sent, "succeeded"), errors
    for name, (_, values, files) in sent.items():
        job = jobs[name]
        assert job is not None, name
        # The job holds what the form was given, and nothing it was not (the defaults apply).
        assert {k: v for k, v in job.inputs.items() if k not in files} == values, name
        assert sorted(k for k in job.inputs if k in files) == sorted(files), name
        assert all(str(job.inputs[k]).startswith("gs://") for k in files), name
    print(
        f"{len(sent)} jobs run through the generated form, submitted together: all succeeded in {elapsed:.1f}s"
    )


def wait_listed_final(app: WebApp, job_ids: list[str], timeout: float) -> dict[str, str]:
    """Wait until the page's "My jobs" list shows every one of ``job_ids`` in a final status;
    returns the status shown for each."""
    app.page.wait_for_function(
        """([ids, final]) => ids.every(id => {
          const el = document.querySelector(`#jobs li[data-job-id='${id}'] .status`);
          return el !== null && final.includes(el.textContent);
        })""",
        arg=[job_ids, list(FINAL)],
        timeout=timeout * 1000,
    )
    shown = app.listed()
    return {job_id: shown[job_id] for job_id in job_ids}


def test_the_form_refuses_a_value_out_of_its_range_before_anything_is_sent(app: WebApp) -> None:
    app.sign_up(new_email())
    controls = app.choose("flaky")
    assert controls["steps"]["max"] == "10000"
    app.fill({"steps": 20_000})
    app.page.click("#submit")
    app.page.wait_for_function("() => document.querySelector('#notice').textContent")
    assert app.notice.startswith("invalid_inputs: inputs.steps:"), app.notice
    assert app.listed() == {}
