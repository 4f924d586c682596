#!/usr/bin/env bash
# Installs what hadrill's build, its local rig and its own tests need on Debian:
# protoc (etcd-client's build), etcd (the rig), HAProxy, iproute2 and iptables (rig hosts,
# partitions, latency), xmllint and Python's junitparser (independent JUnit consumers).
# Safe to run again: installs only what is missing. Needs root (or sudo).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v protoc   >/dev/null 2>&1 || need+=(protobuf-compiler)
# etcd-client's protos import google/protobuf/*.proto, shipped by libprotobuf-dev
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v etcd     >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl  >/dev/null 2>&1 || need+=(etcd-client)
command -v haproxy  >/dev/null 2>&1 || need+=(haproxy)
command -v ip       >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v xmllint  >/dev/null 2>&1 || need+=(libxml2-utils)
command -v python3  >/dev/null 2>&1 || need+=(python3 python3-pip)
command -v cc       >/dev/null 2>&1 || need+=(gcc)
# ci/bench-quorum.sh: the operators' shell baseline and hadrill's CPU/RSS figures
command -v jq       >/dev/null 2>&1 || need+=(jq)
command -v bc       >/dev/null 2>&1 || need+=(bc)
[ -x /usr/bin/time ]                || need+=(time)
# the rig's kube-mode tests: a host answers ping; the stand-in apiserver is asked with curl
# over a certificate made with openssl
command -v ping     >/dev/null 2>&1 || need+=(iputils-ping)
command -v curl     >/dev/null 2>&1 || need+=(curl)
command -v openssl  >/dev/null 2>&1 || need+=(openssl)

if [ ${#need[@]} -gt 0 ]; then
  echo "ci/install-deps.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Debian's etcd-server package starts a system etcd on 2379; the rig and the tests run their
# own members, so the packaged service is stopped and disabled when present.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi
if pgrep -x etcd >/dev/null 2>&1 && [ -f /etc/default/etcd ] && [ -z "${HADRILL_KEEP_SYSTEM_ETCD:-}" ]; then
  # no systemd in containers: the package's init script may have started one
  $SUDO service etcd stop >/dev/null 2>&1 || true
fi

if ! python3 -c 'import junitparser' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check junitparser==3.2.0 \
    || python3 -m pip install --quiet --break-system-packages junitparser==3.2.0
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "ci/install-deps.sh: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
echo "ci/install-deps.sh: ok ($(etcd --version 2>/dev/null | head -1))"
