#!/usr/bin/env bash
# Builds the binaries of the container image (trellis-agent, trellis-cni,
# trellis-wg) for x86_64-unknown-linux-musl in release mode, and checks that
# each is static: no program interpreter, no shared libraries. Installs the
# Rust target and musl-tools (ring compiles C with musl-gcc) when missing.
# `make image` (tools/image/build.sh) runs this same script.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[static] $*" >&2; }
target=x86_64-unknown-linux-musl
binaries=(trellis-agent trellis-cni trellis-wg)

if ! rustup target list --installed | grep -qx "$target"; then
	log "adding the Rust target $target (first time only)"
	rustup target add "$target"
fi
missing=()
command -v musl-gcc >/dev/null || missing+=(musl-tools)
command -v readelf >/dev/null || missing+=(binutils)
if ((${#missing[@]})); then
	log "installing ${missing[*]} (first time only)"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

packages=()
for b in "${binaries[@]}"; do packages+=(-p "$b"); done
log "building ${binaries[*]} for $target (release)"
"${CARGO:-cargo}" build --release --target "$target" "${packages[@]}" --bins

status=0
for b in "${binaries[@]}"; do
	f="target/$target/release/$b"
	if readelf -lW "$f" | grep -q 'Requesting program interpreter'; then
		log "$b is NOT static: it asks for a program interpreter"
		status=1
	elif readelf -dW "$f" | grep -q '(NEEDED)'; then
		log "$b is NOT static: it needs $(readelf -dW "$f" | grep '(NEEDED)' | sed 's/.*\[\(.*\)\]/\1/' | tr '\n' ' ')"
		status=1
	else
		log "$b: static, $(($(stat -c %s "$f") / 1024)) KiB"
	fi
done
exit "$status"
