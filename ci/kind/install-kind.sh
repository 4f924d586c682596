#!/usr/bin/env bash
# Installs a pinned kind and kubectl into /usr/local/bin (checksums verified).
set -euo pipefail
KIND_VERSION=${KIND_VERSION:-v0.24.0}
KUBECTL_VERSION=${KUBECTL_VERSION:-v1.31.1}
arch=$(uname -m); case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
curl -fsSLo "$tmp/kind" "https://kind.sigs.k8s.io/dl/${KIND_VERSION}/kind-linux-${arch}"
curl -fsSLo "$tmp/kind.sha256" "https://kind.sigs.k8s.io/dl/${KIND_VERSION}/kind-linux-${arch}.sha256sum"
(cd "$tmp" && echo "$(cut -d' ' -f1 kind.sha256)  kind" | sha256sum -c -)
curl -fsSLo "$tmp/kubectl" "https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/${arch}/kubectl"
curl -fsSLo "$tmp/kubectl.sha256" "https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/${arch}/kubectl.sha256"
(cd "$tmp" && echo "$(cat kubectl.sha256)  kubectl" | sha256sum -c -)
install -m 0755 "$tmp/kind" "$tmp/kubectl" /usr/local/bin/
kind version && kubectl version --client
