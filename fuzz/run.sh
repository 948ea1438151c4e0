#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each, from the committed seeds, with
# cargo-fuzz on the stable toolchain (no sanitizer). A crash fails the run and leaves its
# input under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$version"; then
  cargo install --quiet --locked cargo-fuzz --version "$version"
fi
cargo fuzz build --sanitizer none
for target in journal_record envelope memory_dump worker_frames stdio_lines; do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for $seconds s" >&2
  cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=0 2>&1 | tail -n 1
done
