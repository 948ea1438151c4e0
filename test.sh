#!/usr/bin/env bash
# The project's one test command. It installs what the tests need (moto, a local S3-compatible
# server, into target/s3-venv; the official Python MCP SDK into target/py-clients; the test262
# suite and the web-platform-tests, unpacked into target/test262 and target/wpt), builds
# everything the end-to-end tests start (the mcp-v8 binary and the plugin libraries), then runs
# every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")"

moto_version=5.2.5
venv=target/s3-venv
if [ ! -x "$venv/bin/moto_server" ] || ! "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$moto_version')" 2>/dev/null; then
  mkdir -p target
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$moto_version"
fi
export MOTO_SERVER="$PWD/$venv/bin/moto_server"

# The official Python SDK's client (tests/python/requirements.txt, pinned), for the client
# tests and the SDK benchmark: a venv in target/py-clients.
py_clients=target/py-clients
if ! cmp -s tests/python/requirements.txt "$py_clients/requirements.txt"; then
  rm -rf "$py_clients"
  python3 -m venv "$py_clients"
  "$py_clients/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  cp tests/python/requirements.txt "$py_clients/"
fi
export MCP_V8_PY_CLIENTS="$PWD/$py_clients"

# Clients nobody here wrote, for the client tests: the MCP Inspector CLI, the official MCP
# conformance suite and playwright-core
# (pinned in tests/npm/package-lock.json, installed into target/npm-tools), and a Chromium for
# the browser test (the system's: Debian's `chromium` package). A missing one skips its tests,
# and this script says which; with MCP_V8_REQUIRE_TOOLS=1 (as .ci/run sets it) they fail instead.
skipped=()
tools=target/npm-tools
if ! command -v npm >/dev/null; then
  skipped+=("inspector and browser tests: npm is not installed")
elif cmp -s tests/npm/package-lock.json "$tools/package-lock.json" && [ -d "$tools/node_modules" ] ||
  { rm -rf "$tools" && mkdir -p "$tools" && cp tests/npm/package.json tests/npm/package-lock.json "$tools/" &&
    (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error); }; then
  export MCP_V8_NPM_TOOLS="$PWD/$tools/node_modules"
else
  rm -rf "$tools"
  skipped+=("inspector and browser tests: npm could not install tests/npm/package-lock.json")
fi
if [ -z "${MCP_V8_CHROMIUM:-}" ]; then
  MCP_V8_CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
fi
if [ -n "$MCP_V8_CHROMIUM" ]; then
  export MCP_V8_CHROMIUM
else
  skipped+=("browser test: no chromium (Debian: apt-get install chromium; or set MCP_V8_CHROMIUM)")
fi
# A pinned suite from ../shared/NAME (NAME-*.tar.gz), unpacked once into target/NAME and named
# in $VAR: ECMAScript's test262 (host/tests/test262) and the web-platform-tests for the
# WinterTC API (host/tests/wpt).
unpack_suite() {
  local name=$1 var=$2 archive
  archive=$(ls ../shared/"$name"/"$name"-*.tar.gz 2>/dev/null | head -n 1 || true)
  if [ -n "$archive" ]; then
    if [ "$(cat "target/$name/.archive" 2>/dev/null)" != "$(basename "$archive")" ]; then
      rm -rf "target/$name" && mkdir -p "target/$name"
      tar xzf "$archive" -C "target/$name"
      basename "$archive" > "target/$name/.archive"
    fi
    export "$var=$PWD/target/$name"
  elif [ -z "${!var:-}" ]; then
    skipped+=("$name: no ../shared/$name/$name-*.tar.gz (or set $var to an unpacked suite)")
  fi
}
unpack_suite test262 MCP_V8_TEST262
unpack_suite wpt MCP_V8_WPT
report_skipped() {
  for why in "${skipped[@]}"; do echo "test.sh: skipped $why" >&2; done
}
trap report_skipped EXIT
if [ -n "${MCP_V8_REQUIRE_TOOLS:-}" ] && [ ${#skipped[@]} -gt 0 ]; then
  echo "test.sh: MCP_V8_REQUIRE_TOOLS is set, but some tools are missing" >&2
  exit 1
fi

cargo build --workspace
cargo test --workspace
