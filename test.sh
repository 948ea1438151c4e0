#!/usr/bin/env bash
# The project's one test command: builds everything the end-to-end tests start (the
# `mcp-v8` binary), then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --workspace
cargo test --workspace
