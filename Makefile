# The project's commands. `make demo` and `make test` are all a fresh machine needs.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-fast up down lint bench faults fuzz clean gpu-wheels gpu-check gpu-check-dry

install:
	@bash scripts/setup.sh

demo: install ## start the local stack, submit sample jobs, print the results and timings
	$(PY) -m scripts.demo

test: install ## the whole suite: unit tests and the end-to-end tests on the real emulators, on two workers (the integration tests together on one, with one stack)
	$(PY) -m pytest -n 2 --dist loadgroup

test-fast: install ## unit tests only, without the slow ones (no emulators, no models, no terraform)
	$(PY) -m pytest tests/unit -m "not slow" -n 2 --dist loadgroup

up: install ## start the local stack in the background; settings in .local/stack.env; prints the web client's URL
	@mkdir -p .local/logs
	@if [ -f .local/stack.pid ] && kill -0 $$(cat .local/stack.pid) 2>/dev/null; then echo "already running"; \
	else nohup $(PY) -m infra.localstack up > .local/logs/stack.log 2>&1 & fi
	@$(PY) -m infra.localstack wait

down: ## stop the local stack started by `make up`
	@$(PY) -m infra.localstack down

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m tools.tfcheck

bench: install ## latency by stage; throughput side by side (direct vs system, burst vs raw push, batching); the app edge; scale-out and cold start; lanes; notifications
	$(PY) -m bench.e2e_latency --runs 5
	$(PY) -m bench.video_latency --runs 3
	$(PY) -m bench.throughput
	$(PY) -m bench.round_trips
	$(PY) -m bench.app_edge --runs 20 --browser-runs 5
	$(PY) -m bench.tts_rtf --runs 3
	$(PY) -m bench.scale
	$(PY) -m bench.cost
	$(PY) -m bench.lanes
	$(PY) -m bench.notify

clean:
	rm -rf .local .pytest_cache .mypy_cache .ruff_cache

fuzz: install ## schemathesis on the local stack's API (all phases, real Auth emulator token); figures in bench/results/fuzz.json
	$(PY) -m bench.fuzz_api --max-examples 200

faults: install ## fault injection on the local stack; last line: lost=N double=N stuck=N
	$(PY) -m scripts.faults

gpu-wheels: ## download the wheels a bare GPU machine needs (60 MB at most) into bench/gpu-wheels
	$(PY) -m scripts.gpu_check prepare

gpu-check: ## on a GPU machine: GPU-marked tests and the GPU benchmark, figures in bench/results/gpu.json (< 8 min)
	python3 -m scripts.gpu_check run

gpu-check-dry: ## here, on the CPU: what gpu-check would run, the tests it collects, the benchmark on the CPU
	$(PY) -m scripts.gpu_check run --dry-run
