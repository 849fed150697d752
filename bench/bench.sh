#!/usr/bin/env bash
# bench.sh — `make bench`: the compare.sh scenarios against studio-relay only
# (no Node peers, no raw-Redis reference). Same flags as compare.sh:
#   bench/bench.sh [--quick] [--skip-build] [--out FILE]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$HERE/compare.sh" --studio-only "$@"
