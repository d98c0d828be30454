#!/usr/bin/env bash
# Installs everything the project needs on a fresh machine, from the project's own files.
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# 1. What a machine must already have: Python 3.11+, Java 17+, Node.js 20+, the gcloud emulators.
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11+ is required (found $("$PYTHON" --version 2>&1))."
command -v java >/dev/null || die "Java 17+ is required by the Google emulators: apt-get install openjdk-17-jre-headless."
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
[[ "${java_major:-0}" -ge 17 ]] || die "Java 17+ is required by the Google emulators (found Java ${java_major:-unknown})."
command -v node >/dev/null && command -v npm >/dev/null \
  || die "Node.js 20+ with npm is required by the Firebase Auth emulator and the web client: apt-get install nodejs npm (or nodesource's nodejs 20)."
node_major=$(node -p 'process.versions.node.split(".")[0]')
[[ "${node_major:-0}" -ge 20 ]] || die "Node.js 20+ is required (found $(node --version))."
command -v gcloud >/dev/null || die "The Google Cloud SDK is required (gcloud), with the pubsub-emulator and cloud-firestore-emulator components."
sdk=$(dirname "$(dirname "$(readlink -f "$(command -v gcloud)")")")
[[ -d "$sdk/platform/pubsub-emulator" ]] || die "gcloud's Pub/Sub emulator is missing: gcloud components install pubsub-emulator beta (or apt-get install google-cloud-cli-pubsub-emulator)."
[[ -d "$sdk/platform/cloud-firestore-emulator" ]] || die "gcloud's Firestore emulator is missing: gcloud components install cloud-firestore-emulator (or apt-get install google-cloud-cli-firestore-emulator)."

# 2. From Debian: ffmpeg (video), tesseract (OCR), espeak-ng and sox (test audio), chromium.
missing=()
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
command -v tesseract >/dev/null || missing+=(tesseract-ocr tesseract-ocr-eng)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v sox >/dev/null || missing+=(sox)
[[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf ]] || missing+=(fonts-dejavu-core)
# The browser tests and `make demo` drive Debian's chromium headless (no browser download).
[[ -x /usr/lib/chromium/chromium ]] || missing+=(chromium)
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 3. The virtual environment. torch is pinned (==2.13.0, the CPU wheel) in pyproject.toml and
#    installed in the same resolve, so no CUDA build is ever pulled in for development or CI.
if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || constraints.txt -nt $stamp ]]; then
  say "installing Python packages (first time: about 2 minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # constraints.txt: the exact versions the GPU image installs, so tests run what production runs.
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[service,api,local-models,dev]'
  touch "$stamp"
fi

# The plugins in plugins/, each installed as the separate distribution it is, so the registry finds
# it by its entry point as in the images (their dependencies come with the service extra above).
for plugin in plugins/*/; do
  plugin_stamp=".venv/.installed-plugin-$(basename "$plugin")"
  if [[ ! -f $plugin_stamp || ${plugin}pyproject.toml -nt $plugin_stamp ]]; then
    say "installing the plugin in $plugin"
    .venv/bin/python -m pip install -q --no-deps -e "$plugin"
    touch "$plugin_stamp"
  fi
done

# 4. npm packages, pinned by their committed package-lock.json, in project-local folders: the
#    Firebase CLI (its Auth emulator; the first install compiles a native module, ~3 minutes)
#    and the web client's SDK and bundler. Then the web client is built into web/dist.
for dir in tools/firebase tools/tfschema web; do
  if [[ ! -f $dir/node_modules/.package-lock.json || $dir/package-lock.json -nt $dir/node_modules/.package-lock.json ]]; then
    say "installing npm packages in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done
if [[ ! -f web/dist/app.js || -n $(find web/src web/package-lock.json -newer web/dist/app.js 2>/dev/null) ]]; then
  say "building the web client"
  (cd web && npm run --silent build)
fi
say "set-up complete"
