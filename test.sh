#!/usr/bin/env bash
# The project's one test command. It installs what the tests need (moto, a local
# S3-compatible server, into target/s3-venv), builds everything the end-to-end tests start
# (the mcp-v8 binary and the plugin libraries), then runs every test in the workspace.
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

cargo build --workspace
cargo test --workspace
