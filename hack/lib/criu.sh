# shellcheck shell=bash
# hack/lib/criu.sh: CRIU >= 4.2 for Ferry, shared by hack/setup and
# hack/install. Sourced; the caller defines log MSG and die MSG, and REPO
# (the checkout). Debian 12's criu 3.17 fails on kernel 6.18, 4.1 cannot
# dump TCP sockets on >= 6.16 (../shared/NOTES.md): Ferry needs >= 4.2.
# Where CRIU's source tarball is: lib/criu-source.sh (criu_tarball).

# shellcheck source=criu-source.sh
. "$REPO/hack/lib/criu-source.sh"

CRIU_MIN_MAJOR=4
CRIU_MIN_MINOR=2

# Debian packages CRIU's build needs (../shared/NOTES.md).
CRIU_BUILD_PACKAGES=(
	build-essential pkg-config xz-utils
	libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler python3-protobuf
	libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libaio-dev uuid-dev
	libnftables-dev
)

# criu_ok PATH: PATH is a criu binary of version >= 4.2.
criu_ok() {
	local criu=$1 v major minor
	[ -x "$criu" ] || return 1
	v=$("$criu" --version 2>/dev/null | sed -n 's/^Version: *//p')
	[ -n "$v" ] || return 1
	major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
	[ "$major" -gt "$CRIU_MIN_MAJOR" ] || { [ "$major" -eq "$CRIU_MIN_MAJOR" ] && [ "$minor" -ge "$CRIU_MIN_MINOR" ]; }
}

# CRIU caches what it learns of the kernel (criu.kdat: a veth, a vdso
# parse, a dozen probes, 20-50 ms of every dump and restore, inside a
# migration's downtime) only on a tmpfs, in RUNDIR (/run by default). Where
# /run is not a tmpfs (this VM kind's is ext4), CRIU 4.2.1 leaves a stale
# criu.kdat.tmp behind on its first try (kerndat_save_cache unlinks the
# wrong file) and never caches again. So Ferry's CRIU is built with
# RUNDIR=/run/criu (where /run is a tmpfs, as under systemd, that is one
# too), and hack/setup mounts a tmpfs there when it is not.
CRIU_KDAT_DIR=/run/criu

# criu_kdat_ok PATH: the criu binary keeps its cache in $CRIU_KDAT_DIR.
criu_kdat_ok() {
	grep -qa "$CRIU_KDAT_DIR/criu.kdat" "$1"
}

# criu_kdat_tmpfs: $CRIU_KDAT_DIR exists and is a tmpfs.
criu_kdat_tmpfs() {
	mkdir -p "$CRIU_KDAT_DIR"
	[ "$(stat -f -c %T "$CRIU_KDAT_DIR")" = tmpfs ] ||
		mount -t tmpfs -o mode=0700,size=1m ferry-criu-kdat "$CRIU_KDAT_DIR"
}

# criu_version PATH: the version a criu binary reports.
criu_version() {
	"$1" --version 2>/dev/null | sed -n 's/^Version: *//p'
}

# build_criu TARBALL PREFIX [DESTDIR]: builds CRIU from TARBALL (see
# criu_tarball) and installs its criu (`make install-criu`: sbin/criu,
# sbin/criu-ns, its uapi headers, a libexec script) under PREFIX, staged in
# DESTDIR when given (hack/install copies from there and records every
# file).
build_criu() {
	local tarball=$1 prefix=$2 destdir=${3:-} build src
	log "building CRIU from $tarball"
	build=$(mktemp -d /tmp/ferry-criu-build.XXXXXX)
	tar -C "$build" -xf "$tarball"
	src=$(find "$build" -mindepth 1 -maxdepth 1 -type d | head -n1)
	make -C "$src" -j"$(nproc)" criu RUNDIR="$CRIU_KDAT_DIR" >"$build/build.log" 2>&1 || { tail -n 40 "$build/build.log" >&2; die "CRIU build failed; full log in $build/build.log"; }
	make -C "$src" install-criu PREFIX="$prefix" DESTDIR="$destdir" RUNDIR="$CRIU_KDAT_DIR" >>"$build/build.log" 2>&1 || { tail -n 20 "$build/build.log" >&2; die "CRIU install failed; full log in $build/build.log"; }
	criu_ok "$destdir$prefix/sbin/criu" || die "the CRIU built at $destdir$prefix/sbin/criu is not >= $CRIU_MIN_MAJOR.$CRIU_MIN_MINOR"
	rm -rf "$build"
}
