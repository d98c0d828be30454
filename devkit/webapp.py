"""The web client driven headless: Debian's chromium through Playwright (no browser download).

A small page object over ``web/`` for the browser tests, ``make demo`` and the bench: sign in,
run a job the way a user does (pick a pipeline and files, press Run), read what the page shows.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
FINAL = ("succeeded", "failed", "rejected", "cancelled")


def chromium_path() -> str | None:
    """Debian's chromium binary (the /usr/bin wrapper script is a fallback), or ``None``."""
    for path in CHROMIUM_PATHS:
        if Path(path).exists():
            return path
    return shutil.which("chromium")


@contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError("chromium is not installed: run 'make install' (apt-get install chromium)")
    with sync_playwright() as p:
        # --no-sandbox: chromium's sandbox cannot start as root (containers, CI).
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


# Records every status the page shows, in order, so a test can see "running" go by.
_RECORD_STATUSES = """() => {
  window.__statuses = [];
  const el = document.querySelector('#status');
  new MutationObserver(() => {
    const s = el.textContent;
    if (window.__statuses[window.__statuses.length - 1] !== s) window.__statuses.push(s);
  }).observe(el, {childList: true, characterData: true, subtree: true});
}"""


# The job form's controls as the page built them: field -> kind, attributes, options, required.
_FORM_CONTROLS = """() => Object.fromEntries([...document.querySelectorAll('#fields [data-field]:not(label)')]
  .map(el => {
    const kind = el.tagName === 'SELECT' ? 'select' : el.tagName === 'TEXTAREA'
      ? (el.dataset.kind === 'json' ? 'json' : 'textarea')
      : (el.type === 'checkbox' ? 'checkbox' : el.type);
    const label = document.querySelector(`#fields label[data-field='${el.dataset.field}']`);
    return [el.dataset.field, {
      kind,
      value: kind === 'checkbox' ? el.checked : el.value,
      min: el.min ?? null, max: el.max ?? null, step: el.step ?? null, accept: el.accept ?? null,
      required: Boolean(label && label.querySelector('abbr.required')),
      options: kind === 'select'
        ? Object.fromEntries([...el.options].filter(o => o.value !== '')
            .map(o => [o.value, o.text]))
        : {},
      labels: kind === 'select' ? [...el.options].map(o => o.text) : [],
    }];
  }))"""


class WebApp:
    def __init__(self, page: Any, url: str) -> None:
        self.page = page
        self.url = url
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def open(self) -> WebApp:
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready=true]")
        return self

    # -- signing in -------------------------------------------------------------------------------

    def sign_up(self, email: str, password: str = "secret-password") -> str:
        self.page.fill("#email", email)
        self.page.fill("#password", password)
        self.page.click("#signup")
        return self._signed_in()

    def sign_in(self, email: str, password: str = "secret-password") -> str:
        self.page.fill("#email", email)
        self.page.fill("#password", password)
        self.page.click("#signin")
        return self._signed_in()

    def sign_in_anonymously(self) -> str:
        self.page.click("#anon")
        return self._signed_in()

    def _signed_in(self) -> str:
        self.page.wait_for_selector("#app-panel:not([hidden])", timeout=20_000)
        # The job form is built from GET /v1/pipelines once the user is signed in.
        self.page.wait_for_function(
            "() => document.body.dataset.pipelines !== undefined || document.querySelector('#notice').textContent",
            timeout=20_000,
        )
        uid: str = self.page.get_attribute("body", "data-uid") or ""
        return uid

    @property
    def pipelines(self) -> list[str]:
        """The pipelines the form offers (from GET /v1/pipelines)."""
        names = self.page.get_attribute("body", "data-pipelines") or ""
        return [n for n in names.split(",") if n]

    def choose(self, pipeline: str) -> dict[str, dict[str, Any]]:
        """Pick a pipeline; returns its form's controls: field -> what the page built for it."""
        self.page.select_option("#pipeline", pipeline)
        self.page.wait_for_selector(f"#fields[data-pipeline='{pipeline}']", state="attached")
        found: dict[str, dict[str, Any]] = self.page.evaluate(_FORM_CONTROLS)
        return found

    def fill(self, inputs: dict[str, Any], files: dict[str, Path] | None = None) -> None:
        """Set the form's controls: each input through its own control (the rest as advanced
        JSON), each file through its upload field."""
        controls: dict[str, dict[str, Any]] = self.page.evaluate(_FORM_CONTROLS)
        rest: dict[str, Any] = {}
        for name, value in inputs.items():
            kind = controls.get(name, {}).get("kind")
            target = f"#fields [data-field='{name}']:not(label)"
            if kind == "checkbox":
                self.page.set_checked(target, bool(value))
            elif kind == "select":
                # An option's value is the choice as JSON (its label may be another choice's value).
                self.page.select_option(target, value=json.dumps(value))
            elif kind in ("number", "text", "textarea"):
                self.page.fill(target, str(value))
            elif kind == "json":
                self.page.fill(target, json.dumps(value))
            else:
                rest[name] = value
        for name, path in (files or {}).items():
            self.page.set_input_files(f"#fields input[type=file][data-field='{name}']", [str(path)])
        # The advanced JSON box is folded away unless there is something to put in it.
        self.page.evaluate("open => { document.querySelector('#advanced').open = open; }", bool(rest))
        if rest:
            self.page.fill("#inputs", json.dumps(rest))
        else:
            self.page.evaluate("() => { document.querySelector('#inputs').value = ''; }")

    # -- a job --------------------------------------------------------------------------------------

    def run(
        self,
        pipeline: str,
        file: Path | None = None,
        mask: Path | None = None,
        inputs: dict[str, Any] | None = None,
        files: dict[str, Path] | None = None,
    ) -> str:
        """Fill the form and press Run; returns the new job's id once the page watches it.

        ``file`` goes to the form's first file field and ``mask`` to its ``mask`` field; ``files``
        names the field of each file; ``inputs`` are set through their controls."""
        controls = self.choose(pipeline)
        chosen = dict(files or {})
        file_fields = [name for name, c in controls.items() if c["kind"] == "file"]
        if file is not None:
            if not file_fields:
                raise AssertionError(f"the form of {pipeline} has no file field")
            chosen.setdefault(file_fields[0], file)
        if mask is not None:
            chosen["mask"] = mask
        self.fill(inputs or {}, chosen)
        before = self.page.text_content("#job-id")
        self.page.evaluate(_RECORD_STATUSES)
        self.page.click("#submit")
        self.page.wait_for_function(
            "before => { const id = document.querySelector('#job-id').textContent;"
            " return (id !== before && id !== '-') || document.querySelector('#notice').textContent; }",
            arg=before,
            timeout=30_000,
        )
        if notice := self.notice:
            raise AssertionError(f"the page refused the job: {notice}")
        return str(self.page.text_content("#job-id"))

    def wait_status(self, *statuses: str, timeout: float = 60) -> str:
        self.page.wait_for_function(
            "wanted => wanted.includes(document.querySelector('#status').textContent)",
            arg=list(statuses),
            timeout=timeout * 1000,
        )
        return self.status

    def wait_final(self, timeout: float = 60) -> str:
        return self.wait_status(*FINAL, "unreadable", timeout=timeout)

    def wait_result_image(self, timeout: float = 30) -> None:
        self.page.wait_for_selector("#result-image:not([hidden])", timeout=timeout * 1000)

    def open_job(self, job_id: str) -> None:
        self.page.fill("#open-id", job_id)
        self.page.click("#open")

    def cancel_in_list(self, job_id: str) -> None:
        self.page.click(f"#jobs li[data-job-id='{job_id}'] button.cancel")

    def listed(self) -> dict[str, str]:
        """The jobs in "My jobs": id -> the status shown."""
        found: dict[str, str] = self.page.evaluate(
            "() => Object.fromEntries([...document.querySelectorAll('#jobs li')]"
            ".map(li => [li.dataset.jobId, li.querySelector('.status').textContent]))"
        )
        return found

    def image_pixel(self, fx: float, fy: float) -> tuple[int, int, int]:
        """The rendered result image's pixel at (fx, fy), as fractions of its size."""
        rgb = self.page.evaluate(
            """([fx, fy]) => {
              const img = document.querySelector('#result-image');
              const c = document.createElement('canvas');
              c.width = img.naturalWidth; c.height = img.naturalHeight;
              const ctx = c.getContext('2d');
              ctx.drawImage(img, 0, 0);
              const d = ctx.getImageData(Math.floor(fx * c.width), Math.floor(fy * c.height), 1, 1).data;
              return [d[0], d[1], d[2]];
            }""",
            [fx, fy],
        )
        return int(rgb[0]), int(rgb[1]), int(rgb[2])

    @property
    def status(self) -> str:
        return str(self.page.text_content("#status"))

    @property
    def statuses_seen(self) -> list[str]:
        seen: list[str] = self.page.evaluate("() => window.__statuses || []")
        return [s for s in seen if s not in ("…", "-")]

    @property
    def progress(self) -> float:
        return float(self.page.eval_on_selector("#progress", "el => el.value"))

    @property
    def error(self) -> str:
        return str(self.page.text_content("#error") or "")

    @property
    def notice(self) -> str:
        return str(self.page.text_content("#notice") or "")

    @property
    def transcript(self) -> str:
        return str(self.page.text_content("#transcript") or "")
