"""The ``gpujobs`` CLI against the local stack, as a person would use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import main
from devkit.speech import synthesize
from infra.localstack.stack import LocalStack

pytestmark = pytest.mark.pipelines("transcribe")


def _env(stack: LocalStack) -> list[str]:
    return ["--env-file", str(stack.config.state_dir / "stack.env")]


def test_submit_follow_and_list(
    stack: LocalStack, uid: str, media_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = synthesize("Please send the quarterly report.", media_dir / "cli.wav")
    assert (
        main(
            [*_env(stack), "submit", "transcribe", "--file", str(wav), "--uid", uid, "--input", "language=en"]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "succeeded" in out.out and "quarterly report" in out.out.lower()
    assert "transcript.srt" in out.out and "timings (s)" in out.out
    assert "100%" in out.err  # the progress bar reached the end

    assert main([*_env(stack), "submit", "transcribe", "--file", str(wav), "--uid", uid, "--drop"]) == 0
    capsys.readouterr()
    assert main([*_env(stack), "list", "--uid", uid]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 2 and all("succeeded" in line for line in listed)


def test_a_rejected_job_exits_non_zero_with_the_reason(
    stack: LocalStack, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [*_env(stack), "submit", "transcribe", "--uid", uid, "--input", "media=gs://nowhere-bucket/x.wav"]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "rejected" in out and "wrong_bucket" in out
