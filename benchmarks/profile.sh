#!/usr/bin/env bash
# Profile a paceline replica with py-spy while the suite loads it: POST /jobs at 64 connections
# and a drain of due jobs, one short run each (about 2 minutes).
# Writes benchmarks/results/profile-enqueue.speedscope.json and profile-drain.speedscope.json
# (open them at https://www.speedscope.app) and results/latest.md with the top frames.
# Usage: benchmarks/profile.sh [more flags of `python -m benchmarks`, e.g. --concurrency 64]
set -euo pipefail
cd "$(dirname "$0")/.."
exec make --no-print-directory bench BENCH_ARGS="--quick --profile --only enqueue,drain $*"
