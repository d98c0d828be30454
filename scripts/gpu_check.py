"""One command that proves the GPU paths on a GPU machine, in under 8 minutes.

    python -m scripts.gpu_check prepare          # here, with network: the wheels (60 MB at most)
    python3 -m scripts.gpu_check run             # on the GPU machine, no network needed
    python -m scripts.gpu_check run --dry-run    # here, on the CPU: what it would do, and the benchmark's code

A bare GPU machine (this workplace's: Python 3.12, torch with CUDA, accelerate, peft, safetensors,
transformers, numpy, Pillow, pytest, no network) lacks this project's other pins. ``prepare``
downloads them as Python 3.12 manylinux wheels into ``bench/gpu-wheels/`` (ignored by git; carried
to the machine) and refuses a set over 60 MB. ``run`` then:

1. installs the wheels into ``/tmp/gpu-site`` (no index, no dependencies: the set is complete);
2. runs the GPU-marked tests (``pytest tests/gpu -m gpu``; real-weight tests skip without their
   ``GPUJOBS_*`` directories, Piper/Whisper ones without those packages, each saying why);
3. runs the GPU benchmark (``bench/gpu.py``): batched vs one at a time for each batching
   pipeline, peak memory per pipeline, faster-whisper on CUDA in float16 where the machine's CUDA
   allows it, and the L4/H100 plans;
4. writes ``bench/results/gpu.json`` (and a copy under ``$OUT`` when that is set).

Each step has its share of the 8 minutes and is stopped at it; the report says what was stopped.

The wheel set: pydantic (and its core and settings), diffusers 0.42.1, gguf 0.19.0 and transformers
5.24.0 (the machine's own is older), about 25 MB. ``prepare --whisper`` swaps transformers for
ctranslate2 4.8.5 and faster-whisper 1.2.1 (about 55 MB; the machine's transformers is then used):
only worth it on a machine with CUDA 12's cuBLAS, which CTranslate2 4.8.5 loads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / "bench" / "gpu-wheels"
RESULTS = ROOT / "bench" / "results"
SITE = Path("/tmp/gpu-site")
MAX_WHEEL_BYTES = 60 * 10**6
TOTAL_SECONDS = 8 * 60

BASE = [
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "pydantic-settings==2.16.3",
    "python-dotenv==1.2.4",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "diffusers==0.42.1",
    "gguf==0.19.0",
]
PINNED_TRANSFORMERS = ["transformers==5.24.0"]
WHISPER = ["ctranslate2==4.8.5", "faster-whisper==1.2.1"]
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def prepare(whisper: bool) -> int:
    """Download the wheel set for Python 3.12 on x86-64 Linux into ``bench/gpu-wheels``."""
    wanted = BASE + (WHISPER if whisper else PINNED_TRANSFORMERS)
    if WHEELS.exists():
        for old in WHEELS.glob("*.whl"):
            old.unlink()
    WHEELS.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.12", "--implementation", "cp",
        *[arg for p in PLATFORMS for arg in ("--platform", p)],
        "-d", str(WHEELS), *wanted,
    ]  # fmt: skip
    print("$", " ".join(command))
    subprocess.run(command, check=True)
    total = _wheel_bytes()
    print(f"{len(list(WHEELS.glob('*.whl')))} wheels, {_mb(total)} (at most {_mb(MAX_WHEEL_BYTES)})")
    if total > MAX_WHEEL_BYTES:
        print("the wheel set is over its limit", file=sys.stderr)
        return 1
    return 0


def _wheel_bytes() -> int:
    return sum(w.stat().st_size for w in WHEELS.glob("*.whl"))


def _step(name: str, command: list[str], timeout: float, env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run one step with its share of the time; its output goes to ``log`` and the console."""
    print(f"\n== {name} ({timeout:.0f} s at most)\n$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        deadline = started + timeout
        timed_out = False
        for line in process.stdout:
            out.write(line)
            print(line, end="", flush=True)
            if time.perf_counter() > deadline:
                timed_out = True
                process.kill()
                break
        try:
            process.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            timed_out = True
            process.kill()
            process.wait()
    tail = log.read_text().splitlines()[-15:]
    return {
        "command": " ".join(command),
        "returncode": process.returncode,
        "stopped_at_its_limit": timed_out,
        "seconds": round(time.perf_counter() - started, 1),
        "tail": tail,
    }


def run(dry_run: bool, out_dir: Path | None) -> int:
    started = time.perf_counter()
    python = sys.executable
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    logs = Path("/tmp/gpu-check-logs")
    logs.mkdir(exist_ok=True)
    report: dict[str, Any] = {"dry_run": dry_run, "python": sys.version.split()[0]}
    wheels = sorted(WHEELS.glob("*.whl"))
    report["wheels"] = {"count": len(wheels), "bytes": _wheel_bytes(), "names": [w.name for w in wheels]}
    print(f"wheels: {len(wheels)} in {WHEELS.relative_to(ROOT)}, {_mb(_wheel_bytes())}")

    # 1. wheels
    install = [
        python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
        "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels),
    ]  # fmt: skip
    if dry_run:
        print(f"\n== install (dry run: not run here)\n$ {' '.join(install[:12])} bench/gpu-wheels/*.whl")
        report["install"] = {"skipped": "dry run"}
    elif not wheels:
        report["install"] = {"skipped": "no wheels: run `python -m scripts.gpu_check prepare` first"}
        print(report["install"]["skipped"])
    else:
        report["install"] = _step("install wheels", install, 90, env, logs / "install.log")
        env["PYTHONPATH"] = os.pathsep.join([str(SITE), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )

    # 2. GPU-marked tests (collected only, on the CPU: they skip without CUDA)
    remaining = TOTAL_SECONDS - (time.perf_counter() - started)
    tests = [
        python,
        "-m",
        "pytest",
        "tests/gpu",
        "-m",
        "gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "timeout=240",
    ]
    if dry_run:
        tests += ["--collect-only"]
    report["tests"] = _step("GPU tests", tests, max(30.0, remaining - 200), env, logs / "gpu-tests.log")

    # 3. the benchmark
    remaining = TOTAL_SECONDS - (time.perf_counter() - started)
    bench_out = RESULTS / ("gpu-dry-run-bench.json" if dry_run else "gpu-bench.json")
    bench = [python, "-m", "bench.gpu", "--out", str(bench_out)]
    bench += ["--device", "cpu", "--jobs", "4", "--max-batch", "2"] if dry_run else ["--device", "cuda"]
    report["benchmark_step"] = _step(
        "GPU benchmark", bench, max(30.0, remaining - 10), env, logs / "bench.log"
    )
    if bench_out.exists():
        report["benchmark"] = json.loads(bench_out.read_text())
        bench_out.unlink()

    report["seconds"] = round(time.perf_counter() - started, 1)
    target = RESULTS / ("gpu-dry-run.json" if dry_run else "gpu.json")
    RESULTS.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {target.relative_to(ROOT)} in {report['seconds']} s")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(target, out_dir / target.name)
        for log in logs.glob("*.log"):
            shutil.copy(log, out_dir / log.name)
    failed = report["tests"]["returncode"] not in (0, 5) or report["benchmark_step"]["returncode"] != 0
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prepare", help="download the wheels a bare GPU machine needs")
    p.add_argument(
        "--whisper", action="store_true", help="ctranslate2 + faster-whisper instead of transformers"
    )
    r = sub.add_parser("run", help="install the wheels, run the GPU tests and the GPU benchmark")
    r.add_argument(
        "--dry-run", action="store_true", help="on the CPU: show the steps, collect the tests, bench on CPU"
    )
    r.add_argument("--out-dir", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    args = parser.parse_args(argv)
    if args.what == "prepare":
        return prepare(args.whisper)
    return run(args.dry_run, args.out_dir)


if __name__ == "__main__":
    raise SystemExit(main())
