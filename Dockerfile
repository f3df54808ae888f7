# The Trellis image: static (musl) trellis-agent, trellis-cni and trellis-wg
# in a minimal Alpine base with the one program the agent runs (nft) and
# `wg` for people who `kubectl exec` in to look at the mesh.
# (The DaemonSet's init container copies trellis-cni to the host's CNI bin
# dir; the agent and trellis-wg run from here.)
#
#   docker build -t trellis:dev .
#
# `make test` builds the same binaries with tools/static-build.sh and checks
# that they are static; no container engine is needed for that.

# The toolchain the tests run with here.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN tools/static-build.sh \
	&& mkdir /out \
	&& cp target/x86_64-unknown-linux-musl/release/trellis-agent \
		target/x86_64-unknown-linux-musl/release/trellis-cni \
		target/x86_64-unknown-linux-musl/release/trellis-wg /out/

FROM alpine:3.20
RUN apk add --no-cache nftables wireguard-tools-wg
COPY --from=build /out/ /usr/local/bin/
USER 0
ENTRYPOINT ["/usr/local/bin/trellis-agent"]
