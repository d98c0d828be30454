"""The GPU service's push routes are served with httptools, the HTTP parser written in C."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from infra.settings import Settings


@pytest.mark.usefixtures("no_settings_env")
def test_the_gpu_service_parses_http_with_httptools() -> None:
    from gpu_service.__main__ import server_config

    config = server_config(FastAPI(), Settings())
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
