#!/usr/bin/env bash
# Fails (and cleans up) when a test left an etcd, HAProxy or dead-man timer process, a network
# namespace, a bridge, a firewall rule or a scratch directory of hadrill's on this machine. A leftover here would be a leftover on a user's
# cluster.
set -uo pipefail

left=()
etcd_pids=$(pgrep -f 'etcd .*--name' 2>/dev/null | while read -r p; do
  if tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -Eq 'hadrill|/hdt-|hdt-'; then echo "$p"; fi
done)
[ -n "$etcd_pids" ] && left+=("etcd processes: $(echo $etcd_pids)")
others=$(pgrep -f 'haproxy|hadrill-deadman|kube-apiserver|kube-controller-manager|kube-scheduler' 2>/dev/null | while read -r p; do
  [ "$p" = "$$" ] && continue
  if tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -Eq 'hadrill|/hdt-|hdt-'; then echo "$p"; fi
done)
[ -n "$others" ] && left+=("HAProxy, Kubernetes or dead-man processes: $(echo $others)")
dirs=$(ls -d "${TMPDIR:-/tmp}"/hadrill-dr-* "${TMPDIR:-/tmp}"/hadrill-run-* 2>/dev/null || true)
[ -n "$dirs" ] && left+=("scratch directories: $(echo $dirs)")
ns=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^hd' || true)
[ -n "$ns" ] && left+=("network namespaces: $(echo $ns)")
links=$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^hd' || true)
[ -n "$links" ] && left+=("links: $(echo $links)")
rules=$( (iptables-save 2>/dev/null; nft list ruleset 2>/dev/null) | grep -ci hadrill || true)
[ "${rules:-0}" -gt 0 ] && left+=("$rules firewall line(s) naming hadrill")

if [ ${#left[@]} -eq 0 ]; then
  echo "ci/check-leftovers.sh: nothing of ours is left on this machine"
  exit 0
fi
echo "ci/check-leftovers.sh: LEFT BEHIND by the tests:" >&2
for l in "${left[@]}"; do echo "  - $l" >&2; done
# clean up so the machine is usable again, but still fail
for p in $etcd_pids $others; do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
for d in $dirs; do rm -rf "$d"; done
for n in $ns; do ip netns delete "$n" 2>/dev/null; done
for l in $links; do ip link delete "$l" 2>/dev/null; done
exit 1
