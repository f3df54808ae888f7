#!/usr/bin/env bash
# Runs inside the kernel tier's guest (see tools/kernel/boot.sh): prepares
# what the host's userspace expects of a booted system, then runs the
# command given (the kernel tier's test binary).
set -euo pipefail
modprobe wireguard
# trellis-wg needs /dev/net/tun (devtmpfs adds the node with the module).
modprobe tun
mkdir -p /run/netns
echo "[guest] $(uname -r), wireguard module $(cat /sys/module/wireguard/version 2>/dev/null || echo built-in), $(nproc) CPUs"
# How much slower than an ordinary core this guest runs (software emulation,
# a loaded host): the SHA-256 of 32 MiB takes about 300 ms on an idle core
# of these machines. Every deadline of the lab and the trials is stretched
# by the ratio (TRELLIS_DEADLINE_SCALE, e2e/src/deadline.rs), so a slow
# guest makes the tier slower, not red.
reference_ms=300
start_ns=$(date +%s%N)
head -c 33554432 /dev/zero | sha256sum >/dev/null
took_ms=$((($(date +%s%N) - start_ns) / 1000000))
TRELLIS_DEADLINE_SCALE=$(awk -v t="$took_ms" -v r="$reference_ms" 'BEGIN { s = t / r; if (s < 1) s = 1; printf "%.1f", s }')
export TRELLIS_DEADLINE_SCALE
echo "[guest] SHA-256 of 32 MiB took $took_ms ms (${reference_ms} ms on an idle host core): deadlines x$TRELLIS_DEADLINE_SCALE"
status=0
"$@" || status=$?
# Keep the logs of the lab (it lived in the guest's /run) where the host
# can read them.
if ((status != 0)) && [[ -n "${TRELLIS_KERNEL_RESULTS:-}" && -d /run/trellis-lab ]]; then
	(cd /run/trellis-lab && find . -name '*.log' -exec cp --parents {} "$TRELLIS_KERNEL_RESULTS/" \;)
	echo "[guest] the lab's logs are in $TRELLIS_KERNEL_RESULTS"
fi
exit "$status"
