"""The generated reference pages match what the code and the benchmark results say."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scripts import gen_docs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("page", sorted(gen_docs.pages()), ids=str)
def test_the_committed_page_is_what_the_generator_writes(page: Path) -> None:
    committed = (ROOT / page).read_text()
    assert committed == gen_docs.pages()[page], (
        f"{page} is stale: run .venv/bin/python -m scripts.gen_docs and commit the result"
    )


def test_every_setting_is_in_the_configuration_reference() -> None:
    from infra.settings import Settings

    page = (ROOT / gen_docs.CONFIGURATION).read_text()
    for name, info in Settings.model_fields.items():
        assert f"| `{name.upper()}` |" in page
        if info.description:
            assert " ".join(info.description.split())[:40] in page


def test_a_changed_default_makes_the_reference_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.settings import Settings

    before = gen_docs.configuration()
    info = Settings.model_fields["push_wait_seconds"]
    monkeypatch.setattr(info, "default", 12.5)
    after = gen_docs.configuration()
    assert after != before
    assert "| `PUSH_WAIT_SECONDS` | number | `12.5` |" in after


def test_figures_follow_the_results_files(tmp_path: Path) -> None:
    (tmp_path / "e2e_latency.json").write_text(
        json.dumps({"when": "2030-01-01", "median": {"inference": 0.5, "total": 0.75}})
    )
    (tmp_path / "new_bench.json").write_text(json.dumps({"rate": 3, "runs": [{"x": 1}, {"x": 2}]}))
    page = gen_docs.figures(tmp_path)
    assert "| `when` | 2030-01-01 |" in page
    assert "| `inference` | 0.5 |" in page and "| `total` | 0.75 |" in page
    # a results file the generator has no title for still appears, under its own name
    assert "## New bench" in page and "| `rate` | 3 |" in page and "| `runs` | 2 entries" in page
    assert page.index("Upload to `succeeded`") < page.index("## New bench")


def test_the_check_mode_fails_on_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "docs").mkdir()
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    monkeypatch.setattr(gen_docs, "pages", lambda: {Path("docs/x.md"): "new\n"})
    (tmp_path / "docs" / "x.md").write_text("old\n")
    assert gen_docs.main(["--check"]) == 1
    assert gen_docs.main([]) == 0
    assert (tmp_path / "docs" / "x.md").read_text() == "new\n"
    assert gen_docs.main(["--check"]) == 0


def _pages() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    found += sorted((ROOT / "pipelines").glob("*/README.md"))
    found += sorted((ROOT / "plugins").glob("*/README.md"))
    return found


def _anchors(text: str) -> set[str]:
    """The anchors a Markdown renderer gives the headings (GitHub's rule) and explicit ids."""
    found = set(re.findall(r'<a id="([^"]+)">', text))
    for heading in re.findall(r"^#+ (.+)$", _without_code(text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).replace(" ", "-")
        found.add(slug)
    return found


def _without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page: Path) -> None:
    text = _without_code(page.read_text())
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
        if anchor:
            assert anchor in _anchors(linked.read_text()), f"{page.relative_to(ROOT)}: no heading #{anchor}"


def test_the_readme_stays_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, "README.md is the front door: move details to docs/"
    for page in ("docs/contract.md", "docs/configuration.md", "docs/deploy.md", "docs/figures.md"):
        assert f"]({page})" in readme


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_prose_lines_are_short(page: Path) -> None:
    long = [
        line
        for line in _without_code(page.read_text()).splitlines()
        if len(line) > 120 and not line.startswith(("|", "<!--")) and "](" not in line
    ]
    assert not long, f"{page.relative_to(ROOT)}: {len(long)} lines over 120 characters: {long[0][:60]}..."


def test_the_contract_names_every_field_of_the_job_document() -> None:
    from core.contract import ErrorInfo, JobDoc, JobStatus, PartState, Timings

    contract = (ROOT / "docs" / "contract.md").read_text()
    fields = contract.split("## Fields", 1)[1].split("\n## ", 1)[0]
    rows = " ".join(line.split("|")[1] for line in fields.splitlines() if line.startswith("| `"))
    for name, info in JobDoc.model_fields.items():
        assert f"`{info.alias or name}`" in rows, f"the contract's table lacks the job field {info.alias}"
    for model, row in ((ErrorInfo, "error"), (Timings, "timings"), (PartState, "parts")):
        line = next(line for line in fields.splitlines() if line.startswith(f"| `{row}`"))
        for name, info in model.model_fields.items():
            assert (info.alias or name) in line or name in line, f"`{row}` lacks {info.alias or name}"
    status = next(line for line in fields.splitlines() if line.startswith("| `status`"))
    assert all(f"`{value}`" in status for value in JobStatus)


def _codes(folder: Path) -> set[str]:
    """Error codes set as literals (``code="..."``) in a folder's source."""
    pattern = re.compile(r'\bcode\s*(?::\s*str\s*)?=\s*"([a-z][a-z0-9_]*)"')
    return {code for path in folder.rglob("*.py") for code in pattern.findall(path.read_text())}


@pytest.mark.parametrize("package", ["transcribe", "inpaint", "edit", "video", "t2v", "tts"], ids=str)
def test_every_error_code_of_a_pipeline_is_documented(package: str) -> None:
    documented = (ROOT / "docs" / "contract.md").read_text() + (ROOT / "docs" / "limits.md").read_text()
    documented += (ROOT / "pipelines" / package / "README.md").read_text()
    missing = sorted(c for c in _codes(ROOT / "pipelines" / package) if f"`{c}`" not in documented)
    assert not missing, f"pipelines/{package}/README.md does not name the error codes {missing}"


def test_every_error_code_of_the_backend_is_in_the_contract() -> None:
    contract = (ROOT / "docs" / "contract.md").read_text()
    found = set().union(*(_codes(ROOT / p) for p in ("core", "functions", "gpu_service", "infra")))
    found |= _codes(ROOT / "pipelines" / "imaging") | {
        c for c in _codes(ROOT / "pipelines") if (ROOT / "pipelines" / "media.py").read_text().count(f'"{c}"')
    }
    missing = sorted(c for c in found if f"`{c}`" not in contract)
    assert not missing, f"docs/contract.md does not name the error codes {missing}"
