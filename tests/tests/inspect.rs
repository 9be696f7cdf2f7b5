//! `ferry inspect` against real CRIU dumps, checked against Debian's crit
//! (the Python decoder CRIU ships): for a busybox counter, a
//! multi-process container with pipes, unix and inet sockets, an eventfd
//! and an epoll, and a JVM, the process tree, the threads, the open files
//! and the dump statistics `ferry inspect --json` reports are what crit
//! decodes from the same files, and every image crit decodes, Ferry
//! decodes into as many entries. Also: damaged images are refused with
//! the file and offset, `diff` sees what changed between two checkpoints,
//! and a checkpoint exported on one root is imported on another where the
//! counter goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_tests::*;
use serde_json::Value;

fn unique(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Debian's crit; the comparison needs it, so its absence fails the test.
fn crit() -> PathBuf {
    for p in ["/usr/bin/crit", "/usr/local/bin/crit"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("crit is missing: install Debian's criu package (it ships crit; hack/setup does)");
}

fn crit_out(args: &[&str]) -> String {
    let out = Command::new(crit()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "crit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `crit decode -i FILE --pretty`, or `None` when crit cannot decode it.
fn crit_decode(file: &Path) -> Option<Value> {
    let out = Command::new(crit())
        .args(["decode", "-i", s(file), "--pretty"])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn inspect_json(root: &Root, target: &Path, view: &str) -> Value {
    let mut args = vec!["inspect", "--json", s(target)];
    if !view.is_empty() {
        args.push(view);
    }
    serde_json::from_str(&root.ok(&args)).unwrap()
}

/// crit's number, which `--pretty` prints in hex for some fields.
fn num(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(s) => match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).unwrap(),
            None => s.parse().unwrap(),
        },
        v => panic!("not a number: {v}"),
    }
}

/// The string crit's `x DIR fds` prints for one of our fds.
fn crit_style(fd: &Value) -> String {
    let t = fd["type"].as_str().unwrap();
    match t {
        "REG" => fd["path"].as_str().unwrap().to_string(),
        "PIPE" => format!("pipe[{}]", fd["pipe_id"]),
        "UNIXSK" => {
            let sk = &fd["socket"];
            let name = sk["name"].as_str().unwrap_or("");
            let n = if name.is_empty() {
                String::new()
            } else {
                format!(" {name}")
            };
            format!(
                "unix[{} ({}){n}]",
                sk["ino"],
                sk["peer"].as_u64().unwrap_or(0)
            )
        }
        t => format!("{t}.{}", fd["id"]),
    }
}

/// crit prints a unix socket's name quoted-printable, NULs and all: a
/// leading NUL (an abstract name) is `@` as Ferry (and ss) print it, the
/// NUL ending a path is not part of the name.
fn unquote_unix(v: &str) -> String {
    let Some(inner) = v.strip_prefix("unix[").and_then(|v| v.strip_suffix(']')) else {
        return v.to_string();
    };
    let Some((ids, name)) = inner.split_once(") ") else {
        return v.to_string();
    };
    let name = name.replace("=3D", "=");
    let name = match name.strip_prefix("=00") {
        Some(rest) => format!("@{rest}"),
        None => name,
    };
    let mut name = name.as_str();
    while let Some(n) = name.strip_suffix("=00") {
        name = n;
    }
    format!("unix[{ids}) {name}]")
}

/// What Ferry and crit say about the images in `images` agree: process
/// tree, threads, fds (with cwd and root), dump statistics, and the entry
/// count of every image crit decodes. Returns Ferry's summary.
/// `whole_netns`: the container's network namespace was dumped by CRIU
/// (it held more than a new one), so its links are in the images.
fn agree_with_crit(root: &Root, images: &Path, whole_netns: bool) -> Value {
    let all = inspect_json(root, images, "");
    let ps = inspect_json(root, images, "ps");
    let procs: BTreeMap<u64, &Value> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["pid"].as_u64().unwrap(), p))
        .collect();
    assert_eq!(all["processes"].as_array().unwrap().len(), procs.len());

    // The process tree: crit x DIR ps prints PID PGID SID and the command,
    // indented four spaces per level.
    let depth = |mut pid: u64| {
        let mut d = 0;
        while let Some(p) = procs.get(&pid) {
            pid = p["ppid"].as_u64().unwrap();
            if procs.contains_key(&pid) {
                d += 1;
            }
        }
        d
    };
    let text = crit_out(&["x", s(images), "ps"]);
    let mut seen = BTreeSet::new();
    for line in text.lines().skip(1) {
        let nums: Vec<u64> = line[..21]
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        let rest = &line[24..];
        let comm = rest.trim_start();
        let indent = (rest.len() - comm.len()) / 4;
        let p = procs
            .get(&nums[0])
            .unwrap_or_else(|| panic!("crit lists pid {} that ferry does not: {ps}", nums[0]));
        assert_eq!(p["pgid"].as_u64().unwrap(), nums[1], "pgid of {}", nums[0]);
        assert_eq!(p["sid"].as_u64().unwrap(), nums[2], "sid of {}", nums[0]);
        assert_eq!(p["comm"].as_str().unwrap(), comm, "comm of {}", nums[0]);
        assert_eq!(depth(nums[0]), indent, "depth of {} in the tree", nums[0]);
        seen.insert(nums[0]);
    }
    assert_eq!(
        seen,
        procs.keys().copied().collect(),
        "crit and ferry list the same processes"
    );

    // Threads, from crit's decode of pstree.img.
    let tree = crit_decode(&images.join("pstree.img")).expect("crit decodes pstree.img");
    for e in tree["entries"].as_array().unwrap() {
        let pid = num(&e["pid"]);
        let crit_threads: Vec<u64> = e["threads"].as_array().unwrap().iter().map(num).collect();
        let ours: Vec<u64> = procs[&pid]["threads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tid"].as_u64().unwrap())
            .collect();
        assert_eq!(ours, crit_threads, "threads of {pid}");
        assert_eq!(num(&e["ppid"]), procs[&pid]["ppid"].as_u64().unwrap());
    }

    // Open files: crit x DIR fds.
    let fds = inspect_json(root, images, "fds");
    let mut ours: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    for p in fds.as_array().unwrap() {
        let v = ours.entry(p["pid"].as_u64().unwrap()).or_default();
        for f in p["fds"].as_array().unwrap() {
            v.push((f["fd"].to_string(), crit_style(f)));
        }
        for k in ["cwd", "root"] {
            v.push((k.to_string(), p[k].as_str().unwrap().to_string()));
        }
    }
    let mut theirs: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    let mut pid = 0;
    for line in crit_out(&["x", s(images), "fds"]).lines() {
        match line.strip_prefix('\t') {
            None => pid = line.trim().parse().unwrap(),
            Some(l) => {
                let (k, v) = l.split_once(": ").unwrap();
                theirs
                    .entry(pid)
                    .or_default()
                    .push((k.trim().to_string(), unquote_unix(v)));
            }
        }
    }
    assert_eq!(ours, theirs, "fds: ferry (left) and crit (right)");

    // Dump statistics.
    let crit_stats = crit_decode(&images.join("stats-dump")).expect("crit decodes stats-dump");
    let theirs = &crit_stats["entries"][0]["dump"];
    let ours = &inspect_json(root, images, "stats")["dump"];
    for k in [
        "freezing_time",
        "frozen_time",
        "memdump_time",
        "memwrite_time",
        "pages_scanned",
        "pages_skipped_parent",
        "pages_written",
        "pages_lazy",
    ] {
        assert_eq!(ours[k].as_u64().unwrap(), num(&theirs[k]), "stats {k}");
    }
    assert!(ours["pages_written"].as_u64().unwrap() > 0);

    // Every image crit decodes, ferry decodes to the same kind and number
    // of entries; the essential ones must be among them.
    let mut compared = BTreeSet::new();
    for e in std::fs::read_dir(images).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".img") || name.starts_with("stats-"))
            || name.starts_with("pages-")
            || name.ends_with(".json")
        {
            continue;
        }
        let Some(theirs) = crit_decode(&e.path()) else {
            continue;
        };
        let ours: Value = serde_json::from_str(&root.ok(&["inspect", "decode", s(&e.path())]))
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(ours["magic"], theirs["magic"], "{name}");
        assert_eq!(
            ours["entries"].as_array().map(Vec::len),
            theirs["entries"].as_array().map(Vec::len),
            "{name}: entries"
        );
        compared.insert(theirs["magic"].as_str().unwrap().to_string());
    }
    for k in [
        "INVENTORY",
        "PSTREE",
        "CORE",
        "IDS",
        "MM",
        "PAGEMAP",
        "FDINFO",
        "FILES",
        "FS",
        "MNTS",
        "CGROUP",
        "STATS",
    ]
    .into_iter()
    .chain(whole_netns.then_some("NETDEV"))
    {
        assert!(compared.contains(k), "{k} was not compared: {compared:?}");
    }
    assert_eq!(
        images.join("ferry-fresh-netns.json").exists(),
        !whole_netns,
        "a namespace that looks new is dumped as external, any other whole"
    );
    all
}

fn wait_file(p: &Path, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_busybox_counter_dump_agrees_with_crit() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(tmp.path(), COUNTER);
    let id = unique("insb");
    root.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    wait_numbers(&bundle.join("rootfs/out/count"), 5);
    // An address more than a new namespace has: CRIU dumps the namespace
    // whole, links and addresses (NETDEV) included.
    beyond_a_new_netns(root.pid(&id));
    let images = tmp.path().join("images");
    root.ok(&["checkpoint", "--image-path", s(&images), &id]);

    let all = agree_with_crit(&root, &images, true);
    assert!(
        all["criu"]["version"].as_str().unwrap().starts_with("4."),
        "{}",
        all["criu"]
    );
    let init = &all["processes"][0];
    assert_eq!(init["comm"], "sh");
    let cmd: Vec<&str> = init["cmdline"]
        .as_array()
        .expect("the command line is read from the dumped memory")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cmd, COUNTER, "the counter's command line");
    assert!(init["memory"]["pages_dumped"].as_u64().unwrap() > 0);
    assert!(init["memory"]["by_kind"]["file_private"].as_u64().unwrap() > 0);
    assert!(all["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountpoint"] == "/proc" && m["fstype"] == "proc"));
    let text = root.ok(&["inspect", s(&images)]);
    for want in [
        "CRIU 4.",
        "PID",
        "sh -c",
        "open files:",
        "mounts:",
        "frozen",
    ] {
        assert!(text.contains(want), "summary lacks `{want}`:\n{text}");
    }

    // A damaged image is named, with its offset; nothing panics.
    let bad = tmp.path().join("bad");
    copy_bundle(&images, &bad);
    let core = bad.join("core-1.img");
    let len = std::fs::metadata(&core).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&core).unwrap();
    f.set_len(len - 7).unwrap();
    let err = root.fails(&["inspect", s(&bad)]);
    assert!(
        err.contains("core-1.img at offset 8") && err.contains("truncated"),
        "{err}"
    );
    std::fs::write(bad.join("pstree.img"), b"not an image at all").unwrap();
    let err = root.fails(&["inspect", "decode", s(&bad.join("pstree.img"))]);
    assert!(err.contains("pstree.img at offset 0: wrong magic"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let err = root.fails(&[
        "restore",
        "--image-path",
        s(&bad),
        "--bundle",
        s(&bundle),
        &id,
    ]);
    assert!(err.contains("corrupt checkpoint"), "{err}");
}

#[test]
fn diff_shows_what_changed_between_two_checkpoints() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(tmp.path(), COUNTER);
    let id = unique("insd");
    root.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    let count = bundle.join("rootfs/out/count");
    wait_numbers(&count, 5);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    root.ok(&["checkpoint", "--leave-running", "--image-path", s(&a), &id]);
    let n = numbers(&count).len();
    wait_numbers(&count, n + 5);
    root.ok(&["checkpoint", "--image-path", s(&b), &id]);
    assert_eq!(
        root.ok(&["inspect", "diff", s(&a), s(&a)]).trim(),
        "no differences"
    );
    let changes: Value =
        serde_json::from_str(&root.ok(&["inspect", "--json", "diff", s(&a), s(&b)])).unwrap();
    let paths: Vec<&str> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    // The counter's `sleep` is a new process in every dump.
    assert!(
        paths.iter().any(|p| p.starts_with("processes.")),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.starts_with("stats.dump.")),
        "{paths:?}"
    );
    let text = root.ok(&["inspect", "diff", s(&a), s(&b)]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("+ processes.") || l.starts_with("- processes.")),
        "{text}"
    );
}

/// A python3 container: a forked child sharing a pipe and a unix
/// socketpair, a busybox `sh` pipeline, a listening TCP socket, a bound
/// UDP socket, an abstract and a path-bound unix socket, an eventfd and an
/// epoll watching the TCP socket and the pipe.
const MULTI: &str = r#"
import os, select, socket, subprocess, time
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(('0.0.0.0', 7777))
tcp.listen(8)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(('0.0.0.0', 7778))
a, b = socket.socketpair()
ab = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ab.bind('\0ferry-inspect')
ab.listen(1)
dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
dg.bind('/tmp/ferry.sock')
r, w = os.pipe()
efd = os.eventfd(3)
ep = select.epoll()
ep.register(tcp.fileno(), select.EPOLLIN)
ep.register(r, select.EPOLLIN)
pid = os.fork()
if pid == 0:
    os.close(w)
    a.close()
    while True:
        time.sleep(0.2)
b.close()
sh = subprocess.Popen(['/bin/sh', '-c', 'while :; do echo tick; sleep 0.2; done | cat > /dev/null'])
open('/out/ready', 'w').write('%d %d\n' % (pid, sh.pid))
while True:
    os.write(w, b'x')
    os.read(r, 1)
    time.sleep(0.1)
"#;

#[test]
fn a_multi_process_dump_with_sockets_and_pipes_agrees_with_crit() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = python_bundle(tmp.path(), MULTI);
    let id = unique("insm");
    root.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    wait_file(&bundle.join("rootfs/out/ready"), 60);
    std::thread::sleep(Duration::from_millis(500));
    let images = tmp.path().join("images");
    root.ok(&["checkpoint", "--image-path", s(&images), &id]);

    let all = agree_with_crit(&root, &images, false);
    let procs = all["processes"].as_array().unwrap();
    assert!(
        procs.len() >= 4,
        "python, its child, sh, cat...: {}",
        procs.len()
    );
    let comms: BTreeSet<&str> = procs.iter().map(|p| p["comm"].as_str().unwrap()).collect();
    for c in ["python3", "sh", "cat"] {
        assert!(comms.contains(c), "{c} in {comms:?}");
    }
    let fd_types: BTreeSet<&str> = procs
        .iter()
        .flat_map(|p| p["fds"].as_array().unwrap())
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    for t in ["PIPE", "UNIXSK", "INETSK", "EVENTFD", "EVENTPOLL"] {
        assert!(fd_types.contains(t), "{t} in {fd_types:?}");
    }
    // The python parent and child share the pipe's read end.
    let pipes_of = |p: &Value| -> BTreeSet<u64> {
        p["fds"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["pipe_id"].as_u64())
            .collect()
    };
    let py: Vec<&Value> = procs.iter().filter(|p| p["comm"] == "python3").collect();
    assert_eq!(py.len(), 2);
    assert!(
        !pipes_of(py[0]).is_disjoint(&pipes_of(py[1])),
        "a shared pipe"
    );

    let sockets = inspect_json(&root, &images, "sockets");
    let has = |f: &dyn Fn(&Value) -> bool| sockets.as_array().unwrap().iter().any(f);
    assert!(
        has(&|s| s["protocol"] == "tcp" && s["state"] == "LISTEN" && s["local"] == "0.0.0.0:7777"),
        "{sockets}"
    );
    assert!(
        has(&|s| s["protocol"] == "udp" && s["local"] == "0.0.0.0:7778"),
        "{sockets}"
    );
    assert!(
        has(&|s| s["name"] == "@ferry-inspect" && s["state"] == "LISTEN"),
        "{sockets}"
    );
    assert!(
        has(&|s| s["name"] == "/tmp/ferry.sock" && s["type"] == "dgram"),
        "{sockets}"
    );
    assert!(
        has(&|s| s["family"] == "unix" && s["peer"].is_u64()),
        "{sockets}"
    );
    let text = root.ok(&["inspect", s(&images), "sockets"]);
    assert!(text.contains("0.0.0.0:7777"), "{text}");
}

#[test]
fn a_jvm_dump_agrees_with_crit() {
    let java_home = Path::new("/usr/lib/jvm/java-17-openjdk-amd64");
    let javac = java_home.join("bin/javac");
    assert!(
        javac.exists(),
        "{} is missing: install openjdk-17-jdk-headless",
        javac.display()
    );
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = python_bundle(tmp.path(), "");
    let app = bundle.join("rootfs/app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("Counter.java"),
        r#"
import java.io.FileWriter;
public class Counter {
    public static void main(String[] a) throws Exception {
        long[] junk = new long[1 << 20];
        for (long i = 0; ; i++) {
            junk[(int) (i % junk.length)] = i;
            try (FileWriter w = new FileWriter("/out/count", true)) { w.write(i + "\n"); }
            Thread.sleep(50);
        }
    }
}
"#,
    )
    .unwrap();
    let st = Command::new(&javac)
        .args(["-d", s(&app), s(&app.join("Counter.java"))])
        .status()
        .unwrap();
    assert!(st.success(), "javac failed");
    let java = java_home.join("bin/java");
    edit_config(&bundle, |c| {
        c["process"]["args"] = serde_json::json!([
            java.to_str().unwrap(),
            "-XX:-UsePerfData",
            "-Xmx64m",
            "-XX:+UseSerialGC",
            "-cp",
            "/app",
            "Counter"
        ]);
        // Debian's JDK keeps its configuration under /etc.
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/etc/java-17-openjdk", "type": "bind",
            "source": "/etc/java-17-openjdk", "options": ["rbind", "ro"]
        }));
    });
    std::fs::create_dir_all(bundle.join("rootfs/etc/java-17-openjdk")).unwrap();
    let id = unique("insj");
    root.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    wait_numbers(&bundle.join("rootfs/out/count"), 10);
    let images = tmp.path().join("images");
    root.ok(&["checkpoint", "--image-path", s(&images), &id]);

    let all = agree_with_crit(&root, &images, false);
    let jvm = &all["processes"][0];
    assert_eq!(jvm["comm"], "java");
    assert!(
        jvm["threads"].as_array().unwrap().len() >= 5,
        "a JVM has GC, compiler and signal threads: {}",
        jvm["threads"]
    );
    let cmd = jvm["cmdline"].to_string();
    assert!(
        cmd.contains("Counter") && cmd.contains("-XX:-UsePerfData"),
        "{cmd}"
    );
    assert!(jvm["fds"].as_array().unwrap().iter().any(|f| f["path"]
        .as_str()
        .is_some_and(|p| p.ends_with("/lib/modules"))));
}

#[test]
fn an_exported_checkpoint_is_imported_on_another_root_and_goes_on() {
    let (src, dst) = (Root::new(), Root::new());
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(tmp.path(), COUNTER);
    let id = unique("insx");
    src.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    let count = bundle.join("rootfs/out/count");
    wait_numbers(&count, 5);
    let file = tmp.path().join("ctr.tar.zst");
    src.ok(&["checkpoint", "--export", s(&file), &id]);
    assert!(!src.ids().contains(&id), "checkpoint removes the container");
    // Without --image-path the images live only in the archive.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ferry-export") || n == "checkpoint")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let before = numbers(&count);
    assert_consecutive(&before);
    // The source bundle goes: everything comes from the archive.
    std::fs::remove_dir_all(&bundle).unwrap();

    let ps = inspect_json(&src, &file, "ps");
    assert_eq!(ps[0]["comm"], "sh", "inspect reads archives: {ps}");

    let dest = tmp.path().join("imported");
    dst.ok(&[
        "restore",
        "-d",
        "--import",
        s(&file),
        "--bundle",
        s(&dest),
        &id,
    ]);
    assert_eq!(dst.status(&id), "running");
    let count = dest.join("bundle/rootfs/out/count");
    let after = wait_numbers(&count, before.len() + 10);
    assert_consecutive(&after);
    assert_eq!(&after[..before.len()], &before[..]);
    // Into a directory that is not empty: refused, nothing touched.
    let err = dst.fails(&[
        "restore",
        "-d",
        "--import",
        s(&file),
        "--bundle",
        s(&dest),
        &unique("insy"),
    ]);
    assert!(err.contains("not empty"), "{err}");
    dst.ok(&["delete", "--force", &id]);
}
