#!/usr/bin/env bash
# Runs inside the kernel tier's guest (see tools/kernel/boot.sh): prepares
# what the host's userspace expects of a booted system, then runs the
# command given (the kernel tier's test binary).
set -euo pipefail
modprobe wireguard
mkdir -p /run/netns
echo "[guest] $(uname -r), wireguard module $(cat /sys/module/wireguard/version 2>/dev/null || echo built-in), $(nproc) CPUs"
exec "$@"
