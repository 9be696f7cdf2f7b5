# shellcheck shell=bash
# hack/lib/criu-source.sh: where CRIU's upstream source tarball is on this
# machine. Sourced by hack/setup (which builds CRIU from it) and
# hack/sync-criu-protos (which copies its image schema into criu-rpc); the
# schema test of criu-rpc (criu-rpc/src/image/schema.rs) looks in the same
# places, in the same order.
#
# criu_tarball prints the path of criu_*.orig.tar.xz: $FERRY_CRIU_TARBALL,
# else the newest in ../shared/criu/ beside the repository, else the newest in
# /var/cache/ferry/criu-src/, where it fetches Debian unstable's source
# package of criu when nothing is there yet (Debian 12's criu is 3.17, too
# old; sid carries CRIU's upstream release tarball as its .orig.tar.xz).
# Needs $REPO, log and die.

FERRY_CRIU_SRC_CACHE=/var/cache/ferry/criu-src

criu_tarball() {
	local t
	if [ -n "${FERRY_CRIU_TARBALL:-}" ]; then
		[ -f "$FERRY_CRIU_TARBALL" ] || die "FERRY_CRIU_TARBALL=$FERRY_CRIU_TARBALL: no such file"
		echo "$FERRY_CRIU_TARBALL"
		return 0
	fi
	# The newest, when there are several.
	t=$(ls "$REPO"/../shared/criu/criu_*.orig.tar.xz 2>/dev/null | sort -V | tail -n1 || true)
	[ -z "$t" ] || { echo "$t"; return 0; }
	local dl=$FERRY_CRIU_SRC_CACHE
	mkdir -p "$dl"
	t=$(ls "$dl"/criu_*.orig.tar.xz 2>/dev/null | sort -V | tail -n1 || true)
	if [ -z "$t" ]; then
		[ "$(id -u)" = 0 ] || die "no CRIU tarball in ../shared/criu/ or $dl, and fetching one with apt-get needs root; set FERRY_CRIU_TARBALL=/path/to/criu_X.Y.orig.tar.xz"
		local list=/etc/apt/sources.list.d/ferry-sid-src.sources uri
		uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -m1 -E '/debian/?$' || true)
		[ -n "$uri" ] || uri=$(grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep -m1 '/debian/\?$' || true)
		[ -n "$uri" ] || die "no CRIU tarball in ../shared/criu/ and no Debian mirror found in /etc/apt/sources.list.d/ to fetch criu's source package from; set FERRY_CRIU_TARBALL=/path/to/criu_X.Y.orig.tar.xz"
		log "fetching CRIU's source from Debian sid ($uri)"
		printf 'Types: deb-src\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" >"$list"
		apt-get update -qq
		(cd "$dl" && apt-get source --download-only -qq criu >/dev/null 2>&1 || true)
		# The entry served this one download; apt should not track sid.
		rm -f "$list"
		t=$(ls "$dl"/criu_*.orig.tar.xz 2>/dev/null | sort -V | tail -n1 || true)
		[ -n "$t" ] || die "apt-get source criu did not bring criu_*.orig.tar.xz into $dl"
	fi
	echo "$t"
}
