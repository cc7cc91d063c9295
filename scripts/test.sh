#!/usr/bin/env bash
# The test command (README, .ci/run): the whole suite, unit, integration and
# doc tests. Integration tests start their own mirrors on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --locked "$@"
