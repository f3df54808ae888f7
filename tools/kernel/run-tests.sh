#!/usr/bin/env bash
# The kernel tier (`make test-kernel`): builds the kernel tier's test binary
# (e2e/tests/kernel, feature `kernel-tier`) on the host, boots a Debian
# kernel that has the WireGuard module (tools/kernel/boot.sh) and runs the
# binary in it as root. The guest sees the host's filesystem read-only with
# throwaway writable overlays, so the binaries and tools are the host's.
# Extra arguments go to the test binary (a name filter, --list, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
log() { echo "[kernel] $*" >&2; }

: "${TRELLIS_TOOLS_BIN:?run through make test-kernel (it sets TRELLIS_TOOLS_BIN)}"
cargo=${CARGO:-cargo}
log "building the kernel tier's tests"
"$cargo" build --workspace --bins
binary=$("$cargo" test -p trellis-e2e --features kernel-tier --test kernel --no-run \
	--message-format=json 2>/dev/null |
	grep '"name":"kernel"' | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
[[ -x "$binary" ]] || { log "could not find the kernel tier's test binary"; exit 1; }

# The one host directory the guest writes: the lab's logs after a failure.
results="$PWD/target/kernel-tier"
rm -rf "$results" && mkdir -p "$results"
quoted_args=""
for a in "$@"; do quoted_args+=" $(printf '%q' "$a")"; done
start=$SECONDS
status=0
TRELLIS_KERNEL_RWDIR="$results" TRELLIS_KERNEL_TIMEOUT="${TRELLIS_KERNEL_TIMEOUT:-1800}" \
	tools/kernel/boot.sh -- "TRELLIS_TOOLS_BIN=$(printf '%q' "$TRELLIS_TOOLS_BIN") \
	PATH=$(printf '%q' "$TRELLIS_TOOLS_BIN"):\$PATH TRELLIS_KERNEL_RESULTS=$(printf '%q' "$results") \
	tools/kernel/guest.sh $(printf '%q' "$binary")$quoted_args" ||
	status=$?
if ((status == 0)); then
	log "kernel tier passed in $((SECONDS - start)) s"
else
	log "kernel tier FAILED (status $status) after $((SECONDS - start)) s; the guest's console is in ${TRELLIS_KERNEL_LOG:-kernel-tier.log}, the lab's logs in $results"
fi
exit "$status"
