"""One settings object from the environment; one topology file for the stack and Terraform."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gpu_service.endings import MAX_OUTPUTS_BYTES, fit_in_document
from infra.settings import Settings
from infra.topology import load_topology
from pipelines.registry import catalog, get_spec


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENABLED_PIPELINES", "transcribe, inpaint")
    monkeypatch.setenv("PIPELINES__TRANSCRIBE__MODEL_DIR", "/models/whisper")
    monkeypatch.setenv("PIPELINES__TRANSCRIBE__COMPUTE_TYPE", "int8")
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "2")
    s = Settings()
    assert s.enabled_pipelines == ["transcribe", "inpaint"]
    assert s.max_concurrent_jobs == 2
    pipelines = catalog(s.enabled_pipelines, s.plugins, s.pipelines)
    assert pipelines.names == ["inpaint", "transcribe"]
    spec = pipelines.get("transcribe")
    assert spec is not None
    config = pipelines.config(spec)
    assert str(config.model_dir) == "/models/whisper"  # type: ignore[attr-defined]


def test_bad_setting_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "0")
    with pytest.raises(ValidationError, match="max_concurrent_jobs"):
        Settings()


def test_pipeline_config_typo_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINES__TRANSCRIBE__MODLE_DIR", "/x")
    s = Settings()
    pipelines = catalog(["transcribe"], (), s.pipelines)
    spec = pipelines.get("transcribe")
    assert spec is not None
    with pytest.raises(ValidationError):
        pipelines.config(spec)


def test_topology_declares_every_pipeline_with_valid_subscription_policies() -> None:
    topo = load_topology()
    assert "transcribe" in topo.pipelines
    for name in topo.pipelines:
        sub = topo.subscription(name)
        assert sub.retry_policy.minimum_backoff_seconds <= sub.retry_policy.maximum_backoff_seconds
        assert sub.dead_letter.topic in topo.topics
        assert get_spec(name) is not None, f"topology names {name!r}, which is not a pipeline"
    fn_topics = {f.trigger.pubsub_topic for f in topo.functions.values()} - {None}
    assert fn_topics <= set(topo.topics)


def test_huge_outputs_are_trimmed_to_fit_a_firestore_document() -> None:
    outputs = {"text": "t", "segments": [{"text": "x" * 100}] * 20_000, "files": {"a": "gs://b/a"}}
    fitted = fit_in_document(outputs)
    assert fitted["segments"] is None and fitted["truncated"] == ["segments"]
    assert fitted["files"] == {"a": "gs://b/a"} and fitted["text"] == "t"
    assert len(str(fitted)) < MAX_OUTPUTS_BYTES
