#!/usr/bin/env bash
# Builds container images without a container engine or a registry: each is
# written as an OCI image layout (oci-layout, index.json, blobs/sha256/...)
# and archived as one tar, which containerd imports with
#
#   ctr -n k8s.io images import target/images/trellis.oci.tar
#
#   tools/image/build.sh [trellis|pause|busybox|agnhost|jessie-dnsutils|coredns|all]...
#                                               (default: trellis)
#
# Images (linux/amd64, one layer each):
#   trellis  ghcr.io/trellis-dev/trellis:VERSION (the chart's image.repository,
#            the Cargo workspace's version): the static musl trellis-agent,
#            trellis-cni and trellis-wg (tools/static-build.sh builds them)
#            in /usr/local/bin, and Debian's nft and wg with every shared
#            library they load, copied from this machine at the same paths.
#            The assembled rootfs stays in OUT/trellis-rootfs/ (the
#            Dockerfile COPYs it: see there).
#   pause    registry.k8s.io/pause:TAG: build/pause/linux/pause.c of the
#            pinned Kubernetes module (tools/versions.env), compiled with
#            musl-gcc -static and the upstream Makefile's CFLAGS and TAG.
#   busybox  trellis.dev/lab/busybox:UPSTREAM-VERSION: Debian's
#            busybox-static with every applet linked in /bin, for demo pods.
#   agnhost  registry.k8s.io/e2e-test-images/agnhost:2.56: the upstream e2e
#            suite's test server (see build_agnhost).
#   jessie-dnsutils  registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7:
#            the suite's DNS querier, Debian's dig and getent (see there).
#   coredns  registry.k8s.io/coredns/coredns:VERSION: CoreDNS built from
#            the Go module proxy by tools/bootstrap.sh, the cluster DNS of
#            real-node labs.
#
# Reproducible: the same inputs give the same bytes (so the same manifest
# digest). Every timestamp (files, config "created") is SOURCE_DATE_EPOCH,
# by default the time of the last commit that changed the image's inputs:
# any commit for trellis; tools/image/ (and tools/versions.env for pause)
# for pause and busybox, so their digests stay put across other commits;
# 0 outside git. Tar members are sorted, owned by 0:0; gzip stores no name
# or time; JSON is written with a fixed key order.
#
# Environment:
#   TRELLIS_IMAGE_OUT   output directory (default: target/images)
#   SOURCE_DATE_EPOCH   the images' time in seconds (default: see above)
#
# Prints on stdout one line per image: NAME DIGEST ARCHIVE; progress goes to
# stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
log() { echo "[image] $*" >&2; }
die() {
	log "error: $*"
	exit 1
}
umask 022
export LC_ALL=C TZ=UTC

images=("$@")
((${#images[@]})) || images=(trellis)
for i in "${!images[@]}"; do
	case "${images[i]}" in
	all) images=(trellis pause busybox agnhost jessie-dnsutils coredns) && break ;;
	trellis | pause | busybox | agnhost | jessie-dnsutils | coredns) ;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
		exit 0
		;;
	*) die "unknown image '${images[i]}' (trellis, pause, busybox, agnhost, jessie-dnsutils, coredns or all)" ;;
	esac
done

out=${TRELLIS_IMAGE_OUT:-$repo/target/images}
mkdir -p "$out"
out=$(cd "$out" && pwd)
given_epoch=${SOURCE_DATE_EPOCH:-}
[[ -z "$given_epoch" || "$given_epoch" =~ ^[0-9]+$ ]] ||
	die "SOURCE_DATE_EPOCH must be seconds, not '$given_epoch'"
default_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

for tool in tar gzip sha256sum dpkg-query readelf; do
	command -v "$tool" >/dev/null || die "$tool is missing"
done

work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---- helpers ---------------------------------------------------------------

# A JSON string literal (the values here have no control characters).
json_str() {
	local s=${1//\\/\\\\}
	s=${s//\"/\\\"}
	printf '"%s"' "$s"
}

# A JSON array of strings.
json_arr() {
	local sep="" s
	printf '['
	for s in "$@"; do
		printf '%s%s' "$sep" "$(json_str "$s")"
		sep=,
	done
	printf ']'
}

# A JSON object of string values from KEY=VALUE arguments, keys sorted.
json_labels() {
	local sep="" kv
	printf '{'
	while IFS= read -r kv; do
		[[ -n "$kv" ]] || continue
		printf '%s%s:%s' "$sep" "$(json_str "${kv%%=*}")" "$(json_str "${kv#*=}")"
		sep=,
	done < <(printf '%s\n' "$@" | sort -t= -k1,1 -u)
	printf '}'
}

# Sets epoch and created: SOURCE_DATE_EPOCH if given, else the time of the
# last commit that changed PATH... (any commit without PATHs), else 0.
set_epoch() {
	epoch=$given_epoch
	if [[ -z "$epoch" ]]; then
		epoch=$(git log -1 --format=%ct -- "$@" 2>/dev/null || true)
		epoch=${epoch:-0}
	fi
	created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Deterministic tar of the entries ENTRY... of DIR to stdout.
det_tar() {
	local dir=$1
	shift
	tar -C "$dir" --sort=name --format=gnu --numeric-owner --owner=0 --group=0 \
		--mtime="@$epoch" --no-acls --no-selinux --no-xattrs \
		-cf - "$@"
}

# Moves FILE into the layout's blobs; sets blob_digest and blob_size.
add_blob() {
	local layout=$1 file=$2 hex
	hex=$(sha256_of "$file")
	mkdir -p "$layout/blobs/sha256"
	mv "$file" "$layout/blobs/sha256/$hex"
	blob_digest=sha256:$hex
	blob_size=$(stat -c %s "$layout/blobs/sha256/$hex")
}

# Copies the host's PATH into ROOT at the same path. Symbolic links on the
# way (the merged /lib -> usr/lib, soname links, /lib64/ld-linux-x86-64.so.2)
# are recreated as links and followed, so the image resolves PATH the way
# this machine does.
copy_in() {
	local root=$1 path prefix="" link target i j
	path=$(realpath -sm -- "$2")
	local -a parts
	IFS=/ read -ra parts <<<"${path#/}"
	for ((i = 0; i < ${#parts[@]}; i++)); do
		prefix+="/${parts[i]}"
		if [[ -L "$prefix" ]]; then
			link=$(readlink -- "$prefix")
			if [[ ! -e "$root$prefix" && ! -L "$root$prefix" ]]; then
				mkdir -p "$root$(dirname -- "$prefix")"
				ln -s -- "$link" "$root$prefix"
			fi
			[[ "$link" == /* ]] || link="$(dirname -- "$prefix")/$link"
			target=$link
			for ((j = i + 1; j < ${#parts[@]}; j++)); do target+="/${parts[j]}"; done
			copy_in "$root" "$target"
			return
		fi
	done
	[[ -f "$path" ]] || die "$path is not a file"
	if [[ ! -e "$root$path" ]]; then
		mkdir -p "$root$(dirname -- "$path")"
		cp -- "$path" "$root$path"
		copied_files+=("$path")
	fi
}

# Copies the dynamically linked PROGRAM, its program interpreter and every
# shared library ldd resolves for it.
copy_with_libs() {
	local root=$1 prog=$2 line lib deps interp
	copy_in "$root" "$prog"
	interp=$(readelf -lW "$prog" | sed -n 's/.*Requesting program interpreter: \(.*\)]$/\1/p')
	[[ -n "$interp" ]] || die "$prog has no program interpreter: not dynamically linked?"
	copy_in "$root" "$interp"
	deps=$(ldd "$prog") || die "ldd $prog failed: $deps"
	while IFS= read -r line; do
		line=${line#"${line%%[![:space:]]*}"}
		case "$line" in
		*"not found"*) die "$prog: a library is missing: $line" ;;
		*"=> /"*) lib=${line#*=> } lib=${lib%% (*} ;;
		/*) lib=${line%% (*} ;;
		*) continue ;; # linux-vdso.so.1, statically linked
		esac
		copy_in "$root" "$lib"
	done <<<"$deps"
}

# The Debian packages the host files FILE... came from, as PKG=VERSION lines.
debian_packages() {
	local f pkg
	for f in "$@"; do
		# dpkg knows the paths before the /usr merge (/lib/x86_64-linux-gnu/...).
		pkg=$(dpkg -S "$f" 2>/dev/null || dpkg -S "${f#/usr}" 2>/dev/null) ||
			die "no Debian package owns $f"
		pkg=${pkg%%$'\n'*}
		pkg=${pkg%%: *}
		pkg=${pkg%%:*} # libc6:amd64 -> libc6
		echo "$pkg=$(dpkg-query -W -f='${Version}' "$pkg")"
	done | sort -u
}

# The file of the installed Debian package PKG whose path ends in SUFFIX.
deb_file() {
	local files
	files=$(dpkg -L "$1") || die "the Debian package $1 is not installed"
	grep -m1 -- "$2\$" <<<"$files" || die "the Debian package $1 has no $2"
}

# Version of an installed Debian package (fails when not installed).
deb_version() {
	dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null | grep '^install ok installed ' |
		cut -d' ' -f4 || die "the Debian package $1 is not installed (tools/bootstrap.sh installs it)"
}

# write_image KEY NAME ROOTFS PROCESS USER ENV LABELS
#   KEY: the archive's name (OUT/KEY.oci.tar); NAME: registry/repo:tag;
#   PROCESS: the config's "Cmd" and/or "Entrypoint" members (JSON, in that
#   order); ENV: a JSON array; LABELS: a JSON object.
write_image() {
	local key=$1 name=$2 rootfs=$3 process=$4 user=$5 env=$6 labels=$7
	local layout="$work/$key.layout" tag=${2##*:} diff_id
	local layer_digest layer_size config_digest config_size manifest_digest manifest_size
	rm -rf "$layout"
	mkdir -p "$layout"
	log "$key: layer of $(find "$rootfs" -mindepth 1 | wc -l) entries, time $created ($epoch)"
	local -a entries
	mapfile -t entries < <(cd "$rootfs" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | sort)
	det_tar "$rootfs" "${entries[@]}" >"$work/layer.tar"
	diff_id=sha256:$(sha256_of "$work/layer.tar")
	gzip -n -9 -c "$work/layer.tar" >"$work/layer.tar.gz"
	rm "$work/layer.tar"
	add_blob "$layout" "$work/layer.tar.gz"
	layer_digest=$blob_digest layer_size=$blob_size

	{
		printf '{"architecture":"amd64","config":{%s,"Env":%s,"Labels":%s,"User":%s,"WorkingDir":"/"},' \
			"$process" "$env" "$labels" "$(json_str "$user")"
		printf '"created":"%s","history":[{"created":"%s","created_by":%s}],' \
			"$created" "$created" "$(json_str "tools/image/build.sh $key")"
		printf '"os":"linux","rootfs":{"diff_ids":["%s"],"type":"layers"}}' "$diff_id"
	} >"$work/config.json"
	add_blob "$layout" "$work/config.json"
	config_digest=$blob_digest config_size=$blob_size

	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
		"$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
	add_blob "$layout" "$work/manifest.json"
	manifest_digest=$blob_digest manifest_size=$blob_size

	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":%s,"org.opencontainers.image.ref.name":%s}}]}' \
		"$manifest_digest" "$manifest_size" "$(json_str "$name")" "$(json_str "$tag")" >"$layout/index.json"
	printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

	det_tar "$layout" oci-layout index.json blobs >"$work/$key.oci.tar"
	mv "$work/$key.oci.tar" "$out/$key.oci.tar"
	rm -rf "$layout"
	log "$key: $name $manifest_digest, layer $((layer_size / 1024)) KiB, archive $(($(stat -c %s "$out/$key.oci.tar") / 1024)) KiB -> $out/$key.oci.tar"
	echo "$name $manifest_digest $out/$key.oci.tar"
}

# A fresh rootfs directory with /etc/passwd and /etc/group for root and
# nobody, and /tmp.
new_rootfs() {
	local root=$1
	rm -rf "$root"
	mkdir -p "$root/etc" "$root/tmp"
	chmod 1777 "$root/tmp"
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}

# ---- the images ------------------------------------------------------------

build_trellis() {
	local version repository name root bin nft wg nft_version wg_version
	version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)
	[[ -n "$version" ]] || die "no version in Cargo.toml's [workspace.package]"
	repository=$(awk '/^image:/ { f = 1; next } f && /^[^ ]/ { exit } f && $1 == "repository:" { print $2; exit }' charts/trellis/values.yaml)
	[[ -n "$repository" ]] || die "no image.repository in charts/trellis/values.yaml"
	name="$repository:$version"

	log "trellis: building the static binaries (tools/static-build.sh; slow the first time)"
	tools/static-build.sh
	bin=target/x86_64-unknown-linux-musl/release

	nft_version=$(deb_version nftables)
	wg_version=$(deb_version wireguard-tools)
	nft=$(deb_file nftables /sbin/nft)
	wg=$(deb_file wireguard-tools /bin/wg)

	root="$out/trellis-rootfs"
	log "trellis: assembling $root"
	new_rootfs "$root"
	# The agent's and the device's sockets; /var/run is /run as on Debian.
	mkdir -p "$root/run" "$root/var"
	ln -s ../run "$root/var/run"
	mkdir -p "$root/usr/local/bin"
	for b in trellis-agent trellis-cni trellis-wg; do
		install -m 0755 "$bin/$b" "$root/usr/local/bin/$b"
	done
	copied_files=()
	# /usr/sbin/nft and /usr/bin/wg (dpkg says /usr/sbin/nft, /usr/bin/wg).
	copy_with_libs "$root" "$nft"
	copy_with_libs "$root" "$wg"
	local packages
	packages=$(debian_packages "${copied_files[@]}" | paste -sd, -)
	log "trellis: nft and wg with ${#copied_files[@]} files of ${packages//,/ }"
	local revision source
	revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
	source=$(sed -n 's/^repository = "\(.*\)"$/\1/p' Cargo.toml)

	# `docker build` of the Dockerfile makes the same image from $root with
	# these (no value has a space).
	printf -- '--build-arg %s ' "VERSION=$version" "REVISION=$revision" "SOURCE=$source" \
		"NFTABLES_VERSION=$nft_version" "WIREGUARD_TOOLS_VERSION=$wg_version" \
		"DEBIAN_PACKAGES=$packages" >"$out/trellis.docker-build-args"
	echo >>"$out/trellis.docker-build-args"

	write_image trellis "$name" "$root" '"Entrypoint":["/usr/local/bin/trellis-agent"]' 0 \
		"$(json_arr "PATH=$default_path")" \
		"$(json_labels \
			"org.opencontainers.image.title=trellis" \
			"org.opencontainers.image.version=$version" \
			"org.opencontainers.image.revision=$revision" \
			"org.opencontainers.image.source=$source" \
			"dev.trellis.debian.nftables=$nft_version" \
			"dev.trellis.debian.wireguard-tools=$wg_version" \
			"dev.trellis.debian.packages=$packages")"
}

# Sets kube_version (tools/versions.env) and kube_dir, the source of
# k8s.io/kubernetes at that version in the Go module cache.
kube_module() {
	command -v go >/dev/null || PATH=/usr/local/go/bin:$PATH
	command -v go >/dev/null || die "go is missing"
	kube_version=$(sed -n 's/^KUBERNETES_VERSION=//p' tools/versions.env)
	[[ -n "$kube_version" ]] || die "no KUBERNETES_VERSION in tools/versions.env"
	log "k8s.io/kubernetes@$kube_version from the Go module cache (downloaded the first time)"
	local json cache
	# The module cache first, as a proxy of its own: a plain `go mod
	# download` asks the proxy even when the version is cached (seen: it
	# fails while the proxy is out of reach). What is
	# in the cache was checked against the checksum database when it came.
	cache=$(go env GOMODCACHE)/cache/download
	if ! json=$(cd "$work" && GOFLAGS=-mod=mod GOPROXY="file://$cache" GOSUMDB=off \
		go mod download -json "k8s.io/kubernetes@$kube_version" 2>/dev/null); then
		json=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$kube_version") ||
			die "go mod download k8s.io/kubernetes@$kube_version failed: $json"
	fi
	kube_dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
	[[ -d "$kube_dir" ]] || die "no source directory for k8s.io/kubernetes@$kube_version"
}

build_pause() {
	local kube_version kube_dir dir src tag root musl_version
	command -v musl-gcc >/dev/null || die "musl-gcc is missing (apt-get install musl-tools)"
	command -v strip >/dev/null || die "strip is missing (apt-get install binutils)"
	kube_module
	dir=$kube_dir
	src="$dir/build/pause/linux/pause.c"
	[[ -f "$src" ]] || die "no $src"
	# The upstream Makefile: TAG ?= 3.10.1, CFLAGS = -Os -Wall -Werror -static
	# -DVERSION=v$(TAG)-$(REV), REV from git describe of the Kubernetes tree
	# (here: the module's version), then strip.
	tag=$(sed -n 's/^TAG ?= *//p' "$dir/build/pause/Makefile")
	[[ -n "$tag" ]] || die "no TAG in $dir/build/pause/Makefile"
	musl_version=$(deb_version musl-tools)
	log "pause: musl-gcc -Os -Wall -Werror -static -DVERSION=v$tag-$kube_version"
	root="$work/pause-rootfs"
	rm -rf "$root"
	mkdir -p "$root"
	musl-gcc -Os -Wall -Werror -static "-DVERSION=v$tag-$kube_version" -o "$root/pause" "$src"
	strip "$root/pause"
	chmod 0755 "$root/pause"
	write_image pause "registry.k8s.io/pause:$tag" "$root" '"Entrypoint":["/pause"]' 65535:65535 \
		"$(json_arr "PATH=$default_path")" \
		"$(json_labels \
			"dev.trellis.source=k8s.io/kubernetes@$kube_version/build/pause/linux/pause.c" \
			"dev.trellis.debian.musl-tools=$musl_version")"
}

# A rootfs at $1 with Debian's static busybox and its applets in /bin.
build_busybox_rootfs() {
	local bb root=$1 applet applets n=0
	bb=$(deb_file busybox-static /bin/busybox)
	new_rootfs "$root"
	mkdir -p "$root/bin" "$root/root"
	chmod 0700 "$root/root"
	install -m 0755 "$bb" "$root/bin/busybox"
	applets=$("$root/bin/busybox" --list) || die "busybox --list failed"
	while IFS= read -r applet; do
		[[ "$applet" == busybox || -z "$applet" ]] && continue
		ln -s busybox "$root/bin/$applet"
		n=$((n + 1))
	done <<<"$applets"
	log "busybox applets: $n in /bin"
}

build_busybox() {
	local version upstream root
	version=$(deb_version busybox-static)
	upstream=${version#*:}
	upstream=${upstream%%-*}
	root="$work/busybox-rootfs"
	build_busybox_rootfs "$root"
	log "busybox: busybox-static $version"
	write_image busybox "trellis.dev/lab/busybox:$upstream" "$root" '"Cmd":["sh"]' 0 \
		"$(json_arr "PATH=$default_path")" \
		"$(json_labels "dev.trellis.debian.busybox-static=$version")"
}

# Debian's bash as /bin/sh and /bin/bash over the busybox applets in ROOT
# (busybox's sh runs its own applets first, whatever else is in PATH).
bash_as_sh() {
	local root=$1
	copy_with_libs "$root" "$(deb_file bash /bin/bash)"
	# copy_in puts it where the host has it (/usr/bin, merged /usr).
	rm -f "$root/bin/sh" "$root/bin/bash"
	ln -s /usr/bin/bash "$root/bin/sh"
	ln -s /usr/bin/bash "$root/bin/bash"
}

# Debian's dig (bind9-dnsutils) and getent (libc-bin, whose libc has the
# files and dns NSS modules built in) into ROOT, with hosts looked up as
# on Debian (files, then dns). The suite's DNS specs run both in their
# queriers.
dns_tools() {
	local root=$1
	copy_with_libs "$root" "$(deb_file bind9-dnsutils /bin/dig)"
	copy_with_libs "$root" "$(deb_file libc-bin /bin/getent)"
	rm -f "$root/bin/dig" "$root/bin/getent"
	printf 'passwd: files\ngroup: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n' \
		>"$root/etc/nsswitch.conf"
}

# agnhost, the upstream e2e suite's test server, built from Kubernetes'
# test/images/agnhost by tools/bootstrap.sh (CGO off: static), under the
# name and tag the v1.34 suite asks for (test/utils/image/manifest.go).
# As its Dockerfile makes it: /agnhost and /agnhost-2, porter's
# localhost.crt and localhost.key in / (its TLS ports), /uploads, the
# user-defined-in-image user (1000) in group-defined-in-image (50000). The
# suite runs shell commands in it as in the upstream image (Alpine with
# bind-tools, curl, netcat-openbsd, bash): curl, an OpenBSD-style nc (-u),
# dig and getent, here Debian's with their libraries over the busybox
# applets, and /bin/sh is bash.
build_agnhost() {
	local agnhost root kube_version kube_dir
	agnhost=${TRELLIS_AGNHOST:-$(tools/bootstrap.sh --print-dir)/agnhost}
	[[ -x "$agnhost" ]] || die "no agnhost at $agnhost (tools/bootstrap.sh builds it)"
	kube_module
	root="$work/agnhost-rootfs"
	build_busybox_rootfs "$root"
	install -m 0755 "$agnhost" "$root/agnhost"
	ln -s agnhost "$root/agnhost-2"
	install -m 0644 "$kube_dir/test/images/agnhost/porter/localhost.crt" "$root/localhost.crt"
	install -m 0644 "$kube_dir/test/images/agnhost/porter/localhost.key" "$root/localhost.key"
	mkdir -p "$root/uploads"
	echo 'user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh' >>"$root/etc/passwd"
	printf 'user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n' >>"$root/etc/group"
	copied_files=()
	bash_as_sh "$root"
	copy_with_libs "$root" "$(deb_file curl /usr/bin/curl)"
	copy_with_libs "$root" "$(deb_file netcat-openbsd /bin/nc.openbsd)"
	rm -f "$root/bin/nc"
	ln -s /usr/bin/nc.openbsd "$root/bin/nc"
	dns_tools "$root"
	write_image agnhost "registry.k8s.io/e2e-test-images/agnhost:2.56" "$root" \
		'"Entrypoint":["/agnhost"],"Cmd":["pause"]' 0 \
		"$(json_arr "PATH=$default_path")" \
		"$(json_labels "dev.trellis.source=k8s.io/kubernetes@$kube_version/test/images/agnhost" \
			"dev.trellis.debian.packages=$(debian_packages "${copied_files[@]}" | paste -sd, -)")"
}

# The suite's DNS querier: upstream it is Debian jessie with dnsutils, and
# the suite runs `dig` and `getent hosts` in a shell loop in it. Here it is
# this machine's Debian dig and getent (newer than jessie's) with bash and
# the busybox applets; its default command sleeps, as upstream's does.
build_jessie_dnsutils() {
	local root="$work/jessie-dnsutils-rootfs"
	build_busybox_rootfs "$root"
	copied_files=()
	bash_as_sh "$root"
	dns_tools "$root"
	write_image jessie-dnsutils "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7" "$root" \
		'"Cmd":["sleep","3600"]' 0 \
		"$(json_arr "PATH=$default_path")" \
		"$(json_labels "dev.trellis.debian.packages=$(debian_packages "${copied_files[@]}" | paste -sd, -)")"
}

# CoreDNS (static, CGO off) under the name kubeadm v1.34 deploys, at the
# pinned COREDNS_VERSION. As the upstream image: /coredns is the
# entrypoint, the Corefile comes from the Deployment. The user is root
# (the upstream image's nonroot user needs a file capability to bind port
# 53; the lab's Deployment drops every capability but NET_BIND_SERVICE).
build_coredns() {
	local coredns version root
	version=$(sed -n 's/^COREDNS_VERSION=//p' tools/versions.env)
	[[ -n "$version" ]] || die "no COREDNS_VERSION in tools/versions.env"
	coredns=${TRELLIS_COREDNS:-$(tools/bootstrap.sh --print-dir)/coredns}
	[[ -x "$coredns" ]] || die "no coredns at $coredns (tools/bootstrap.sh builds it)"
	root="$work/coredns-rootfs"
	new_rootfs "$root"
	install -m 0755 "$coredns" "$root/coredns"
	write_image coredns "registry.k8s.io/coredns/coredns:$version" "$root" \
		'"Entrypoint":["/coredns"]' 0 \
		"$(json_arr "PATH=$default_path")" \
		"$(json_labels "dev.trellis.source=github.com/coredns/coredns@$version")"
}

log "building ${images[*]} into $out"
for image in "${images[@]}"; do
	case "$image" in
	trellis) set_epoch ;;
	pause) set_epoch tools/image tools/versions.env ;;
	busybox) set_epoch tools/image ;;
	agnhost) set_epoch tools/image tools/versions.env tools/kube ;;
	jessie-dnsutils) set_epoch tools/image ;;
	coredns) set_epoch tools/image tools/versions.env ;;
	esac
	"build_${image//-/_}"
done
