"""The local stack's memory limits: the Cloud Run sizes come from Terraform, and a process that
passes its limit is killed (not slowed down), as on Cloud Run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infra.localstack.stack import MemoryLimit, cloud_run_memory


def test_the_limits_are_the_cloud_run_sizes_in_terraform() -> None:
    assert cloud_run_memory("api") == 512 * 2**20
    assert cloud_run_memory("gpu-service") == 32 * 2**30


def test_a_process_past_its_limit_is_killed() -> None:
    limit = MemoryLimit("unit-test", 64 * 2**20)
    if limit.path is None:
        pytest.skip("no memory cgroup can be created here (not root): nothing is enforced")
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read(1); x = bytearray(256 * 2**20)"],
            stdin=subprocess.PIPE,
        )
        limit.apply(child.pid)
        child.communicate(b"go", timeout=60)
        assert child.returncode == -9
        assert limit.oom_kills() == 1
    finally:
        limit.remove()


def test_a_process_within_its_limit_runs() -> None:
    limit = MemoryLimit("unit-test", 256 * 2**20)
    if limit.path is None:
        pytest.skip("no memory cgroup can be created here (not root): nothing is enforced")
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read(1); x = bytearray(32 * 2**20)"],
            stdin=subprocess.PIPE,
        )
        limit.apply(child.pid)
        child.communicate(b"go", timeout=60)
        assert child.returncode == 0
        assert limit.oom_kills() == 0
    finally:
        limit.remove()
