# hack/lib/jvm-bundle.sh: helpers sourced by hack/mkbundle-spark and
# hack/mkbundle-hadoop (not run on its own).
#
# jvm_bundle DIR INPUT -- COMMAND...   makes a busybox bundle (hack/mkbundle-busybox)
#   that can run the host's Java 17 and Python: host /usr and
#   /etc/java-17-openjdk bound read-only, FERRY_CACHE (the venv and jars) bound
#   read-only at the same path, INPUT (a file) bound read-only at /in/input,
#   Ferry's own network (org.ferry.network.address, which also brings `lo` up:
#   Spark talks to itself over loopback TCP), an /etc/hosts naming the
#   container, and the command's stdio sent to /out/job.log inside the
#   container (CRIU cannot dump a container whose stdio is a host file).
#
# Environment: FERRY_CACHE (default /var/cache/ferry), FERRY_BUNDLE_ADDRESS (the
# container's address, default 10.66.0.50/32, the subnet of hack/hosts).
FERRY_CACHE=${FERRY_CACHE:-/var/cache/ferry}
JAVA_HOME_17=/usr/lib/jvm/java-17-openjdk-amd64
# Debian's Python: the venv's paths must exist inside the container, which
# sees the host's /usr (a pyenv or other python3 first in PATH would not).
HOST_PYTHON=/usr/bin/python3

jvm_die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

jvm_require_java() {
	[ -x "$JAVA_HOME_17/bin/java" ] || jvm_die "Java 17 is missing ($JAVA_HOME_17/bin/java): apt-get install openjdk-17-jdk-headless (hack/setup does)"
}

# pyspark_venv VERSION: prints the cached venv holding pyspark==VERSION,
# making it first (a ~450 MB download from PyPI, once).
pyspark_venv() {
	local v=$1 venv="$FERRY_CACHE/pyspark-$1"
	if [ ! -e "$venv/.ferry-complete" ]; then
		[ -x "$HOST_PYTHON" ] || jvm_die "$HOST_PYTHON is missing: apt-get install python3 python3-venv (hack/setup does)"
		"$HOST_PYTHON" -c 'import venv, ensurepip' 2>/dev/null || jvm_die "Debian's python3 has no venv/ensurepip: apt-get install python3-venv (hack/setup does)"
		echo "$(basename "$0"): installing pyspark==$v into $venv (once; ~450 MB)" >&2
		rm -rf "$venv"
		mkdir -p "$FERRY_CACHE"
		"$HOST_PYTHON" -m venv "$venv" >&2
		"$venv/bin/pip" install -q --disable-pip-version-check "pyspark==$v" >&2 || { rm -rf "$venv"; jvm_die "pip install pyspark==$v failed"; }
		touch "$venv/.ferry-complete"
	fi
	echo "$venv"
}

# pyspark_jars VENV: the directory of the jars pyspark ships.
pyspark_jars() {
	local d
	d=$(ls -d "$1"/lib/python3*/site-packages/pyspark/jars 2>/dev/null | head -n1)
	[ -n "$d" ] || jvm_die "no pyspark/jars under $1"
	echo "$d"
}

jvm_bundle() {
	local dir=$1 input=$2
	shift 2
	[ "${1:-}" = "--" ] && shift
	[ -f "$input" ] || jvm_die "input $input is not a file (make one with hack/corpus)"
	local here
	here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
	"$here/mkbundle-busybox" "$dir" -- /bin/sh -c 'exec </dev/null >/out/job.log 2>&1; exec "$@"' job "$@" >/dev/null
	local root="$dir/rootfs"
	ln -sfn usr/lib "$root/lib"
	ln -sfn usr/lib64 "$root/lib64"
	mkdir -p "$root/usr" "$root/etc/java-17-openjdk" "$root/in" "$root$FERRY_CACHE"
	: >"$root/in/input"
	printf '127.0.0.1 localhost ferry\n::1 localhost\n' >"$root/etc/hosts"
	"$HOST_PYTHON" - "$dir/config.json" "$(realpath "$input")" "$FERRY_CACHE" "${FERRY_BUNDLE_ADDRESS:-10.66.0.50/32}" "$JAVA_HOME_17" <<'PY'
import json, sys
path, inp, cache, addr, java_home = sys.argv[1:]
c = json.load(open(path))
ro = lambda src, dst: {"destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro"]}
c["mounts"] += [ro("/usr", "/usr"), ro("/etc/java-17-openjdk", "/etc/java-17-openjdk"),
                ro(cache, cache), ro(inp, "/in/input")]
c["process"]["env"] = ["PATH=/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8", "USER=root",
                       "JAVA_HOME=" + java_home, "HADOOP_USER_NAME=root",
                       # Every JVM, also Spark's launcher: no /tmp/hsperfdata_root/PID
                       # (a restore fails on it), see ../shared/NOTES.md.
                       "JAVA_TOOL_OPTIONS=-XX:-UsePerfData"]
c.setdefault("annotations", {})["org.ferry.network.address"] = addr
json.dump(c, open(path, "w"), indent=2)
PY
}
