#!/usr/bin/env bash
# Installs everything the lab and the tests need, idempotently:
#   - Debian packages (only the missing ones);
#   - Go-built tools at pinned versions (tools/versions.env) into a cache
#     outside the repository: kube-apiserver, kube-controller-manager, etcd,
#     helm, cnitool and the reference CNI plugins; kubelet, kube-scheduler and
#     kube-proxy for the lab's real nodes (with Debian's containerd and runc),
#     kubectl, the upstream e2e suite (e2e.test) with agnhost and the ginkgo
#     CLI that runs it in parallel, and CoreDNS; containerd 2 with runc
#     (in containerd-VERSION/, so Debian's containerd 1.6 stays the one on
#     PATH) for real nodes of the other runtime; and current wireguard-go,
#     the benchmarks' reference userspace device (tools/references.env).
# A cached rerun takes a second or two. Prints the tools' bin directory last.
#
#   tools/bootstrap.sh              install what is missing, print the bin dir
#   tools/bootstrap.sh --print-dir  only print the bin dir (no install)
#   tools/bootstrap.sh --no-apt     skip Debian packages
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tools/versions.env
source "$here/versions.env"
# shellcheck source=tools/references.env
source "$here/references.env"

cache_root="${TRELLIS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trellis/tools}"
# The cache key covers the versions and every recipe file, so a changed
# recipe builds into a fresh directory instead of mixing old and new.
recipe_hash="$(cat "$here/versions.env" "$here"/kube/go.* "$here"/kube/*.go \
	"$here"/etcd/go.* "$here"/etcd/*.go "$here"/containerd/go.* "$here"/containerd/*.go | sha256sum | cut -c1-12)"
tools_dir="$cache_root/k8s-$KUBERNETES_VERSION-$recipe_hash"
bin_dir="$tools_dir/bin"

if [[ "${1:-}" == "--print-dir" ]]; then
	echo "$bin_dir"
	exit 0
fi
with_apt=1
[[ "${1:-}" == "--no-apt" ]] && with_apt=0

log() { echo "[tools] $*" >&2; }

apt_packages=(iproute2 nftables wireguard-tools wireguard-go iperf3 tcpdump iputils-ping
	util-linux procps conntrack ca-certificates
	containerd runc musl-tools busybox-static binutils netcat-openbsd curl bind9-dnsutils
	libseccomp-dev pkg-config)
install_apt_packages() {
	local missing=()
	for pkg in "${apt_packages[@]}"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
			missing+=("$pkg")
	done
	if ((${#missing[@]} == 0)); then
		log "Debian packages: all ${#apt_packages[@]} present"
		return
	fi
	if [[ $(id -u) -ne 0 ]]; then
		log "missing Debian packages ${missing[*]}: run as root (or apt-get install them) first"
		exit 1
	fi
	log "installing Debian packages: ${missing[*]}"
	run_with_progress "apt-get update" env DEBIAN_FRONTEND=noninteractive apt-get update
	run_with_progress "apt-get install" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends "${missing[@]}"
}

# run_with_progress LABEL CMD...: runs CMD, printing elapsed time every 20 s
# so a long cold build is visibly alive; shows the log when it fails.
run_with_progress() {
	local label="$1" start=$SECONDS logfile
	shift
	logfile="$(mktemp)"
	"$@" >"$logfile" 2>&1 &
	local pid=$! next=20
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		if ((SECONDS - start >= next)); then
			log "  $label: still running ($((SECONDS - start))s)"
			next=$((next + 20))
		fi
	done
	if ! wait "$pid"; then
		log "  $label: FAILED after $((SECONDS - start))s; output:"
		cat "$logfile" >&2
		rm -f "$logfile"
		exit 1
	fi
	rm -f "$logfile"
	log "  $label: done in $((SECONDS - start))s"
}

# build_once STAMP LABEL CMD...: runs the build only when STAMP is missing.
build_once() {
	local stamp="$tools_dir/stamps/$1" label="$2"
	shift 2
	if [[ -e "$stamp" ]]; then
		log "$label: cached"
		return
	fi
	log "$label: building (first time only)"
	run_with_progress "$label" "$@"
	mkdir -p "$tools_dir/stamps"
	touch "$stamp"
}

build_kube() {
	local ver="$KUBERNETES_VERSION" minor
	minor="$(echo "$ver" | cut -d. -f2)"
	(cd "$here/kube" && go build -trimpath -o "$bin_dir/" \
		-ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$ver -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy \
		k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl)
}
# The upstream e2e suite (e2e.test) and its test server agnhost (static,
# for the image tools/image/build.sh makes of it), at the same version, and
# the ginkgo CLI at the version e2e.test links (the parallel protocol is
# between the two).
build_kube_e2e() {
	(cd "$here/kube" && go test -c -trimpath -ldflags "-s -w" -o "$bin_dir/e2e.test" k8s.io/kubernetes/test/e2e &&
		CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin_dir/" k8s.io/kubernetes/test/images/agnhost &&
		go build -trimpath -ldflags "-s -w" -o "$bin_dir/" github.com/onsi/ginkgo/v2/ginkgo)
}
# CoreDNS, static, for the image tools/image/build.sh makes of it.
build_coredns() { CGO_ENABLED=0 GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"; }
# containerd 2 and runc (with seccomp, as distributions build it) in a
# directory of their own: a real node of that runtime runs them from there.
containerd2_dir="$bin_dir/containerd-$CONTAINERD_VERSION"
build_containerd2() {
	local v="github.com/containerd/containerd/v2/version"
	(cd "$here/containerd" && CGO_ENABLED=0 go build -trimpath -o "$containerd2_dir/" \
		-ldflags "-s -w -X $v.Version=$CONTAINERD_VERSION -X $v.Package=github.com/containerd/containerd/v2" \
		github.com/containerd/containerd/v2/cmd/containerd \
		github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
		github.com/containerd/containerd/v2/cmd/ctr) &&
		GOBIN="$containerd2_dir" go install -trimpath -tags seccomp \
			-ldflags "-s -w -X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"
}
# The benchmarks' reference userspace device: current wireguard-go, in a
# directory named by its version (tools/references.env).
wireguard_go_dir="$bin_dir/wireguard-go-$WIREGUARD_GO_VERSION"
build_wireguard_go() {
	GOBIN="$wireguard_go_dir" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
		"golang.zx2c4.com/wireguard@$WIREGUARD_GO_VERSION" &&
		mv "$wireguard_go_dir/wireguard" "$wireguard_go_dir/wireguard-go"
}
build_etcd() { (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin_dir/etcd" .); }
build_helm() { GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"; }
build_cnitool() { GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w" "github.com/containernetworking/cni/cnitool@$CNI_VERSION"; }
# An older libcni's cnitool, as cnitool-VERSION beside the current one.
build_cnitool_old() {
	local gobin
	gobin="$(mktemp -d)"
	GOBIN="$gobin" go install -trimpath -ldflags "-s -w" "github.com/containernetworking/cni/cnitool@$CNI_OLD_VERSION"
	mv "$gobin/cnitool" "$bin_dir/cnitool-$CNI_OLD_VERSION"
	rmdir "$gobin"
}
build_cni_plugins() {
	local p="github.com/containernetworking/plugins/plugins"
	GOBIN="$bin_dir/cni" go install -trimpath -ldflags "-s -w" \
		"$p/main/bridge@$CNI_PLUGINS_VERSION" "$p/main/ptp@$CNI_PLUGINS_VERSION" \
		"$p/main/loopback@$CNI_PLUGINS_VERSION" "$p/ipam/host-local@$CNI_PLUGINS_VERSION" \
		"$p/meta/portmap@$CNI_PLUGINS_VERSION" "$p/meta/bandwidth@$CNI_PLUGINS_VERSION" \
		"$p/meta/tuning@$CNI_PLUGINS_VERSION"
}

start=$SECONDS
((with_apt)) && install_apt_packages
if ! command -v go >/dev/null; then
	log "Go is not installed: install Go 1.24 or newer (https://go.dev/dl/) and rerun"
	exit 1
fi
mkdir -p "$bin_dir/cni"
log "tools cache: $tools_dir"
build_once kube "Kubernetes $KUBERNETES_VERSION: apiserver, controller-manager, scheduler, proxy, kubelet (cold: ~8 min on 2 cores)" build_kube
build_once kube-e2e "Kubernetes $KUBERNETES_VERSION e2e.test, agnhost and ginkgo (cold: ~5 min, ~2 GB of memory)" build_kube_e2e
build_once coredns "CoreDNS $COREDNS_VERSION (cold: ~2 min)" build_coredns
build_once containerd2 "containerd $CONTAINERD_VERSION and runc $RUNC_VERSION (cold: ~2 min)" build_containerd2
build_once etcd "etcd $ETCD_VERSION" build_etcd
build_once "wireguard-go-$WIREGUARD_GO_VERSION" "wireguard-go $WIREGUARD_GO_VERSION (the benchmarks' reference)" build_wireguard_go
build_once helm "helm $HELM_VERSION" build_helm
build_once cnitool "cnitool $CNI_VERSION" build_cnitool
build_once cnitool-old "cnitool $CNI_OLD_VERSION (an older libcni)" build_cnitool_old
build_once cni-plugins "CNI reference plugins $CNI_PLUGINS_VERSION" build_cni_plugins
log "ready in $((SECONDS - start))s"
echo "$bin_dir"
