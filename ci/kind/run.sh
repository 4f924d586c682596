#!/usr/bin/env bash
# Runs hadrill against the kind HA cluster of ci/kind/kind-ha.yaml: plan first (what would be
# injected, where, how reverted), then every suite with disruption allowed, writing JUnit,
# JSON and per-case artifacts. Exits with hadrill's own exit code (0 all passed or skipped,
# 1 a case failed, 2 configuration, 3 unreachable), after the reports are written.
#
#   KIND_CLUSTER   kind cluster name (default hadrill)
#   HADRILL        the hadrill binary (default target/release/hadrill)
#   KUBE_SERVER    rewrite the kubeconfig's server (e.g. https://docker:6443 under dind)
#   OUT            report directory (default hadrill-report)
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster=${KIND_CLUSTER:-hadrill}
hadrill=${HADRILL:-target/release/hadrill}
out=${OUT:-hadrill-report}
mkdir -p "$out"
kubeconfig="$out/kubeconfig"
(umask 077 && kind get kubeconfig --name "$cluster" >"$kubeconfig")
if [[ -n "${KUBE_SERVER:-}" ]]; then
    # the LB is published on the Docker host, not on this job's localhost
    sed -i -E "s#server: https://[^ ]+#server: ${KUBE_SERVER}#" "$kubeconfig"
fi
common=(--kubeconfig "$kubeconfig" --context "kind-$cluster" --config ci/kind/hadrill.yaml)
"$hadrill" "${common[@]}" plan | tee "$out/plan.txt"
rc=0
"$hadrill" "${common[@]}" run --allow-disruption \
    --junit "$out/hadrill-junit.xml" --json "$out/hadrill.json" --artifacts "$out/artifacts" || rc=$?
# a killed or failed run must not leave a fault behind on the cluster
"$hadrill" "${common[@]}" recover || rc=$((rc ? rc : 1))
exit "$rc"
