#!/usr/bin/env bash
# The project's test command: installs what the tests need, builds, runs every test (unit,
# integration against real etcd members, network namespaces and iptables), then fails if any
# process, namespace or rule of ours is left on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

bash ci/install-deps.sh

# tests journal their faults in ledgers of their own; this one catches anything else
export HADRILL_LEDGER="${HADRILL_LEDGER:-$(mktemp -d)/ledger}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo build --all-targets --locked 2>&1 | tail -n 3
status=0
cargo test --locked --no-fail-fast -- --test-threads="${HADRILL_TEST_THREADS:-2}" || status=$?

bash ci/check-leftovers.sh || status=1
exit "$status"
