//! `ferry migrate` to `ferry serve`, end to end, as root, between two state
//! roots of this machine ("hosts" A and B; their cgroups kept apart with
//! --cgroup-parent): the counter moves and continues without gap or repeat,
//! files written before the move are there after it, a failed move or a
//! wrong key leaves the source running, and the container moves back.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::*;

/// The tests here look at every criu process on the machine: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `ferry migrate` in the background, what it says on stderr collected
/// line by line as it comes, so that a test can act at a given phase.
struct BackgroundMove {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
    said: String,
}

impl BackgroundMove {
    fn spawn(a: &Root, id: &str, to: &str, key: &std::path::Path, mode: &str) -> BackgroundMove {
        let mut child = Command::new(ferry_bin())
            .arg("--root")
            .arg(a.path())
            .args(["migrate", id, "--to", to, "--key-file"])
            .arg(key)
            // The mode, and any flag after it ("precopy --precopy-pages
            // images").
            .arg("--mode")
            .args(mode.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(l);
            }
        });
        BackgroundMove {
            child,
            lines,
            reader,
            said: String::new(),
        }
    }

    /// Waits (30 s at most) until a line contains `marker`.
    fn wait_for(&mut self, marker: &str) {
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| {
                    panic!(
                        "ferry migrate never said {marker:?} ({e}); it said:\n{}",
                        self.said
                    )
                });
            self.said.push_str(&l);
            self.said.push('\n');
            if l.contains(marker) {
                return;
            }
        }
    }

    /// Waits for the end: whether the move succeeded, and all it said.
    fn finish(mut self) -> (bool, String) {
        let status = self.child.wait().unwrap();
        self.reader.join().unwrap();
        self.said.extend(self.lines.try_iter().map(|l| l + "\n"));
        (status.success(), self.said)
    }
}

/// `ferry --root ROOT` inside host `h` (a, b) of `hosts`: nsenter, not `ip
/// netns exec`, which remounts /sys and hides the cgroups.
fn ferry_in(hosts: &Hosts, h: &str, root: &Root) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}-{h}", hosts.name))
        .arg(ferry_bin())
        .arg("--root")
        .arg(root.path());
    c
}

/// Runs `ferry ARGS` in host `h`, asserting success; returns stdout.
fn ok_in(hosts: &Hosts, h: &str, root: &Root, args: &[&str]) -> String {
    let out = run_ferry(ferry_in(hosts, h, root).args(args));
    assert!(
        out.status.success(),
        "ferry {args:?} on {h}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ferry serve` in host `h`, listening on `addr`; killed on drop (also
/// when the test fails).
fn serve_in(
    hosts: &Hosts,
    h: &str,
    root: &Root,
    addr: &str,
    key: &std::path::Path,
    cg: &str,
) -> Serve {
    let child = ferry_in(hosts, h, root)
        .args(["serve", "--listen", addr, "--key-file"])
        .arg(key)
        .args(["--cgroup-parent", cg])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Serve {
        child,
        addr: addr.to_string(),
    }
}

fn key(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    let out = run_ferry(
        Command::new(ferry_bin())
            .args(["serve", "--listen", "127.0.0.1:1", "--key-file"])
            .arg(&p)
            .arg("--new-key"),
    );
    assert!(out.status.success());
    p
}

/// Hosts A and B of one test: their state roots, the key they share, a
/// scratch dir for bundles, and a tag (this process's id) naming the test's
/// containers and cgroups. Holds the lock that runs the tests one at a time.
struct Pair {
    a: Root,
    b: Root,
    tmp: tempfile::TempDir,
    key: std::path::PathBuf,
    tag: u32,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Pair {
    fn new() -> Pair {
        let _serial = serial();
        let tmp = tempfile::tempdir().unwrap();
        let key = key(tmp.path(), "key");
        Pair {
            a: Root::new(),
            b: Root::new(),
            tmp,
            key,
            tag: std::process::id(),
            _serial,
        }
    }

    fn dir(&self) -> &std::path::Path {
        self.tmp.path()
    }

    /// A `ferry serve` agent for B, its cgroups under /ferry-NAME-TAG.
    fn serve_b(&self, name: &str) -> Serve {
        Serve::start(&self.b, &self.key, &self.cgroup(name))
    }

    fn cgroup(&self, name: &str) -> String {
        format!("/ferry-{name}-{}", self.tag)
    }

    fn migrate_args<'s>(&'s self, id: &'s str, to: &'s str, extra: &[&'s str]) -> Vec<&'s str> {
        let mut args = vec![
            "migrate",
            id,
            "--to",
            to,
            "--key-file",
            self.key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args
    }

    /// `ferry migrate ID --to TO --key-file KEY EXTRA...` from `from`,
    /// which must succeed: its stdout.
    fn migrate(&self, from: &Root, id: &str, to: &str, extra: &[&str]) -> String {
        from.ok(&self.migrate_args(id, to, extra))
    }

    /// The same, which must fail: its stderr.
    fn migrate_fails(&self, from: &Root, id: &str, to: &str, extra: &[&str]) -> String {
        from.fails(&self.migrate_args(id, to, extra))
    }

    /// `ferry migrate` from `from` inside host `h` of `hosts`: its output,
    /// success or not.
    fn migrate_in(
        &self,
        (hosts, h): (&Hosts, &str),
        from: &Root,
        id: &str,
        to: &str,
        extra: &[&str],
    ) -> std::process::Output {
        run_ferry(ferry_in(hosts, h, from).args(self.migrate_args(id, to, extra)))
    }
}

/// A counter (/out/count, every 50 ms) holding 256 MiB of memory that
/// does not compress: a move long enough to break in the middle.
const COUNTER_256_MIB: &str = r#"
import os, time
m = bytearray(os.urandom(1 << 20)) * 256
i = 0
f = open('/out/count', 'a')
while True:
    f.write('%d\n' % i)
    f.flush()
    i += 1
    time.sleep(0.05)
"#;

/// The same with each line's number followed by the crc32 of the 256 MiB:
/// a page lost or zeroed in a move changes it.
const CRC_COUNTER_256_MIB: &str = r#"
import os, time, zlib
m = bytearray(os.urandom(1 << 20)) * 256
i = 0
f = open('/out/count', 'a')
while True:
    f.write('%d %d\n' % (i, zlib.crc32(m)))
    f.flush()
    i += 1
    time.sleep(0.05)
"#;

/// The (number, crc) lines [`CRC_COUNTER_256_MIB`] wrote to `path`.
fn crc_lines(path: &std::path::Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

/// [`crc_lines`] counting 0, 1, 2... without gap or repeat, each with
/// the memory's crc `crc` (`copy`: which one, for the message).
fn assert_crc_count(lines: &[(u64, u64)], crc: u64, copy: &str) {
    for (i, (n, c)) in lines.iter().enumerate() {
        assert_eq!(
            *n, i as u64,
            "line {i} {copy}: a gap or a repeat in {lines:?}"
        );
        assert_eq!(*c, crc, "line {i} {copy}: the memory changed");
    }
}

/// `ferry run -d` of `bundle` as `id` on `root`.
fn run(root: &Root, bundle: &std::path::Path, id: &str) {
    root.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), id]);
}

/// A failed move left the source running: `err` says so, and its count
/// (in `count`) goes on without gap.
fn assert_source_went_on(a: &Root, id: &str, count: &std::path::Path, err: &str) {
    assert!(err.contains("keeps running"), "{err}");
    assert_eq!(a.status(id), "running");
    let n = numbers(count).len();
    assert_consecutive(&wait_numbers(count, n + 5));
}

#[test]
fn the_counter_moves_and_back_and_failures_keep_the_source() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let serve_b = p.serve_b("b");
    let serve_a = Serve::start(a, &p.key, &p.cgroup("a"));
    let bundle = busybox_bundle(p.dir(), COUNTER);
    let id = format!("mig-{tag}");
    run(a, &bundle, &id);
    a.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo before > /out/marker; rm /bin/vi",
    ]);
    wait_numbers(&bundle.join("rootfs/out/count"), 5);

    // A wrong key: refused, nothing frozen.
    let wrong = key(p.dir(), "wrong");
    let err = a.fails(&[
        "migrate",
        &id,
        "--to",
        &serve_b.addr,
        "--key-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(err.contains("authentication"), "{err}");
    assert_eq!(a.status(&id), "running");

    // A destination whose restore fails: the source resumes and counts on.
    let bad = Serve::start(b, &p.key, "/../escape");
    let err = p.migrate_fails(a, &id, &bad.addr, &[]);
    assert!(err.contains("the destination failed"), "{err}");
    drop(bad);
    assert_eq!(a.status(&id), "running");
    let n = numbers(&bundle.join("rootfs/out/count")).len();
    assert_consecutive(&wait_numbers(&bundle.join("rootfs/out/count"), n + 3));
    assert!(
        b.ids().is_empty(),
        "a failed move left a container on the destination"
    );

    // The move.
    let out = p.migrate(
        a,
        &id,
        &serve_b.addr,
        &["--mode", "precopy", "--precopy-pages", "uffd", "--json"],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["mode"], "precopy");
    // The pages went into B's restored tasks (userfaultfd), all of them
    // before the copy ran (the few faults are CRIU's restorer's own, on
    // the tasks' stacks, before it stopped them).
    assert_eq!(report["precopy_pages"], "uffd", "{report}");
    assert!(report["lazy"]["received_bytes"].as_u64().unwrap() > 0);
    assert!(report["downtime_ms"].as_f64().unwrap() > 0.0);
    assert!(report["pages_bytes"].as_u64().unwrap() > 0);
    assert!(a.ids().is_empty(), "the source container is gone");
    assert_eq!(b.status(&id), "running");
    // The agent restored it in its own process, but it is not the agent's
    // child (criu's, then init's): the agent never waits for containers.
    assert_eq!(
        children(serve_b.child.id()),
        Vec::<u32>::new(),
        "the agent keeps children"
    );
    let moved = moved_rootfs(b, &id);
    let before = numbers(&bundle.join("rootfs/out/count"));
    let after = wait_numbers(&moved.join("out/count"), before.len() + 10);
    assert_consecutive(&after);
    assert_eq!(
        std::fs::read_to_string(moved.join("out/marker")).unwrap(),
        "before\n"
    );
    assert!(!moved.join("bin/vi").exists(), "a deleted file came back");

    // And back to A, post-copy this time, named by a host name.
    let to_a = serve_a.addr.replace("127.0.0.1", "localhost");
    let out = p.migrate(b, &id, &to_a, &["--mode", "postcopy", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["mode"], "postcopy");
    assert_eq!(report["to"], serve_a.addr.as_str(), "{report}");
    assert!(report["lazy"]["received_bytes"].as_u64().unwrap() > 0);
    assert!(b.ids().is_empty());
    let back = moved_rootfs(a, &id).join("out/count");
    let n = numbers(&moved.join("out/count")).len();
    assert_consecutive(&wait_numbers(&back, n + 10));
    // Once more to B, where the first move left its files behind; `auto`
    // picks pre-copy for so small a container, and says so. Its pages go
    // into images (what `--precopy-pages auto` picks for a few MiB), which
    // CRIU's restore reads.
    let out = p.migrate(a, &id, &serve_b.addr, &["--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["mode"], "precopy", "{report}");
    assert_eq!(report["precopy_pages"], "images", "{report}");
    assert!(report["lazy"].is_null(), "{report}");
    assert!(report["pages_bytes"].as_u64().unwrap() > 0);
    assert!(report["mode_reason"].as_str().unwrap().starts_with("auto"));
    let n = numbers(&back).len();
    assert_consecutive(&wait_numbers(&moved.join("out/count"), n + 5));
    // Three moves later it lives in B's parent plus its name, not nested
    // in A's (/ferry-b/ferry-a/ferry-b/...).
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", b.pid(&id))).unwrap();
    let freezer = cgroups
        .lines()
        .find(|l| l.contains(":freezer:"))
        .unwrap_or_else(|| panic!("no freezer line: {cgroups}"));
    assert!(
        freezer.ends_with(&format!(":/ferry-b-{tag}/{id}")),
        "cgroup path nested across moves: {freezer}"
    );
    b.ok(&["delete", "--force", &id]);
    assert!(cgroup_leftovers(&format!("ferry-a-{tag}/{id}")).is_empty());
    assert!(cgroup_leftovers(&format!("ferry-b-{tag}/{id}")).is_empty());
}

/// A destination whose restore fails inside CRIU: the container shares the
/// host's PID namespace, so on this one machine its restored init wants
/// the very PID its frozen source still holds (CRIU: "Can't fork for PID:
/// File exists", cr_errno EEXIST). `ferry migrate --json` reports CRIU's
/// errno, message and log lines as fields, and the source runs on.
#[test]
fn a_criu_failure_on_the_destination_reaches_the_report_as_fields() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let serve_b = p.serve_b("crfail");
    let bundle = busybox_bundle(p.dir(), COUNTER);
    edit_config(&bundle, |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "pid");
    });
    let id = format!("crfail-{tag}");
    run(a, &bundle, &id);
    let count = bundle.join("rootfs/out/count");
    wait_numbers(&count, 5);
    let source_pid = a.pid(&id);

    let out = a.ferry(&p.migrate_args(&id, &serve_b.addr, &["--mode", "precopy", "--json"]));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the move succeeded: {err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {err}"));
    assert_eq!(report["id"], id.as_str(), "{report:#}");
    let d = &report["error"];
    assert_eq!(d["kind"], "destination_failed", "{report:#}");
    assert_eq!(d["stage"], "restore", "{report:#}");
    let c = &d["criu"];
    assert_eq!(c["request"], "restore", "{report:#}");
    assert_eq!(c["errno"], libc::EEXIST, "{report:#}");
    assert_eq!(c["errno_name"], "EEXIST", "{report:#}");
    assert!(
        !c["message"].as_str().unwrap_or_default().is_empty(),
        "{report:#}"
    );
    let fork = format!("Can't fork for {source_pid}: File exists");
    assert_eq!(c["cause"], fork.as_str(), "{report:#}");
    assert!(
        c["log_lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains(&fork)),
        "{report:#}"
    );
    // The received state is gone, CRIU's log kept beside it.
    let log = std::path::Path::new(c["log_file"].as_str().unwrap());
    assert!(log.starts_with(b.path()), "{report:#}");
    assert!(std::fs::read_to_string(log).unwrap().contains(&fork));
    assert!(!b.path().join("incoming").join(&id).exists());
    // The sentence too, for the person reading stderr.
    assert!(err.contains("the destination failed"), "{err}");
    assert!(err.contains(&fork), "{err}");
    assert_source_went_on(a, &id, &count, &err);
    assert_eq!(a.pid(&id), source_pid);
    assert!(b.ids().is_empty(), "a failed move left a container on B");
    assert_eq!(children(serve_b.child.id()), Vec::<u32>::new());
    a.ok(&["delete", "--force", &id]);
}

/// A destination that refuses the container: `ferry migrate --json` (and
/// `--check --json`) prints one JSON object listing each pre-flight
/// problem with its kind, exits 4 (refused, nothing frozen), and the
/// source runs on. Two problems at once: B has a container of that id, and
/// the container has a terminal while B's agent has no console socket.
#[test]
fn a_refusal_is_one_json_object_listing_each_problem() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let bundle = busybox_bundle(
        p.dir(),
        &[
            "sh",
            "-c",
            "i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done",
        ],
    );
    edit_config(&bundle, |c| c["process"]["terminal"] = true.into());
    let id = format!("refused-{tag}");
    let console = Console::listen(&p.dir().join("refused.sock"));
    a.ok(&[
        "run",
        "-d",
        "--bundle",
        bundle.to_str().unwrap(),
        "--console-socket",
        console.path_str(),
        &id,
    ]);
    console.wait_for("a few numbers", |_| console.numbers().len() >= 3);
    // The same id on B (its own cgroup: both run on this one machine).
    let other = busybox_bundle(&p.dir().join("other"), &["sleep", "1000"]);
    edit_config(&other, |c| {
        c["linux"]["cgroupsPath"] = format!("/ferry-refused2-{tag}/{id}").into();
    });
    b.ok(&["create", "--bundle", other.to_str().unwrap(), &id]);
    let serve_b = p.serve_b("refused");

    for extra in [&["--json"][..], &["--json", "--check"]] {
        let out = a.ferry(&p.migrate_args(&id, &serve_b.addr, extra));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{extra:?}: {err}");
        // One object, nothing else on stdout.
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{extra:?}: stdout is not one JSON object ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let e = &v["error"];
        assert_eq!(e["kind"], "refused", "{v:#}");
        let problems = e["problems"].as_array().unwrap();
        let mut kinds: Vec<&str> = problems
            .iter()
            .map(|p| p["kind"].as_str().unwrap())
            .collect();
        kinds.sort();
        assert_eq!(kinds, ["id_in_use", "no_console"], "{v:#}");
        for problem in problems {
            let m = problem["message"].as_str().unwrap();
            assert!(
                !m.is_empty() && e["message"].as_str().unwrap().contains(m),
                "{v:#}"
            );
        }
        assert!(e.get("criu").is_none(), "{v:#}");
        assert_eq!(v["id"], id.as_str());
    }
    assert_eq!(a.status(&id), "running");
    let n = console.numbers().len();
    console.wait_for("the counter going on", |_| console.numbers().len() >= n + 5);
    drop(serve_b);
    b.ok(&["delete", "--force", &id]);
    a.ok(&["delete", "--force", &id]);
    assert!(cgroup_leftovers(&format!("ferry-refused2-{tag}/{id}")).is_empty());
}

/// A container with a terminal: an agent without a console socket refuses
/// it in pre-flight (nothing frozen, the source's console goes on); an
/// agent with one hands the restored console's master to it, and the
/// counter goes on there from where it was.
#[test]
fn a_terminal_container_moves_to_the_agents_console() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let bundle = busybox_bundle(
        p.dir(),
        &[
            "sh",
            "-c",
            "i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done",
        ],
    );
    edit_config(&bundle, |c| c["process"]["terminal"] = true.into());
    let id = format!("tty-{tag}");
    let first = Console::listen(&p.dir().join("first.sock"));
    a.ok(&[
        "run",
        "-d",
        "--bundle",
        bundle.to_str().unwrap(),
        "--console-socket",
        first.path_str(),
        &id,
    ]);
    first.wait_for("ten numbers", |_| first.numbers().len() >= 10);

    let plain = p.serve_b("tb");
    // --check asks the same question and moves nothing either way.
    let err = p.migrate_fails(a, &id, &plain.addr, &["--check"]);
    assert!(
        err.contains("--console-socket") && err.contains("nothing was frozen"),
        "{err}"
    );
    let err = p.migrate_fails(a, &id, &plain.addr, &[]);
    assert!(err.contains("--console-socket"), "{err}");
    drop(plain);
    assert_eq!(a.status(&id), "running");
    let n = first.numbers().len();
    first.wait_for("the counter going on", |_| first.numbers().len() >= n + 5);

    let second = Console::listen(&p.dir().join("second.sock"));
    let serve_b = Serve::start_with(
        b,
        &p.key,
        &p.cgroup("tb"),
        &["--console-socket", second.path_str()],
    );
    let fits = p.migrate(a, &id, &serve_b.addr, &["--check", "--mode", "precopy"]);
    assert!(fits.contains("can take"), "{fits}");
    assert_eq!(a.status(&id), "running");
    assert!(b.ids().is_empty() && !b.path().join("incoming").join(&id).exists());
    p.migrate(a, &id, &serve_b.addr, &["--mode", "precopy"]);
    assert!(a.ids().is_empty(), "the source container is gone");
    // The source's tasks are gone, so its console's slave closed.
    let before = first.finish();
    assert_consecutive(&before);
    second.wait_for("ten numbers on B", |_| second.numbers().len() >= 10);
    let after = second.numbers();
    assert_eq!(
        after[0],
        before.last().unwrap() + 1,
        "B's console starts at {after:?}, A's ended at {:?}",
        before.last()
    );
    assert_continuous(&after);
    b.ok(&["delete", "--force", &id]);
    assert!(cgroup_leftovers(&format!("ferry-tb-{tag}/{id}")).is_empty());
}

/// The destination agent dies in the middle of a move (SIGKILL once
/// `ferry migrate` reports a 256 MiB container's pages in flight, slowed
/// down by a relay): the
/// migration fails, the source container runs on with its counter intact,
/// and no CRIU is left. Pre-copy into the restored tasks (the default):
/// B's copy was restored, stopped, when the pages began; it never runs.
#[test]
fn a_killed_destination_leaves_the_source_running() {
    killed_destination("precopy");
}

/// The same with the pages going into images (`--precopy-pages images`):
/// B had restored nothing when the agent died.
#[test]
fn a_killed_destination_leaves_the_source_running_images() {
    killed_destination("precopy --precopy-pages images");
}

fn killed_destination(mode: &str) {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let mut serve_b = p.serve_b("kb");
    let bundle = python_bundle(p.dir(), COUNTER_256_MIB);
    let count = bundle.join("rootfs/out/count");
    let id = format!("kill-{tag}");
    run(a, &bundle, &id);
    wait_numbers(&count, 5);
    // Through a relay at 64 MiB/s, so that the pages take seconds to go
    // and the agent dies while they do.
    let relay = Relay::start(
        serve_b.addr.clone(),
        Tamper::Throttle {
            bytes_per_sec: 64 << 20,
        },
    );
    let mut mig = BackgroundMove::spawn(a, &id, &relay.addr, &p.key, mode);
    // Kill the agent once pages are flowing: `ferry migrate` says so as
    // soon as the destination acknowledged the first of them.
    mig.wait_for("pages: ");
    serve_b.child.kill().unwrap();
    let _ = serve_b.child.wait();
    let (moved, err) = mig.finish();
    assert!(!moved, "the migration claimed success: {err}");
    assert_source_went_on(a, &id, &count, &err);
    // No CRIU left behind on either side.
    assert_no_criu();
    // A copy restored before the pages came (pre-copy into its tasks) was
    // killed by the agent's guardian; it never ran on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.runs(&id) {
        assert!(Instant::now() < deadline, "B's copy runs on: {err}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The agent's mounts did not die with it (its images tmpfs stays
    // mounted): a restarted agent cleans up what a killed one left.
    drop(p.serve_b("kb"));
    assert!(b.ids().is_empty(), "{:?}", b.ids());
    let left = mount_leftovers(&b.path().to_string_lossy());
    assert!(left.is_empty(), "mounts left on the destination: {left:?}");
    assert!(!b.path().join("incoming").join(&id).exists());
    // The restore it prepared as the offer came (state dir, cgroups, criu
    // in them) went too: the id is free on B.
    assert!(
        !b.path().join(&id).exists(),
        "the prepared restore's state dir stayed"
    );
    let cg = format!("{}/{id}", p.cgroup("kb").trim_start_matches('/'));
    assert!(
        cgroup_leftovers(&cg).is_empty(),
        "{:?}",
        cgroup_leftovers(&cg)
    );
    a.ok(&["delete", "--force", &id]);
}

/// Two offers of one id at once (two sources each with a container of
/// that name): the second is refused while the first is being received,
/// and runs on at its source; the first completes.
#[test]
fn a_second_offer_of_an_id_being_received_is_refused() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let a2 = Root::new();
    let serve_b = p.serve_b("twice");
    let id = format!("twice-{tag}");
    let big = python_bundle(&p.dir().join("big"), COUNTER_256_MIB);
    let big_count = big.join("rootfs/out/count");
    run(a, &big, &id);
    let small = busybox_bundle(&p.dir().join("small"), COUNTER);
    let small_count = small.join("rootfs/out/count");
    // Two containers of one id on this machine: cgroups of their own.
    edit_config(&small, |c| {
        c["linux"]["cgroupsPath"] = format!("/ferry-twice2-{tag}/{id}").into();
    });
    run(&a2, &small, &id);
    wait_numbers(&big_count, 3);
    wait_numbers(&small_count, 3);
    // The first move's pages go through a throttled relay: seconds long.
    let relay = Relay::start(
        serve_b.addr.clone(),
        Tamper::Throttle {
            bytes_per_sec: 64 << 20,
        },
    );
    let mut first = BackgroundMove::spawn(a, &id, &relay.addr, &p.key, "precopy");
    first.wait_for("pages: ");
    let err = p.migrate_fails(&a2, &id, &serve_b.addr, &["--mode", "precopy"]);
    assert!(
        err.contains("arriving there from another move"),
        "the second offer was not refused as a duplicate: {err}"
    );
    assert_source_went_on(&a2, &id, &small_count, &err);
    let (moved, said) = first.finish();
    assert!(moved, "the first move failed: {said}");
    assert_eq!(b.status(&id), "running");
    b.ok(&["delete", "--force", &id]);
    a2.ok(&["delete", "--force", &id]);
    assert!(cgroup_leftovers(&format!("ferry-twice2-{tag}/{id}")).is_empty());
}

/// 1,000 connections without the key, idle or sending garbage, against an
/// agent whose fd limit is low (512, enough for the CRIU it runs): it
/// neither runs out of descriptors nor exits (a failed accept is waited
/// out, connections beyond its cap are dropped at once, a silent one at the
/// handshake deadline), and a real move succeeds afterwards.
#[test]
fn a_flood_of_connections_without_the_key_leaves_the_agent_serving() {
    use std::io::Write as _;
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let mut agent = Serve::start_under(
        &["prlimit", "--nofile=512:512", "--"],
        b,
        &p.key,
        &p.cgroup("flood"),
        &[],
    );
    let addr = agent.addr.clone();
    let bundle = busybox_bundle(p.dir(), COUNTER);
    let count = bundle.join("rootfs/out/count");
    let id = format!("flood-{tag}");
    run(a, &bundle, &id);
    wait_numbers(&count, 3);

    let sa: std::net::SocketAddr = addr.parse().unwrap();
    let mut held = Vec::new();
    for i in 0..1000 {
        if let Ok(mut c) = std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(500)) {
            // Mostly idle (each would hold an fd for ever before), some
            // garbage.
            if i % 10 == 0 {
                let _ = c.write_all(&[0xff; 64]);
            }
            held.push(c);
        }
        // Up to 800 open at once, far past the agent's fd limit.
        if held.len() >= 800 {
            held.drain(..400);
        }
        assert!(
            agent.child.try_wait().unwrap().is_none(),
            "the agent exited under the flood (connection {i})"
        );
    }
    drop(held);
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent exited"
    );
    // The dropped connections' slots come back; the move goes through.
    let deadline = Instant::now() + Duration::from_secs(30);
    let moved = loop {
        let out = a.ferry(&p.migrate_args(&id, &addr, &["--mode", "precopy"]));
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        moved.status.success(),
        "no move after the flood: {}",
        String::from_utf8_lossy(&moved.stderr)
    );
    let n = numbers(&count).len();
    assert_consecutive(&wait_numbers(
        &moved_rootfs(b, &id).join("out/count"),
        n + 5,
    ));
    b.ok(&["delete", "--force", &id]);
}

/// Post-copy of a 256 MiB container: it runs on B before its memory has
/// arrived; every page comes (the lazy-pages daemon's count), the memory is
/// the same (its crc, printed by the workload on every line, never changes)
/// and the count goes on without gap. `auto` picks post-copy for it.
#[test]
fn postcopy_moves_256_mib_with_the_memory_intact() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let serve_b = p.serve_b("pb");
    let bundle = python_bundle(p.dir(), CRC_COUNTER_256_MIB);
    let count = bundle.join("rootfs/out/count");
    let id = format!("post-{tag}");
    run(a, &bundle, &id);
    wait_numbers(&count, 3);
    let out = p.migrate(a, &id, &serve_b.addr, &["--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["mode"], "postcopy", "{report}");
    let received = report["lazy"]["received_bytes"].as_u64().unwrap();
    assert!(received >= 256 << 20, "{report}");
    assert!(a.ids().is_empty());
    let before = crc_lines(&count);
    let moved = moved_rootfs(b, &id).join("out/count");
    wait_numbers(&moved, before.len() + 10);
    let after = crc_lines(&moved);
    let crc = before[0].1;
    assert_crc_count(&after, crc, "after the move");

    // Back to A pre-copy, the pages into its restored tasks, and to B
    // again pre-copy into images: the memory is whole by each path.
    let serve_a = Serve::start(a, &p.key, &p.cgroup("pa"));
    let paths = [
        (
            b,
            a,
            &serve_a.addr,
            "uffd",
            "back to A, pages into its tasks",
        ),
        (
            a,
            b,
            &serve_b.addr,
            "images",
            "to B again, pages into images",
        ),
    ];
    let mut here = moved;
    for (from, to, addr, pages, what) in paths {
        let n = crc_lines(&here).len();
        let out = p.migrate(
            from,
            &id,
            addr,
            &["--mode", "precopy", "--precopy-pages", pages, "--json"],
        );
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["precopy_pages"], pages, "{report}");
        assert!(report["pages_bytes"].as_u64().unwrap() >= 256 << 20);
        here = moved_rootfs(to, &id).join("out/count");
        wait_numbers(&here, n + 5);
        assert_crc_count(&crc_lines(&here), crc, what);
    }
    b.ok(&["delete", "--force", &id]);
    assert!(cgroup_leftovers(&format!("ferry-pb-{tag}/{id}")).is_empty());
    assert!(cgroup_leftovers(&format!("ferry-pa-{tag}/{id}")).is_empty());
}

/// The link dies in the middle of a post-copy move, after the container
/// resumed on B but before its memory was all there (the page connection
/// throttled to 32 MiB/s, cut once B runs it): B kills its incomplete copy
/// before its faults could see a zero page (every line it wrote has the
/// right crc), and A, which kept the whole memory, resumes it.
#[test]
fn a_link_cut_during_postcopy_resumes_the_source() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let serve_b = p.serve_b("lb");
    let relay = Relay::start(
        serve_b.addr.clone(),
        Tamper::Throttle {
            bytes_per_sec: 32 << 20,
        },
    );
    let bundle = python_bundle(p.dir(), CRC_COUNTER_256_MIB);
    let count = bundle.join("rootfs/out/count");
    let id = format!("cut-{tag}");
    run(a, &bundle, &id);
    wait_numbers(&count, 3);
    let crc = crc_lines(&count)[0].1;
    let mut mig = BackgroundMove::spawn(a, &id, &relay.addr, &p.key, "postcopy");
    // Cut once the container runs on B (the move got to post-copy).
    mig.wait_for("memory follows");
    // What B's copy writes, read as it comes: the agent's clean-up of the
    // killed copy takes its files along.
    let seen_on_b = Tail::start(moved_rootfs(b, &id).join("out/count"));
    relay.cut();
    let (moved, err) = mig.finish();
    assert!(!moved, "the move claimed success: {err}");
    assert!(err.contains("keeps running"), "{err}");
    assert_eq!(a.status(&id), "running");
    let n = crc_lines(&count).len();
    wait_numbers(&count, n + 5);
    let on_a = crc_lines(&count);
    assert_crc_count(&on_a, crc, "on A, resumed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.ids().is_empty() {
        assert!(
            Instant::now() < deadline,
            "B kept its incomplete copy: {:?}",
            b.ids()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // B's copy ran a little with the pages it had; none of it saw a page
    // that was not there.
    let on_b = seen_on_b.stop();
    eprintln!("B's copy wrote {} lines before it was killed", on_b.len());
    for (k, c) in on_b {
        assert_eq!(
            c, crc,
            "line {k} on B: the incomplete copy ran on zero pages"
        );
    }
    assert_no_criu();
    assert_no_lock_rules();
    a.remove(&id);
}

/// Reads a file's crc lines over and over on a thread until stopped,
/// keeping the most it saw: what a process wrote into a file that is
/// removed with it.
struct Tail {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(u64, u64)>>,
}

impl Tail {
    fn start(path: std::path::PathBuf) -> Tail {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut most = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let now = crc_lines(&path);
                if now.len() > most.len() {
                    most = now;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            most
        });
        Tail { stop, thread }
    }

    fn stop(self) -> Vec<(u64, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A TCP client outside both hosts keeps talking to a server inside the
/// container across the move: the container keeps its address (Ferry's own
/// network, `org.ferry.network.address`) and its established connection.
#[test]
fn a_tcp_client_keeps_talking_across_the_move() {
    use std::io::{BufRead, BufReader, Write};
    let p = Pair::new();
    let (a, b, k, tag) = (&p.a, &p.b, &p.key, p.tag % 100000);
    let hosts = Hosts::up(&format!("mt{tag}"), "10.68.0");
    // The agent runs on host B (its network namespace).
    let port = 7000 + (tag % 1000) as u16;
    let serve = |h: &str, root: &Root, addr: &str| {
        let cg = format!("/ferry-t{h}-{tag}");
        serve_in(&hosts, h, root, &format!("{addr}:{port}"), k, &cg)
    };
    let serve_b = serve("b", b, "10.68.0.2");
    let serve_a = serve("a", a, "10.68.0.1");
    let on = |h: &str, root: &Root, args: &[&str]| {
        ok_in(&hosts, h, root, args);
    };
    let script = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9000))
s.listen(1)
c, _ = s.accept()
f = c.makefile('rw')
for line in f:
    f.write('pong ' + line.split()[1] + '\n')
    f.flush()
"#;
    let bundle = python_bundle(p.dir(), script);
    edit_config(&bundle, |c| {
        c["annotations"] = serde_json::json!({"org.ferry.network.address": "10.68.0.50/32"});
    });
    let id = format!("tcp-{tag}");
    on(
        "a",
        a,
        &["run", "-d", "--bundle", bundle.to_str().unwrap(), &id],
    );

    // The address taken on B by another container: refused in pre-flight,
    // before anything is frozen.
    let squatter = format!("squat-{tag}");
    let squat = busybox_bundle(&p.dir().join("squat"), &["sleep", "60"]);
    edit_config(&squat, |c| {
        c["annotations"] = serde_json::json!({"org.ferry.network.address": "10.68.0.50/32"});
    });
    on(
        "b",
        b,
        &["run", "-d", "--bundle", squat.to_str().unwrap(), &squatter],
    );
    let to_b = format!("10.68.0.2:{port}");
    let refused = p.migrate_in((&hosts, "a"), a, &id, &to_b, &[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a move onto a taken address went through"
    );
    assert!(
        err.contains("10.68.0.50") && err.contains(&squatter),
        "{err}"
    );
    assert_eq!(a.status(&id), "running");
    on("b", b, &["delete", "--force", &squatter]);

    // The client, on the client host: one connection, a ping every 50 ms.
    let client_ns = format!("/run/netns/{}-client", hosts.name);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let client = std::thread::spawn(move || -> Vec<u64> {
        let ns = std::fs::File::open(&client_ns).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let s = loop {
            match std::net::TcpStream::connect_timeout(
                &"10.68.0.50:9000".parse().unwrap(),
                Duration::from_secs(2),
            ) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot reach the container: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut got = Vec::new();
        let mut i = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            writeln!(w, "ping {i}").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).expect("the connection broke");
            assert_eq!(line.trim(), format!("pong {i}"), "wrong answer");
            got.push(i);
            i += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        got
    });
    std::thread::sleep(Duration::from_secs(2));
    let moved = p.migrate_in((&hosts, "a"), a, &id, &to_b, &["--mode", "precopy"]);
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(a.ids().is_empty());
    // And back, post-copy: the connection survives a lazy restore too.
    let to_a = format!("10.68.0.1:{port}");
    let back = p.migrate_in((&hosts, "b"), b, &id, &to_a, &["--mode", "postcopy"]);
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let got = client.join().expect("the client failed across the moves");
    // Each move costs the client a retransmission backoff (the namespace is
    // locked while the container is frozen): a few hundred ms, not more.
    assert!(got.len() > 30, "too few exchanges: {}", got.len());
    assert!(b.ids().is_empty());
    on("a", a, &["delete", "--force", &id]);
    drop((serve_a, serve_b));
}

/// No network-lock rule of CRIU's left in this (host) namespace: CRIU marks
/// its iptables rules 0xC114 and names its nftables tables CRIU-*.
fn assert_no_lock_rules() {
    let out = Command::new("iptables-save")
        .output()
        .expect("iptables-save (hack/setup installs iptables)");
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(
        !rules.to_lowercase().contains("0xc114") && !rules.contains("CRIU"),
        "CRIU's network lock left rules behind:\n{rules}"
    );
}

/// One byte of the control stream flipped on the way (inside the images or
/// the rootfs stream): the destination finds the stream's checksum wrong,
/// drops what it received, and the source runs on with its count intact.
#[test]
fn a_corrupted_stream_keeps_the_source() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let serve_b = p.serve_b("cb");
    let bundle = busybox_bundle(p.dir(), COUNTER);
    let count = bundle.join("rootfs/out/count");
    let id = format!("corrupt-{tag}");
    run(a, &bundle, &id);
    wait_numbers(&count, 3);
    let proxy = Relay::start(serve_b.addr.clone(), Tamper::FlipByte { at: 300_000 });
    let err = p.migrate_fails(a, &id, &proxy.addr, &["--mode", "precopy"]);
    assert_source_went_on(a, &id, &count, &err);
    assert!(b.ids().is_empty());
    assert!(
        !b.path().join("incoming").join(&id).exists(),
        "the damaged transfer was kept"
    );
    // Nor the restore prepared for it before the freeze.
    assert!(!b.path().join(&id).exists(), "the prepared restore stayed");
    assert!(cgroup_leftovers(&format!("ferry-cb-{tag}/{id}")).is_empty());
    assert_no_criu();
    assert_no_lock_rules();
    assert!(mount_leftovers(&b.path().to_string_lossy()).is_empty());
    a.ok(&["delete", "--force", &id]);
}

/// A tmpfs as a host's whole state root, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs on {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The destination's disk fills up once the move is under way (after its
/// pre-flight check said there was room): a write there fails (the root
/// filesystem's, or the page server's), the move fails, and the source
/// runs on; the destination keeps nothing.
#[test]
fn a_full_destination_disk_keeps_the_source() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let _disk = Tmpfs::mount(b.path(), "1g");
    let serve_b = p.serve_b("fb");
    let bundle = python_bundle(p.dir(), COUNTER_256_MIB);
    // 64 MiB in the rootfs: its stream (ahead of the freeze) is still
    // coming in when the disk fills.
    let mut blob = std::fs::File::create(bundle.join("rootfs/blob")).unwrap();
    let mut random = std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), 64 << 20);
    std::io::copy(&mut random, &mut blob).unwrap();
    drop(blob);
    let count = bundle.join("rootfs/out/count");
    let id = format!("full-{tag}");
    run(a, &bundle, &id);
    wait_numbers(&count, 3);
    let mig = BackgroundMove::spawn(a, &id, &serve_b.addr, &p.key, "precopy");
    // Pre-flight passed once the destination made the container's dir:
    // fill the disk then.
    let incoming = b.path().join("incoming").join(&id);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !incoming.exists() {
        assert!(Instant::now() < deadline, "the move never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    // The root filesystem streams in meanwhile: what is free shrinks
    // between the look and the fill, so the fill tries again, each time
    // with a file of its own.
    let filled = (0..50).any(|i| {
        let st = nix::sys::statvfs::statvfs(b.path()).unwrap();
        let free = st.blocks_available() as u64 * st.fragment_size() as u64;
        free == 0
            || Command::new("fallocate")
                .args(["-l", &free.to_string()])
                .arg(b.path().join(format!("filler-{i}")))
                .status()
                .unwrap()
                .success()
    });
    assert!(filled, "could not fill the destination's disk");
    let (moved, err) = mig.finish();
    assert!(!moved, "the move claimed success: {err}");
    assert_source_went_on(a, &id, &count, &err);
    assert!(b.ids().is_empty());
    assert!(!incoming.exists(), "the failed transfer was kept");
    assert_no_criu();
    assert_no_lock_rules();
    for i in 0..50 {
        let _ = std::fs::remove_file(b.path().join(format!("filler-{i}")));
    }
    a.ok(&["delete", "--force", &id]);
    assert!(cgroup_leftovers(&format!("ferry-fb-{tag}/{id}")).is_empty());
}

/// The rootfs is an overlay, as dockerd mounts it for runc: only the
/// writable layer moves (a written file, a deleted one as a whiteout, a
/// directory replaced as an opaque one, a hard link, an owner), the lower
/// layer is found on the destination by its digest, the destination mounts
/// the overlay again, and deleting the container there unmounts it.
#[test]
fn an_overlay_rootfs_moves_as_its_writable_layer() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let serve_b = p.serve_b("ob");
    let bundle = busybox_bundle(p.dir(), COUNTER);
    let lower = bundle.join("rootfs");
    let (upper, work, merged) = (
        p.dir().join("upper"),
        p.dir().join("work"),
        p.dir().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged)
        .status()
        .unwrap();
    assert!(ok.success(), "mounting the test's overlay");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(merged.clone());
    edit_config(&bundle, |c| {
        c["root"]["path"] = merged.to_str().unwrap().into()
    });
    let id = format!("ovl-{tag}");
    run(a, &bundle, &id);
    a.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo before > /out/marker && ln /out/marker /out/link \
         && rm /bin/vi && rm -rf /etc && mkdir /etc && echo new > /etc/new",
    ]);
    // The container has no CAP_CHOWN: the owner changes from the host,
    // through the overlay, as an image build step would.
    std::os::unix::fs::chown(merged.join("out/marker"), Some(1000), Some(1000)).unwrap();
    wait_numbers(&merged.join("out/count"), 5);
    let out = p.migrate(a, &id, &serve_b.addr, &["--mode", "precopy", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The busybox lower layer is ~2 MiB; the writable layer a few KiB.
    let rootfs_bytes = report["rootfs_bytes"].as_u64().unwrap();
    assert!(rootfs_bytes < 256 << 10, "{report}");
    assert!(a.ids().is_empty());

    let moved = moved_rootfs(b, &id);
    let mounts = mount_leftovers(&moved.to_string_lossy());
    assert!(
        mounts
            .iter()
            .any(|m| m.contains(" - overlay ")
                && m.contains(&format!("lowerdir={}", lower.display()))),
        "no overlay over the same lower layer on the destination: {mounts:?}"
    );
    let before = numbers(&merged.join("out/count"));
    assert_consecutive(&wait_numbers(&moved.join("out/count"), before.len() + 10));
    use std::os::unix::fs::MetadataExt;
    let (marker, link) = (
        std::fs::metadata(moved.join("out/marker")).unwrap(),
        std::fs::metadata(moved.join("out/link")).unwrap(),
    );
    assert_eq!(
        std::fs::read_to_string(moved.join("out/marker")).unwrap(),
        "before\n"
    );
    assert_eq!(marker.ino(), link.ino(), "the hard link became a copy");
    assert_eq!((marker.uid(), marker.gid()), (1000, 1000));
    assert!(!moved.join("bin/vi").exists(), "a deleted file came back");
    assert!(moved.join("bin/sh").exists(), "the lower layer is missing");
    let etc: Vec<_> = std::fs::read_dir(moved.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(etc, ["new"], "the replaced directory is not opaque");
    b.ok(&["delete", "--force", &id]);
    assert!(
        mount_leftovers(&b.path().to_string_lossy()).is_empty(),
        "the destination's overlay outlived its container"
    );
}

/// A container that rewrites, grows, shrinks and removes its files as fast
/// as it can while it moves: the first pass over its rootfs reads a tree
/// that changes under it (a file's size at the walk is not its size at the
/// read; a name walked is gone when opened), the frozen pass sends what
/// changed. Both moves (there and back) succeed and the writer goes on
/// without a gap. The paper's Hadoop job broke a move this way: its
/// writable layer's stream came out with a file longer than its header.
#[test]
fn a_container_churning_its_files_moves_there_and_back() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let serve_b = p.serve_b("chb");
    let serve_a = Serve::start(a, &p.key, &p.cgroup("cha"));
    // A 4 MiB file rewritten without pause (truncated, then written): at
    // any moment its size is likely not what it was a moment before.
    let churn = "mkdir -p /churn; \
                 (while :; do head -c 4194304 /dev/zero > /churn/big; done) & \
                 i=0; while :; do echo $i >> /out/count; \
                 echo $i > /churn/f$i; rm -f /churn/f$((i-1)); \
                 mkdir /churn/d$i; echo $i > /churn/d$i/f; rm -rf /churn/d$((i-1)); \
                 i=$((i+1)); done";
    let bundle = busybox_bundle(p.dir(), &["sh", "-c", churn]);
    let id = format!("churn-{tag}");
    run(a, &bundle, &id);
    let count = bundle.join("rootfs/out/count");
    wait_numbers(&count, 200);
    p.migrate(a, &id, &serve_b.addr, &["--mode", "precopy"]);
    let there = moved_rootfs(b, &id);
    let n = numbers(&there.join("out/count")).len();
    wait_numbers(&there.join("out/count"), n + 200);
    p.migrate(b, &id, &serve_a.addr, &["--mode", "precopy"]);
    let back = moved_rootfs(a, &id);
    let n = numbers(&back.join("out/count")).len();
    assert_consecutive(&wait_numbers(&back.join("out/count"), n + 200));
    // Its files are what the loop keeps: one or two f*, one or two d*.
    let names: Vec<String> = std::fs::read_dir(back.join("churn"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let of = |c: char| names.iter().filter(|n| n.starts_with(c)).count();
    assert!(
        (1..=2).contains(&of('f')) && (1..=2).contains(&of('d')),
        "{names:?}"
    );
    a.remove(&id);
}

/// A move that fails after the dump (the destination cannot restore) leaves
/// the source's network namespace locked by CRIU (a leave-stopped dump keeps
/// its iptables rules); the source resumes with the lock taken off, so a TCP
/// exchange over the container's loopback goes on instead of failing with
/// EPERM.
#[test]
fn a_failed_move_unlocks_the_source_network() {
    let p = Pair::new();
    let (a, b) = (&p.a, &p.b);
    let script = LOOPBACK_COUNTER;
    let bundle = python_bundle(p.dir(), script);
    let count = bundle.join("rootfs/out/count");
    let id = format!("unlock-{}", std::process::id());
    run(a, &bundle, &id);
    wait_numbers(&count, 5);
    // A destination whose restore fails (its cgroup parent escapes).
    let bad = Serve::start(b, &p.key, "/../escape");
    let err = p.migrate_fails(a, &id, &bad.addr, &["--mode", "precopy"]);
    assert!(err.contains("the destination failed"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    let died = std::fs::read_to_string(bundle.join("rootfs/out/error")).unwrap_or_default();
    assert!(
        died.is_empty(),
        "the exchange failed after the resume: {died}"
    );
    assert_eq!(a.status(&id), "running");
    let n = numbers(&count).len();
    assert_consecutive(&wait_numbers(&count, n + 10));
    assert_no_lock_rules();
    a.ok(&["delete", "--force", &id]);
}

/// A container with its own address (Ferry's network, external to CRIU)
/// whose loopback TCP connection has unsent data queued (the reader is slow)
/// moves: CRIU restores unsent data with repair off, so without a lock on
/// the namespace the not-yet-restored peer would answer with a reset and
/// the restore fail with EPIPE (what a Spark job's py4j connection did).
/// Ferry locks the namespace around the dump and the restore; every byte
/// arrives, in order.
#[test]
fn unsent_loopback_data_survives_the_move() {
    let p = Pair::new();
    let (a, b, k, tag) = (&p.a, &p.b, &p.key, p.tag % 100000);
    // Two hosts of their own: each end of the container's network is a
    // veth named after it, which two roots in one namespace would share.
    let hosts = Hosts::up(&format!("mu{tag}"), "10.67.0");
    let port = 7000 + (tag % 1000) as u16;
    let addr_b = format!("10.67.0.2:{port}");
    let serve_b = serve_in(&hosts, "b", b, &addr_b, k, &format!("/ferry-ub-{tag}"));
    let on = |h: &str, root: &Root, args: &[&str]| ok_in(&hosts, h, root, args);
    let script = r#"
import socket, time
srv = socket.socket()
srv.bind(('127.0.0.1', 9000))
srv.listen(1)
w = socket.create_connection(('127.0.0.1', 9000))
r, _ = srv.accept()
w.setblocking(False)
sent = received = 0
out = open('/out/count', 'a')
i = 0
def pattern(start, n):
    return bytes((start + k) % 251 for k in range(n))
try:
    while True:
        try:
            while True:
                sent += w.send(pattern(sent, 65536))
        except BlockingIOError:
            pass
        data = r.recv(4096)
        assert data == pattern(received, len(data)), 'bytes out of order'
        received += len(data)
        out.write('%d %d\n' % (i, received))
        out.flush()
        i += 1
        time.sleep(0.02)
except Exception as e:
    open('/out/error', 'w').write(repr(e))
    raise
"#;
    let bundle = python_bundle(p.dir(), script);
    edit_config(&bundle, |c| {
        c["annotations"] = serde_json::json!({"org.ferry.network.address": "10.67.0.50/32"});
    });
    let count = bundle.join("rootfs/out/count");
    let id = format!("unsent-{tag}");
    on(
        "a",
        a,
        &["run", "-d", "--bundle", bundle.to_str().unwrap(), &id],
    );
    wait_numbers(&count, 10);
    std::thread::sleep(Duration::from_millis(300));
    let out = p.migrate_in((&hosts, "a"), a, &id, &addr_b, &["--mode", "precopy"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("moved"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let moved = moved_rootfs(b, &id).join("out");
    let before = numbers(&count).len();
    wait_numbers(&moved.join("count"), before + 20);
    let err = std::fs::read_to_string(moved.join("error")).unwrap_or_default();
    assert!(
        err.is_empty(),
        "the connection failed after the move: {err}"
    );
    assert_consecutive(&numbers(&moved.join("count")));
    on("b", b, &["delete", "--force", &id]);
    drop(serve_b);
}

/// A counter whose every number makes a round trip over a loopback TCP
/// connection inside the container (/out/count, every 50 ms); a failed
/// exchange (EPERM of a socket left in repair mode, a reset) goes to
/// /out/error and ends it.
const LOOPBACK_COUNTER: &str = r#"
import socket, threading, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', 9000))
srv.listen(1)
def serve():
    c, _ = srv.accept()
    f = c.makefile('rw')
    for line in f:
        f.write('pong ' + line.split()[1] + '\n')
        f.flush()
threading.Thread(target=serve, daemon=True).start()
c = socket.create_connection(('127.0.0.1', 9000))
f = c.makefile('rw')
out = open('/out/count', 'a')
i = 0
try:
    while True:
        f.write('ping %d\n' % i)
        f.flush()
        assert f.readline().strip() == 'pong %d' % i
        out.write('%d\n' % i)
        out.flush()
        i += 1
        time.sleep(0.05)
except Exception as e:
    open('/out/error', 'w').write(repr(e))
    raise
"#;

/// The iptables rules of the network namespace of process `pid`.
fn iptables_of(pid: u32) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("iptables-save")
        .output()
        .expect("nsenter and iptables-save (hack/setup installs iptables)");
    assert!(
        out.status.success(),
        "iptables-save in the netns of {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ferry migrate` SIGKILLed once the container is dumped and frozen (what
/// changed in its rootfs on the way through a throttled relay; an address
/// more on `lo` makes CRIU dump and lock its namespace): the container stays
/// frozen, its tasks stopped, its network namespace locked by CRIU and its
/// loopback connection in repair mode. While the move runs, `ferry resume`
/// refuses, naming it; a record saying the destination was told to run its
/// copy is refused without --force; then `ferry resume` brings it back:
/// the count goes on without gap over the same TCP connection, no lock
/// rule is left, and nothing of the move stays on either host.
#[test]
fn a_killed_migrate_is_brought_back_by_resume() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let serve_b = p.serve_b("rb");
    let bundle = python_bundle(p.dir(), LOOPBACK_COUNTER);
    // 24 MiB that does not compress in the rootfs, appended to all the
    // time: it goes ahead of the freeze and again, changed, after the
    // dump, through a relay at 4 MiB/s: 6 s each time.
    let mut blob = std::fs::File::create(bundle.join("rootfs/blob")).unwrap();
    let mut random = std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), 24 << 20);
    std::io::copy(&mut random, &mut blob).unwrap();
    drop(blob);
    let count = bundle.join("rootfs/out/count");
    let id = format!("resume-{tag}");
    run(a, &bundle, &id);
    wait_numbers(&count, 5);
    a.ok(&[
        "exec",
        "-d",
        &id,
        "sh",
        "-c",
        "while :; do echo >> /blob; sleep 0.1; done",
    ]);
    let init = a.pid(&id);
    // More than a new namespace holds: CRIU dumps and locks it.
    beyond_a_new_netns(init);
    let relay = Relay::start(
        serve_b.addr.clone(),
        Tamper::Throttle {
            bytes_per_sec: 4 << 20,
        },
    );
    let mut mig = BackgroundMove::spawn(a, &id, &relay.addr, &p.key, "precopy");
    // The dump is done (every page went) once the rootfs's changes go.
    mig.wait_for("transfer");
    let err = a.fails(&["resume", &id]);
    let pid = mig.child.id();
    assert!(
        err.contains("being moved") && err.contains(&format!("pid {pid}")),
        "a resume under a live move was not refused: {err}"
    );
    mig.child.kill().unwrap();
    let (moved, said) = mig.finish();
    assert!(!moved, "the move went through before the kill: {said}");

    assert_eq!(a.status(&id), "paused");
    let frozen = numbers(&count).len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(numbers(&count).len(), frozen, "the container counted");
    assert!(
        iptables_of(init).contains(":CRIU"),
        "the dump's network lock is not on:\n{}",
        iptables_of(init)
    );
    let record = a.path().join("outgoing").join(&id).join("move.json");
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(text.contains("\"frozen\""), "{text}");

    // Stands in for a kill between telling the destination to restore and
    // hearing back: never resumed without --force.
    std::fs::write(&record, text.replace("\"frozen\"", "\"committed\"")).unwrap();
    let err = a.fails(&["resume", &id]);
    assert!(
        err.contains(&relay.addr) && err.contains("--force"),
        "a committed move was not refused: {err}"
    );
    assert_eq!(a.status(&id), "paused");
    std::fs::write(&record, &text).unwrap();

    let out = a.ferry(&["resume", &id]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferry resume: {said}");
    assert!(
        said.contains(&format!("pid {pid}")) && said.contains("network lock off"),
        "{said}"
    );
    assert_eq!(a.status(&id), "running");
    let after = wait_numbers(&count, frozen + 20);
    assert_consecutive(&after);
    let died = std::fs::read_to_string(bundle.join("rootfs/out/error")).unwrap_or_default();
    assert!(
        died.is_empty(),
        "the loopback exchange failed after the resume: {died}"
    );
    let rules = iptables_of(init);
    assert!(!rules.contains("CRIU"), "lock rules left:\n{rules}");
    assert_no_lock_rules();
    assert!(
        !a.path().join("outgoing").exists(),
        "the move's scratch dir stayed"
    );
    // A plain unpause is refused as before: it runs.
    let err = a.fails(&["resume", &id]);
    assert!(err.contains("running"), "{err}");

    // The destination dropped what it had when the source went silent.
    let incoming = b.path().join("incoming").join(&id);
    let deadline = Instant::now() + Duration::from_secs(20);
    while incoming.exists() || !mount_leftovers(&b.path().to_string_lossy()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the destination kept the interrupted move"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(b.ids().is_empty());
    assert_no_criu();
    a.remove(&id);
    drop(relay);
}

/// The container's rootfs as the lower layer of an overlay mounted in
/// `dir` (as dockerd mounts one for runc), its config pointing at the
/// overlay; unmounted on drop.
struct OverlayRoot {
    merged: std::path::PathBuf,
}

impl OverlayRoot {
    fn mount(dir: &std::path::Path, bundle: &std::path::Path) -> OverlayRoot {
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        let ok = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                bundle.join("rootfs").display(),
                upper.display(),
                work.display()
            ))
            .arg(&merged)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting the test's overlay");
        edit_config(bundle, |c| {
            c["root"]["path"] = merged.to_str().unwrap().into()
        });
        OverlayRoot { merged }
    }
}

impl Drop for OverlayRoot {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
    }
}

/// A container moved in (its rootfs the overlay the agent mounted over its
/// received writable layer) writes a file, then `ferry checkpoint --export`
/// of it reads the overlay before the container and its layer go: the
/// archive restored under a new id on the same root has the files written
/// on both hosts, and the count goes on without gap. The received
/// container's dir and overlay go with it (nothing left under incoming/).
#[test]
fn an_export_of_a_migrated_in_container_holds_its_writable_layer() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let serve_b = p.serve_b("xb");
    let bundle = busybox_bundle(p.dir(), COUNTER);
    let overlay = OverlayRoot::mount(p.dir(), &bundle);
    let id = format!("xmig-{tag}");
    run(a, &bundle, &id);
    a.ok(&["exec", &id, "sh", "-c", "echo from-a > /out/a-file"]);
    let on_a = wait_numbers(&overlay.merged.join("out/count"), 5).len();
    p.migrate(a, &id, &serve_b.addr, &["--mode", "precopy"]);
    assert!(a.ids().is_empty());
    let moved = moved_rootfs(b, &id);
    assert!(
        mount_leftovers(&moved.to_string_lossy())
            .iter()
            .any(|m| m.contains(" - overlay ")),
        "B did not mount the received layer as an overlay"
    );
    b.ok(&["exec", &id, "sh", "-c", "echo from-b > /out/b-file"]);
    let on_b = wait_numbers(&moved.join("out/count"), on_a + 10).len();

    let file = p.dir().join("moved.tar.zst");
    b.ok(&["checkpoint", "--export", file.to_str().unwrap(), &id]);
    assert!(b.ids().is_empty(), "checkpoint removes the container");
    assert!(
        !b.path().join("incoming").join(&id).exists(),
        "the received container's dir outlived it"
    );
    let left = mount_leftovers(&b.path().to_string_lossy());
    assert!(left.is_empty(), "mounts left on B: {left:?}");

    let dest = p.dir().join("imported");
    let new_id = format!("ximp-{tag}");
    b.ok(&[
        "restore",
        "-d",
        "--import",
        file.to_str().unwrap(),
        "--bundle",
        dest.to_str().unwrap(),
        &new_id,
    ]);
    assert_eq!(b.status(&new_id), "running");
    let rootfs = dest.join("bundle/rootfs");
    for (f, text) in [("out/a-file", "from-a\n"), ("out/b-file", "from-b\n")] {
        assert_eq!(
            std::fs::read_to_string(rootfs.join(f)).unwrap_or_default(),
            text,
            "{f} in the imported rootfs"
        );
    }
    assert!(rootfs.join("bin/sh").exists(), "the lower layer is missing");
    let n = numbers(&rootfs.join("out/count")).len();
    assert!(
        n >= on_b,
        "the archive's count ({n}) is behind B's ({on_b})"
    );
    assert_consecutive(&wait_numbers(&rootfs.join("out/count"), n + 10));
    b.remove(&new_id);
    assert!(cgroup_leftovers(&format!("ferry-xb-{tag}/{id}")).is_empty());
    drop(serve_b);
}

/// A loopback ping-pong counter with 64 MiB of random bytes in its rootfs,
/// running on `a` as `id`: its bundle.
fn loopback_counter_with_blob(p: &Pair, id: &str) -> std::path::PathBuf {
    let bundle = python_bundle(&p.dir().join(id), LOOPBACK_COUNTER);
    let mut blob = std::fs::File::create(bundle.join("rootfs/blob")).unwrap();
    let mut random = std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), 64 << 20);
    std::io::copy(&mut random, &mut blob).unwrap();
    drop(blob);
    run(&p.a, &bundle, id);
    wait_numbers(&bundle.join("rootfs/out/count"), 5);
    bundle
}

/// SIGINT to `ferry migrate` in its pre-flight, while the rootfs goes
/// ahead of the freeze and while the pages go, frozen (a relay at 4 MiB/s
/// makes the last two seconds long): each time the move stops, the source
/// runs on with its loopback
/// TCP connection working and its count without gap, no lock rule is
/// left, and the destination drops what it had; the command exits 130.
/// Then the same container moves for real.
#[test]
fn sigint_at_each_phase_resumes_the_source() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let serve_b = p.serve_b("int");
    let id = format!("int-{tag}");
    let bundle = loopback_counter_with_blob(&p, &id);
    let count = bundle.join("rootfs/out/count");
    let init = a.pid(&id);
    let relay = Relay::start(
        serve_b.addr.clone(),
        Tamper::Throttle {
            bytes_per_sec: 4 << 20,
        },
    );
    for phase in ["mode ", "ahead of the freeze", "freeze and dump"] {
        let mut mig = BackgroundMove::spawn(a, &id, &relay.addr, &p.key, "precopy");
        mig.wait_for(phase);
        let pid = nix::unistd::Pid::from_raw(mig.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let status = mig.child.wait().unwrap();
        let (_, said) = mig.finish();
        assert_eq!(status.code(), Some(130), "at {phase:?}: {said}");
        assert!(
            said.contains("interrupted by SIGINT"),
            "at {phase:?}, the command did not say it was interrupted: {said}"
        );
        assert_eq!(a.status(&id), "running", "at {phase:?}: {said}");
        let before = numbers(&count).len();
        let after = wait_numbers(&count, before + 10);
        assert_consecutive(&after);
        let died = std::fs::read_to_string(bundle.join("rootfs/out/error")).unwrap_or_default();
        assert!(
            died.is_empty(),
            "at {phase:?}, the loopback exchange failed: {died}"
        );
        let rules = iptables_of(init);
        assert!(
            !rules.contains("CRIU"),
            "at {phase:?}, lock rules left:\n{rules}"
        );
        assert!(
            !a.path().join("outgoing").exists(),
            "at {phase:?}: scratch dir left"
        );
        let incoming = b.path().join("incoming").join(&id);
        let deadline = Instant::now() + Duration::from_secs(30);
        while incoming.exists() || !b.ids().is_empty() {
            assert!(
                Instant::now() < deadline,
                "at {phase:?}, the destination kept the interrupted move"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_no_lock_rules();
    drop(relay);
    // Nothing stuck: it moves for real.
    p.migrate(a, &id, &serve_b.addr, &["--mode", "precopy"]);
    assert_eq!(b.status(&id), "running");
    let moved = moved_rootfs(b, &id).join("out/count");
    let v = wait_numbers(&moved, numbers(&count).len() + 10);
    assert_consecutive(&v);
    b.remove(&id);
    assert_no_criu();
}

/// The link is cut as the destination's restore completes (the relay is
/// cut the moment the restored container appears in the agent's state
/// root: before or after the commit crossed, whichever the timing gives):
/// exactly one copy runs, with its whole rootfs and its count without gap,
/// and the other is gone; nothing stays frozen.
#[test]
fn a_cut_as_the_restore_completes_leaves_exactly_one_copy() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let serve_b = p.serve_b("cutr");
    let id = format!("cutr-{tag}");
    let bundle = loopback_counter_with_blob(&p, &id);
    let blob_sum = std::fs::read(bundle.join("rootfs/blob")).unwrap();
    let count = bundle.join("rootfs/out/count");
    let relay = Relay::start(
        serve_b.addr.clone(),
        Tamper::Throttle {
            bytes_per_sec: 64 << 20,
        },
    );
    let mig = BackgroundMove::spawn(a, &id, &relay.addr, &p.key, "precopy");
    // Its state file, not its dir: the destination makes the dir as it
    // prepares the restore, before the source freezes.
    let state = b.path().join(&id).join("state.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !state.exists() {
        assert!(Instant::now() < deadline, "the destination never restored");
        std::thread::sleep(Duration::from_millis(2));
    }
    relay.cut();
    let (moved, said) = mig.finish();
    eprintln!("ferry migrate said:\n{said}");
    // The agent decides within its peer timeout (20 s) at the latest.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (here, there) = (a.runs(&id), b.runs(&id));
        match (moved, here, there) {
            (true, false, true) | (false, true, false) => break,
            _ if Instant::now() > deadline => panic!(
                "not exactly one copy: moved {moved}, source running {here}, destination running {there}; {said}"
            ),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    // The copy that runs goes on without gap, on its whole rootfs.
    let (root, rootfs) = if moved {
        assert!(!a.ids().contains(&id), "the source's copy stayed");
        (b, moved_rootfs(b, &id))
    } else {
        let incoming = b.path().join("incoming").join(&id);
        let deadline = Instant::now() + Duration::from_secs(10);
        while incoming.exists() {
            assert!(
                Instant::now() < deadline,
                "the destination kept the move it killed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (a, bundle.join("rootfs"))
    };
    let before = numbers(&rootfs.join("out/count")).len();
    let v = wait_numbers(&rootfs.join("out/count"), before + 10);
    assert_consecutive(&v);
    assert!(v.len() > numbers(&count).len().min(v.len()) - 1);
    assert!(
        std::fs::read(rootfs.join("blob")).unwrap() == blob_sum,
        "the running copy's rootfs is not whole"
    );
    let died = std::fs::read_to_string(rootfs.join("out/error")).unwrap_or_default();
    assert!(died.is_empty(), "the loopback exchange failed: {died}");
    root.remove(&id);
    assert_no_lock_rules();
    assert_no_criu();
}

/// The agent is SIGKILLed in the middle of a post-copy move, while B runs
/// the container and pages are still missing (the page connection
/// throttled to 32 MiB/s): the kernel would drop the userfaultfds with the
/// agent and let B's copy run on zero pages, but the agent's guardian,
/// which holds them too, kills that copy first (every line it wrote has
/// the right crc, and it is dead), and A, which kept the whole memory,
/// resumes.
#[test]
fn a_killed_agent_during_postcopy_leaves_no_copy_on_corrupt_memory() {
    let p = Pair::new();
    let (a, b, tag) = (&p.a, &p.b, p.tag);
    let mut serve_b = p.serve_b("kp");
    let relay = Relay::start(
        serve_b.addr.clone(),
        Tamper::Throttle {
            bytes_per_sec: 32 << 20,
        },
    );
    let bundle = python_bundle(p.dir(), CRC_COUNTER_256_MIB);
    let count = bundle.join("rootfs/out/count");
    let id = format!("kp-{tag}");
    run(a, &bundle, &id);
    wait_numbers(&count, 3);
    let crc = crc_lines(&count)[0].1;
    let mut mig = BackgroundMove::spawn(a, &id, &relay.addr, &p.key, "postcopy");
    mig.wait_for("memory follows");
    let pid_b = b.pid(&id);
    serve_b.child.kill().unwrap();
    serve_b.child.wait().unwrap();
    let (moved, err) = mig.finish();
    assert!(!moved, "the move claimed success: {err}");
    // B's copy is dead, quickly, and never wrote a wrong crc.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid_b}")).exists() {
        assert!(
            Instant::now() < deadline,
            "B's copy ({pid_b}) outlived its agent: {err}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let moved = moved_rootfs(b, &id).join("out/count");
    for (k, c) in crc_lines(&moved) {
        assert_eq!(c, crc, "line {k} on B: the copy ran on zero pages");
    }
    // Its guardian goes once the copy is dead (it reaps, then exits: on a
    // loaded machine that is not at the same instant).
    let guardian = || {
        std::process::Command::new("pgrep")
            .args(["-x", "ferry-uffdguard"])
            .status()
            .unwrap()
            .success()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while guardian() {
        assert!(Instant::now() < deadline, "a guardian outlived its work");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A resumed with its memory whole.
    assert_eq!(a.status(&id), "running", "{err}");
    let n = crc_lines(&count).len();
    wait_numbers(&count, n + 5);
    assert_crc_count(&crc_lines(&count), crc, "on A, resumed");
    a.remove(&id);
    b.remove(&id);
    assert_no_criu();
    assert_no_lock_rules();
}
