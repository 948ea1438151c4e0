#!/usr/bin/env bash
# Installs mcp-v8 and its bundled storage plugins from this checkout:
#   PREFIX/bin/mcp-v8
#   PREFIX/lib/mcp-v8/plugins/libmcp_v8_file_storage.so, libmcp_v8_s3_storage.so
# where the installed binary finds them on its own.
#
#   ./install.sh                 # PREFIX = ~/.local (put ~/.local/bin on PATH)
#   ./install.sh /usr/local      # system-wide (run with the rights to write there)
#
# It builds in release mode first (V8 is downloaded by cargo; offline, set RUSTY_V8_ARCHIVE).
# MCP_V8_INSTALL_FROM=DIR installs what DIR already holds instead of building (the tests use it).
set -euo pipefail
cd "$(dirname "$0")"

prefix=${1:-$HOME/.local}
from=${MCP_V8_INSTALL_FROM:-}
if [ -z "$from" ]; then
  cargo build --release --workspace
  from=target/release
fi

plugins="libmcp_v8_file_storage.so libmcp_v8_s3_storage.so"
for file in mcp-v8 $plugins; do
  if [ ! -f "$from/$file" ]; then
    echo "install.sh: $from/$file is missing; build the workspace first" >&2
    exit 1
  fi
done

install -d "$prefix/bin" "$prefix/lib/mcp-v8/plugins"
install -m 755 "$from/mcp-v8" "$prefix/bin/mcp-v8"
for plugin in $plugins; do
  install -m 644 "$from/$plugin" "$prefix/lib/mcp-v8/plugins/$plugin"
done
echo "installed $prefix/bin/mcp-v8 and its plugins in $prefix/lib/mcp-v8/plugins"
"$prefix/bin/mcp-v8" --list-plugins
