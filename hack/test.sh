#!/usr/bin/env bash
# Runs every test: type check, lint, unit tests, then the end-to-end suites.
# Invoked by `npm test` (and so by .ci/run). Installs what the tests need first (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"
stage() { printf '\n=== %s (%s) ===\n' "$1" "$(date +%T)"; }

stage "system packages"
bash hack/deps.sh --test

stage "native addon"
bash hack/build-native.sh

stage "typecheck"
tsc --noEmit -p tsconfig.json

stage "lint"
eslint --max-warnings=0 .

stage "unit tests"
# Unit tests live next to the code as *.test.ts.
mapfile -t unit < <(git ls-files --cached --others --exclude-standard '*.test.ts' | grep -v '^test/e2e/' | sort)
# A hung test fails after 10 min instead of eating the CI budget.
node --test --test-concurrency=2 --test-timeout=600000 "${unit[@]}"

stage "end-to-end tests"
mapfile -t e2e < <(git ls-files --cached --others --exclude-standard 'test/e2e/*.test.ts' | sort)
if [ ${#e2e[@]} -gt 0 ]; then
  node --test --test-concurrency=1 --test-timeout=2700000 "${e2e[@]}"
fi
stage "all tests passed"
