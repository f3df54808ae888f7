#!/usr/bin/env bash
# Boots a Debian kernel that has the WireGuard module, under qemu in
# software emulation (nested KVM fails on these machines), over the host's
# own filesystem with virtme-ng, and runs a command in it as root.
# Installs what it needs the first time: qemu-system-x86, linux-image-amd64
# and busybox-static from Debian, virtme-ng from PyPI (pinned, in a venv in
# the tools cache). The command's output is shown as it comes; the whole
# console (kernel messages too) goes to $TRELLIS_KERNEL_LOG (default
# ./kernel-tier.log). A guest that hangs is stopped after
# $TRELLIS_KERNEL_TIMEOUT seconds (default 900) and its console kept.
# $TRELLIS_KERNEL_RWDIR, if set, is a host directory the guest may write
# (everything else the guest writes is thrown away).
#
#   tools/kernel/boot.sh -- 'modprobe wireguard && ip link add wg0 type wireguard && wg show'
set -euo pipefail

log() { echo "[kernel] $*" >&2; }
cache="${TRELLIS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trellis/tools}"
virtme_ng_version=1.42
venv="$cache/virtme-ng-$virtme_ng_version"
console="${TRELLIS_KERNEL_LOG:-$PWD/kernel-tier.log}"
timeout_s="${TRELLIS_KERNEL_TIMEOUT:-900}"

[[ "${1:-}" == "--" ]] && shift
command_line="${1:?usage: tools/kernel/boot.sh -- 'COMMAND'}"

missing=()
for pkg in qemu-system-x86 linux-image-amd64 busybox-static python3-venv; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
	log "installing ${missing[*]} (first time only)"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ ! -x "$venv/bin/vng" ]]; then
	log "installing virtme-ng into $venv (first time only)"
	python3 -m venv "$venv"
	"$venv/bin/pip" install -q "virtme-ng==$virtme_ng_version"
fi
# vng starts virtme-run (and its helpers) through PATH: the venv's bin must
# come first, or a machine without a virtme-ng of its own fails with
# "virtme-run: not found".
export PATH="$venv/bin:$PATH"
kernel="$(ls -1 /boot/vmlinuz-*-amd64 | sort -V | tail -1)"
log "booting $kernel (software emulation; console in $console)"
start=$SECONDS
# The guest sees the host's root read-only, with throwaway writable
# overlays (/etc, /var, /tmp, /opt, ...) and its own tmpfs /run.
set +e
timeout --kill-after=10 "$timeout_s" "$venv/bin/vng" --disable-kvm --memory 4G --cpus 2 \
	--verbose --append loglevel=4 ${TRELLIS_KERNEL_RWDIR:+--rwdir="$TRELLIS_KERNEL_RWDIR"} --run "$kernel" --user root --exec "$command_line" </dev/null 2>&1 |
	tee "$console" | grep --line-buffered -Ev '^\[ *[0-9]+\.[0-9]+\] '
status=${PIPESTATUS[0]}
set -e
if ((status == 124 || status == 137)); then
	log "the guest did not finish within ${timeout_s}s; last console lines:"
	tail -20 "$console" >&2
	exit 1
fi
log "guest finished with status $status after $((SECONDS - start))s"
exit "$status"
