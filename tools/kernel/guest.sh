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
status=0
"$@" || status=$?
# Keep the logs of the lab (it lived in the guest's /run) where the host
# can read them.
if ((status != 0)) && [[ -n "${TRELLIS_KERNEL_RESULTS:-}" && -d /run/trellis-lab ]]; then
	(cd /run/trellis-lab && find . -name '*.log' -exec cp --parents {} "$TRELLIS_KERNEL_RESULTS/" \;)
	echo "[guest] the lab's logs are in $TRELLIS_KERNEL_RESULTS"
fi
exit "$status"
