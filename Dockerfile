# The Trellis image: static (musl) trellis-agent, trellis-cni and trellis-wg
# in /usr/local/bin, with the one program the agent runs (nft) and `wg` for
# people who `kubectl exec` in to look at the mesh, both Debian's, with the
# shared libraries they load. (The DaemonSet's init container copies
# trellis-cni to the host's CNI bin dir; the agent and trellis-wg run from
# here.)
#
# The image is built without a container engine: `make image`
# (tools/image/build.sh trellis) builds the binaries (tools/static-build.sh),
# assembles the rootfs in target/images/trellis-rootfs/ and writes
# target/images/trellis.oci.tar, a reproducible OCI image archive that
# `ctr -n k8s.io images import` takes. This file describes the same image,
# from that same rootfs, for those who have Docker; run `make image` first:
#
#   make image
#   docker build -f Dockerfile $(cat target/images/trellis.docker-build-args) \
#       -t ghcr.io/trellis-dev/trellis:0.1.0 target/images
#
# The build context is target/images (the repository's .dockerignore leaves
# target/ out). The result has the same files, entrypoint, user, environment
# and labels as target/images/trellis.oci.tar; its digest differs (Docker
# writes its own layer tar, timestamps and history).

FROM scratch
ARG VERSION
ARG REVISION
ARG SOURCE
ARG NFTABLES_VERSION
ARG WIREGUARD_TOOLS_VERSION
ARG DEBIAN_PACKAGES
COPY trellis-rootfs/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.opencontainers.image.title="trellis" \
	org.opencontainers.image.version="${VERSION}" \
	org.opencontainers.image.revision="${REVISION}" \
	org.opencontainers.image.source="${SOURCE}" \
	dev.trellis.debian.nftables="${NFTABLES_VERSION}" \
	dev.trellis.debian.wireguard-tools="${WIREGUARD_TOOLS_VERSION}" \
	dev.trellis.debian.packages="${DEBIAN_PACKAGES}"
USER 0
WORKDIR /
ENTRYPOINT ["/usr/local/bin/trellis-agent"]
