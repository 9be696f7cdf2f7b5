//! Issue 14's acceptance tests of the migration channel against a hostile
//! or broken network, as root, between two state roots of this machine
//! (hosts A and B), every move through a relay (tests/src/relay.rs) that
//! attacks one phase of it:
//! - tampering (a byte flipped in the offer, deep in the rootfs stream, in
//!   the page stream; an earlier record replayed in place of a later one):
//!   the move fails naming the tampering, the source counts on, B keeps
//!   nothing;
//! - capture: a marker the container keeps in memory and in a file is
//!   nowhere in the recorded traffic of an encrypted move (pre-copy and
//!   post-copy), and is there in a --plaintext one;
//! - a silent partition at each phase: the move fails within the peer
//!   timeout, the source counts on, B cleans up on its own;
//! - per-host identities, and --plaintext asked on one side only.
//!
//! The agent and pair helpers here are minimal twins of tests/migrate.rs's
//! (still private there).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::relay::{Dir, Record, Relay, Verdict};
use ferry_tests::*;

/// The tests here share the machine's CRIU and cgroups: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The peer timeout of the tests (seconds), on both sides.
const PEER_TIMEOUT: &str = "3";
/// How long a move may take to fail once its peer went silent: the
/// timeout, plus generous slack for a debug build on a loaded 2-core VM.
const FAIL_WITHIN: Duration = Duration::from_secs(15);
/// How long the agent may take to drop a failed move after `ferry migrate`
/// gave up (it times out on its own side too).
const CLEAN_WITHIN: Duration = Duration::from_secs(10);

/// A `ferry serve` of the test's, its stderr (the agent's log) in a file;
/// killed on drop.
struct Agent {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Agent {
    /// Serves `root` with `channel` (the channel's flags) and
    /// `--cgroup-parent cgroup`.
    fn start(root: &Root, cgroup: &str, channel: &[String], log: PathBuf) -> Agent {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(ferry_bin())
            .arg("--root")
            .arg(root.path())
            .args(["serve", "--listen", &addr, "--cgroup-parent", cgroup])
            .args(channel)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // It says so once it listens (a probing connection would show in
        // its log as a failed move).
        let agent = Agent { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent.said().contains("receiving containers on") {
            assert!(
                Instant::now() < deadline,
                "ferry serve did not start: {}",
                agent.said()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    /// What the agent said so far.
    fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its children (the CRIU it runs for a move in flight).
    fn children(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id()));
        for t in tasks.into_iter().flatten().flatten() {
            let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                list.split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        out
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Hosts A and B of one test: their state roots, a shared key, a scratch
/// dir, a tag (this process's id) naming containers and cgroups.
struct Two {
    a: Root,
    b: Root,
    tmp: tempfile::TempDir,
    key: PathBuf,
    tag: u32,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Two {
    fn new() -> Two {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = tempfile::tempdir().unwrap();
        let key = keygen(&tmp.path().join("key"));
        Two {
            a: Root::new(),
            b: Root::new(),
            tmp,
            key,
            tag: std::process::id(),
            _serial,
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The shared key's flags, and `extra`.
    fn keyed(&self, extra: &[&str]) -> Vec<String> {
        let mut v = vec!["--key-file".to_string(), self.key.display().to_string()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    fn cgroup(&self, name: &str) -> String {
        format!("/ferry-h{name}-{}", self.tag)
    }

    /// An agent for `root` named `name` (its cgroups and log), with
    /// `channel` flags.
    fn agent(&self, root: &Root, name: &str, channel: &[String]) -> Agent {
        Agent::start(
            root,
            &self.cgroup(name),
            channel,
            self.dir().join(format!("{name}.log")),
        )
    }

    /// The busybox counter running on A as `hx-NAME-TAG`, after `prepare`
    /// had its bundle: (id, the count file).
    fn counter(&self, name: &str, cmd: &[&str], prepare: impl FnOnce(&Path)) -> (String, PathBuf) {
        let bundle = busybox_bundle(&self.dir().join(name), cmd);
        prepare(&bundle);
        let id = format!("hx-{name}-{}", self.tag);
        self.a
            .ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
        let count = bundle.join("rootfs/out/count");
        wait_numbers(&count, 3);
        (id, count)
    }
}

/// `ferry --root FROM migrate ARGS` run on a thread: its output and when
/// it exited.
fn spawn_migrate(from: &Root, args: Vec<String>) -> std::thread::JoinHandle<(Output, Instant)> {
    let root = from.path().to_path_buf();
    std::thread::spawn(move || {
        let out = run_ferry(
            Command::new(ferry_bin())
                .arg("--root")
                .arg(root)
                .arg("migrate")
                .args(args),
        );
        (out, Instant::now())
    })
}

/// `ferry migrate ID --to TO CHANNEL... EXTRA...` from `from`, waited for.
fn migrate(from: &Root, id: &str, to: &str, channel: &[String], extra: &[&str]) -> Output {
    let mut args = vec![id.to_string(), "--to".into(), to.to_string()];
    args.extend(channel.iter().cloned());
    args.extend(extra.iter().map(|s| s.to_string()));
    spawn_migrate(from, args).join().unwrap().0
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A move that must have failed: its stderr.
fn failed(out: &Output) -> String {
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "the move succeeded: {}{err}",
        text(&out.stdout)
    );
    err
}

/// A move that must have succeeded, with --json: its report.
fn report(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "the move failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The source runs on after a failed move: its status, and its count
/// going on from where it was, without gap or repeat.
fn assert_counts_on(a: &Root, id: &str, count: &Path) {
    assert_eq!(a.status(id), "running", "the source did not resume");
    let n = numbers(count).len();
    assert_continuous(&wait_numbers(count, n + 5));
}

/// What a failed move left on B (running as `agent`, its cgroups under
/// `cgroup`): its container, incoming dir, mounts, cgroups, a CRIU of the
/// agent's. Empty once the agent dropped the move.
fn leftovers(b: &Root, agent: &Agent, id: &str, cgroup: &str) -> Vec<String> {
    let mut left = Vec::new();
    for c in b.ids() {
        // A running one is a second copy of the container.
        left.push(format!("container {c}, {}", b.status(&c)));
    }
    // A restore prepared as the offer was accepted: a state dir without
    // state.json, which `ferry list` does not show.
    if b.path().join(id).exists() {
        left.push(format!("prepared restore {}", b.path().join(id).display()));
    }
    let incoming = b.path().join("incoming").join(id);
    if incoming.exists() {
        left.push(format!("{}", incoming.display()));
    }
    left.extend(mount_leftovers(&b.path().to_string_lossy()));
    let cg = format!("{}/{id}", cgroup.trim_start_matches('/'));
    left.extend(
        cgroup_leftovers(&cg)
            .into_iter()
            .map(|p| p.display().to_string()),
    );
    if !agent.children().is_empty() {
        left.push(format!("agent children {:?}", agent.children()));
    }
    left
}

/// Nothing of the move stays on B: waits (up to `within`) for the agent
/// to drop it; how long that took.
fn assert_nothing_left(
    b: &Root,
    agent: &Agent,
    id: &str,
    cgroup: &str,
    within: Duration,
) -> Duration {
    let t = Instant::now();
    loop {
        let left = leftovers(b, agent, id, cgroup);
        if left.is_empty() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "B kept the failed move after {within:?}: {left:?}\nagent said:\n{}",
            agent.said()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The part of a move that a data record of the control connection,
/// source to agent, carries, told apart by the records' data lengths (the
/// wire framing of oci/src/migrate/wire.rs: 4-byte length, kind, payload):
/// the offer first, then the `{"RootfsAhead":{"overlay":false}}` step
/// (4 + 1 + 33 = 38 bytes), the root filesystem's stream sent before the
/// freeze, its end (4 + 1 + SHA-256 = 37), the `"Images"` step (13), the
/// images stream, its end (37), the `RootfsChanges` step (the record after
/// the images' end), the changes' stream, its end (37), the `"Restore"`
/// step (14). (A stream's last record may be 37 bytes by chance, about
/// once in 65,518.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Offer,
    AheadStep,
    Ahead,
    AheadEnd,
    ImagesStep,
    Images,
    ImagesEnd,
    ChangesStep,
    Changes,
    ChangesEnd,
    Restore,
}

/// Follows the parts of the control connection's records (source to
/// agent); [`Phases::see`] them in order.
struct Phases {
    part: Part,
    /// Data bytes of the current part before the record seen.
    into: u64,
    /// The index of the `RootfsAhead` step's record.
    ahead_step: Option<usize>,
}

impl Phases {
    fn new() -> Phases {
        Phases {
            part: Part::Offer,
            into: 0,
            ahead_step: None,
        }
    }

    /// `r`'s part, and the bytes of that part before it; `None` for a
    /// record not of the control connection going up.
    fn see(&mut self, r: &Record) -> Option<(Part, u64)> {
        if r.conn != 0 || r.dir != Dir::Up {
            return None;
        }
        let next = match (self.part, r.len) {
            (Part::Offer, 38) => Part::AheadStep,
            (Part::AheadStep, _) => Part::Ahead,
            (Part::Ahead, 37) => Part::AheadEnd,
            (Part::AheadEnd, 13) => Part::ImagesStep,
            (Part::ImagesStep, _) => Part::Images,
            (Part::Images, 37) => Part::ImagesEnd,
            (Part::ImagesEnd, _) => Part::ChangesStep,
            (Part::ChangesStep, _) => Part::Changes,
            (Part::Changes, 37) => Part::ChangesEnd,
            (Part::ChangesEnd, 14) => Part::Restore,
            (p, _) => p,
        };
        if next != self.part {
            self.part = next;
            self.into = 0;
        }
        if next == Part::AheadStep {
            self.ahead_step = Some(r.index);
        }
        let at = (self.part, self.into);
        self.into += r.len as u64;
        Some(at)
    }
}

/// A rule that answers `then` once, for the first data record `when`
/// holds of (with its [`Phases`] part, if on the control connection going
/// up), and lets every other one pass.
fn once(
    mut when: impl FnMut(&Record, Option<(Part, u64)>, &Phases) -> Option<Verdict> + Send + 'static,
) -> impl FnMut(&Record) -> Verdict + Send + 'static {
    let mut phases = Phases::new();
    let mut done = false;
    move |r| {
        let part = phases.see(r);
        if done {
            return Verdict::Pass;
        }
        match when(r, part, &phases) {
            Some(v) => {
                done = true;
                v
            }
            None => Verdict::Pass,
        }
    }
}

/// 4 MiB of random bytes at the rootfs's /data.bin: a rootfs stream long
/// enough to be attacked in its middle.
fn four_mib(bundle: &Path) {
    let mut data = vec![0u8; 4 << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut data))
        .unwrap();
    std::fs::write(bundle.join("rootfs/data.bin"), data).unwrap();
}

/// 48 MiB at the rootfs's /big.bin (written, not sparse: the tar would
/// send a sparse file as a few bytes): more than the kernel's socket
/// buffers on both sides of the relay hold (tcp_wmem's 4 MiB and
/// tcp_rmem's 32 MiB at most here), so that a partition in the rootfs
/// stream finds the source blocked in a write, not waiting for an answer.
fn forty_eight_mib(bundle: &Path) {
    std::fs::write(bundle.join("rootfs/big.bin"), vec![7u8; 48 << 20]).unwrap();
}

/// A move from A to an agent on B through a relay built by `relay`, which
/// must fail; checks the source counts on and B keeps nothing, and returns
/// (what `ferry migrate` said, the agent's log, the relay's events, how
/// long after the relay stalled, if it did, the move failed).
fn attacked_move(
    two: &Two,
    name: &str,
    prepare: impl FnOnce(&Path),
    relay: impl FnOnce(ferry_tests::relay::Builder) -> ferry_tests::relay::Builder,
) -> (String, String, Vec<String>, Option<Duration>) {
    attacked_move_with(two, name, (&[], &[]), prepare, relay)
}

/// [`attacked_move`] with more flags for the agent and for `ferry migrate`.
fn attacked_move_with(
    two: &Two,
    name: &str,
    (agent_flags, migrate_flags): (&[&str], &[&str]),
    prepare: impl FnOnce(&Path),
    relay: impl FnOnce(ferry_tests::relay::Builder) -> ferry_tests::relay::Builder,
) -> (String, String, Vec<String>, Option<Duration>) {
    let timeout = ["--peer-timeout", PEER_TIMEOUT];
    let mut flags = two.keyed(&timeout);
    flags.extend(agent_flags.iter().map(|f| f.to_string()));
    let agent = two.agent(&two.b, name, &flags);
    let (id, count) = two.counter(name, COUNTER, prepare);
    let relay = relay(Relay::builder(&agent.addr)).start();
    let started = Instant::now();
    let mut args = vec![id.clone(), "--to".into(), relay.addr.clone()];
    args.extend(two.keyed(&timeout));
    args.extend(["--mode".to_string(), "precopy".into()]);
    args.extend(migrate_flags.iter().map(|f| f.to_string()));
    let (out, ended) = spawn_migrate(&two.a, args).join().unwrap();
    let err = failed(&out);
    let after_stall = relay.stalled_at().map(|s| ended.duration_since(s));
    eprintln!(
        "{name}: the move failed after {:.1} s ({} after the stall): {err}",
        ended.duration_since(started).as_secs_f64(),
        after_stall.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
    );
    assert_counts_on(&two.a, &id, &count);
    let took = assert_nothing_left(&two.b, &agent, &id, &two.cgroup(name), CLEAN_WITHIN);
    eprintln!(
        "{name}: B was clean {:.1} s after the move failed",
        took.as_secs_f64()
    );
    let events = relay.events();
    eprintln!("{name}: the relay {events:?}");
    drop(relay);
    two.a.remove(&id);
    (err, agent.said(), events, after_stall)
}

/// Asserts the relay's attack happened (`what` in its events).
fn assert_happened(events: &[String], what: &str) {
    assert!(
        events.iter().any(|e| e.contains(what)),
        "the relay never {what}: {events:?}"
    );
}

/// The failure names a tampered record (channel.rs's Tampered: "failed
/// its authentication tag: the stream was tampered with...").
fn assert_names_tampering(who: &str, said: &str) {
    assert!(
        said.contains("tampered") || said.contains("authentication tag"),
        "{who} does not name the tampering:\n{said}"
    );
}

/// A byte of the offer (the first data record of the control connection)
/// flipped after the handshake.
#[test]
fn a_flipped_byte_in_the_offer_fails_the_move() {
    let two = Two::new();
    let (err, agent, events, _) = attacked_move(
        &two,
        "tofr",
        |_| {},
        |r| {
            r.rule(once(|r, part, _| {
                (part.map(|p| p.0) == Some(Part::Offer)).then_some(Verdict::Flip { at: r.len / 2 })
            }))
        },
    );
    assert_happened(&events, "flipped");
    assert_names_tampering("the agent", &agent);
    assert_names_tampering("ferry migrate", &err);
}

/// A byte 2 MiB into the root filesystem's stream (a 4 MiB file in the
/// rootfs) flipped, while it goes ahead of the freeze: nothing was frozen.
#[test]
fn a_flipped_byte_deep_in_the_rootfs_stream_fails_the_move() {
    let two = Two::new();
    let (err, agent, events, _) = attacked_move(&two, "trfs", four_mib, |r| {
        r.rule(once(|_, part, _| match part {
            Some((Part::Ahead, into)) if into >= 2 << 20 => Some(Verdict::Flip { at: 1000 }),
            _ => None,
        }))
    });
    assert_happened(&events, "flipped");
    assert_names_tampering("the agent", &agent);
    assert_names_tampering("ferry migrate", &err);
    assert!(
        !err.contains("freeze and dump"),
        "frozen for nothing: {err}"
    );
}

/// A byte of what changed in the root filesystem, sent while the source
/// is frozen (the counter's file, rewritten), flipped.
#[test]
fn a_flipped_byte_in_the_frozen_rootfs_changes_fails_the_move() {
    let two = Two::new();
    let (err, agent, events, _) = attacked_move(
        &two,
        "tchg",
        |_| {},
        |r| {
            r.rule(once(|_, part, _| match part {
                Some((Part::Changes, _)) => Some(Verdict::Flip { at: 10 }),
                _ => None,
            }))
        },
    );
    assert_happened(&events, "flipped");
    assert_names_tampering("the agent", &agent);
    assert_names_tampering("ferry migrate", &err);
}

/// A byte of the page stream (the page connection, 16 KiB in) flipped:
/// the pages go into B's restored tasks (the lazy-pages daemon reads the
/// channel).
#[test]
fn a_flipped_byte_in_the_page_stream_fails_the_move() {
    flipped_page_byte("tpag", &["--precopy-pages", "uffd"]);
}

/// The same with the pages going into images (CRIU's page server reads
/// the channel through the agent's relay).
#[test]
fn a_flipped_byte_in_the_page_stream_into_images_fails_the_move() {
    flipped_page_byte("tpgi", &["--precopy-pages", "images"]);
}

fn flipped_page_byte(name: &str, migrate_flags: &[&str]) {
    let two = Two::new();
    let (err, agent, events, _) = attacked_move_with(
        &two,
        name,
        (&[], migrate_flags),
        |_| {},
        |r| {
            r.rule(once(|r, _, _| {
                (r.conn == 1 && r.dir == Dir::Up && r.index > 0 && r.offset >= 16 << 10)
                    .then_some(Verdict::Flip { at: 100 })
            }))
        },
    );
    assert_happened(&events, "flipped");
    assert_names_tampering("the agent", &agent);
    assert_names_tampering("ferry migrate", &err);
}

/// The `RootfsAhead` step's record (sealed, authentic) sent again in
/// place of the `"Images"` step's: without per-record nonces the agent
/// would unpack the images over the container's root filesystem.
#[test]
fn a_replayed_record_fails_the_move() {
    let two = Two::new();
    let (err, agent, events, _) = attacked_move(
        &two,
        "trpl",
        |_| {},
        |r| {
            r.rule(once(|_, part, phases| match part {
                Some((Part::ImagesStep, _)) => Some(Verdict::Replay {
                    index: phases
                        .ahead_step
                        .expect("the root filesystem's step before the images"),
                }),
                _ => None,
            }))
        },
    );
    assert_happened(&events, "replayed");
    assert_names_tampering("the agent", &agent);
    assert_names_tampering("ferry migrate", &err);
}

/// A random marker of 24 letters and digits.
fn marker() -> String {
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    let abc = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    b.iter()
        .map(|x| abc[*x as usize % abc.len()] as char)
        .collect()
}

/// Whether `needle` is in the writable memory of process `pid`.
fn memory_holds(pid: u32, needle: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    maps.lines().any(|l| {
        let mut w = l.split_whitespace();
        let (range, perms) = (w.next().unwrap(), w.next().unwrap());
        if !perms.starts_with("rw") || l.ends_with("[vvar]") || l.ends_with("[vsyscall]") {
            return false;
        }
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).unwrap(),
            u64::from_str_radix(hi, 16).unwrap(),
        );
        let mut buf = vec![0u8; (hi - lo) as usize];
        mem.read_exact_at(&mut buf, lo).is_ok() && contains(&buf, needle)
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Which of `markers` a relay's capture holds, connection by connection
/// (e.g. "memory in connection 1").
fn found_in(relay: &Relay, markers: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    for conn in 0..relay.connections() {
        for dir in [Dir::Up, Dir::Down] {
            let bytes = relay.captured(conn, dir);
            for (name, m) in markers {
                if contains(&bytes, m.as_bytes()) {
                    found.push(format!("{name} in connection {conn} {dir:?}"));
                }
            }
        }
    }
    found
}

/// A container keeps a marker in memory only (a shell variable, read from
/// a file it then deletes) and another in a file of its rootfs. Every byte
/// of every connection of a pre-copy move to B and a post-copy move back
/// is recorded: neither marker is there, though both arrived (B's copy
/// holds the memory marker, the file is in its rootfs). The same moves
/// with --plaintext on both sides: both markers are in the capture (the
/// test can fail), and the report says PLAINTEXT.
#[test]
fn a_capture_of_the_moves_holds_no_marker() {
    let two = Two::new();
    let (in_memory, in_file) = (marker(), marker());
    let cmd = [
        "sh",
        "-c",
        "m=$(cat /secret); rm /secret; \
         i=0; while :; do echo $i >> /out/count; i=$((i+1)); sleep 0.05; done",
    ];
    let (id, count) = two.counter("cap", &cmd, |bundle| {
        std::fs::write(bundle.join("rootfs/secret"), &in_memory).unwrap();
        std::fs::write(bundle.join("rootfs/keep.txt"), &in_file).unwrap();
    });
    let markers = [("memory", in_memory.as_str()), ("file", in_file.as_str())];
    // The marker is in the container's memory and only there.
    assert!(memory_holds(two.a.pid(&id), in_memory.as_bytes()));
    let moved = |root: &Root| root.path().join("incoming").join(&id).join("bundle/rootfs");

    for plaintext in [false, true] {
        let flags: &[&str] = if plaintext { &["--plaintext"] } else { &[] };
        let channel = two.keyed(flags);
        let on_b = two.agent(&two.b, &format!("capb{}", plaintext as u8), &channel);
        let on_a = two.agent(&two.a, &format!("capa{}", plaintext as u8), &channel);
        let mut found = Vec::new();
        for (mode, from, to, agent) in [
            ("precopy", &two.a, &two.b, &on_b),
            ("postcopy", &two.b, &two.a, &on_a),
        ] {
            let relay = Relay::builder(&agent.addr).capture().start();
            let out = migrate(
                from,
                &id,
                &relay.addr,
                &channel,
                &["--mode", mode, "--json"],
            );
            let r = report(&out);
            let ch = r["channel"].as_str().unwrap();
            match plaintext {
                false => assert!(ch.starts_with("encrypted (Noise"), "{r}"),
                true => assert!(ch.starts_with("PLAINTEXT"), "{r}"),
            }
            assert_eq!(relay.connections(), 2, "a control and a page connection");
            // Both arrived: the file, and (once every page is in) the
            // memory.
            assert_eq!(
                std::fs::read_to_string(moved(to).join("keep.txt")).unwrap(),
                in_file
            );
            assert!(
                memory_holds(to.pid(&id), in_memory.as_bytes()),
                "the memory marker did not arrive ({mode})"
            );
            let here = found_in(&relay, &markers);
            eprintln!(
                "{mode} {}: {} bytes captured; markers found: {here:?}",
                if plaintext { "plaintext" } else { "encrypted" },
                (0..2)
                    .map(|c| relay.bytes(c, Dir::Up) + relay.bytes(c, Dir::Down))
                    .sum::<u64>()
            );
            found.push((mode, here));
        }
        match plaintext {
            false => {
                for (mode, here) in &found {
                    assert!(here.is_empty(), "an encrypted {mode} move leaked {here:?}");
                }
            }
            true => {
                // Pre-copy: the file in the rootfs stream, the memory in
                // the page stream; post-copy: the memory in the pages.
                let pre = &found[0].1;
                assert!(
                    pre.contains(&"file in connection 0 Up".to_string()),
                    "{pre:?}"
                );
                assert!(
                    pre.contains(&"memory in connection 1 Up".to_string()),
                    "{pre:?}"
                );
                let post = &found[1].1;
                assert!(
                    post.iter().any(|f| f.starts_with("memory in connection 1")),
                    "{post:?}"
                );
            }
        }
    }
    // Back on A after the moves, counting on from where it was.
    let n = numbers(&count).len();
    assert_continuous(&wait_numbers(&moved(&two.a).join("out/count"), n + 5));
    two.a.remove(&id);
}

/// A silent partition: the relay forwards nothing more, either way, on
/// any connection, once `when` holds of a record; closes nothing. With
/// --peer-timeout 3 on both sides the move fails within the bound and
/// names the silence, the source counts on, B drops the move on its own.
fn partition(
    name: &str,
    prepare: impl FnOnce(&Path),
    when: impl FnMut(&Record, Option<(Part, u64)>, &Phases) -> Option<Verdict> + Send + 'static,
) -> String {
    let two = Two::new();
    let (err, _, events, after_stall) = attacked_move(&two, name, prepare, |r| r.rule(once(when)));
    assert_happened(&events, "stalled");
    let after_stall = after_stall.unwrap();
    assert!(
        after_stall < FAIL_WITHIN,
        "the move failed {after_stall:?} after the partition: {err}"
    );
    assert!(
        err.contains("silent") || err.contains("no word"),
        "the failure does not name the silence: {err}"
    );
    err
}

/// Right after the control connection's handshake, before the offer.
#[test]
fn a_partition_in_preflight_fails_within_the_timeout() {
    partition(
        "pfl",
        |_| {},
        |_, part, _| (part.map(|p| p.0) == Some(Part::Offer)).then_some(Verdict::Stall),
    );
}

/// In the middle of the page stream (32 KiB into the page connection).
#[test]
fn a_partition_during_the_pages_fails_within_the_timeout() {
    let err = partition(
        "ppg",
        |_| {},
        |r, _, _| {
            (r.conn == 1 && r.dir == Dir::Up && r.index > 0 && r.offset >= 32 << 10)
                .then_some(Verdict::Stall)
        },
    );
    assert!(
        err.contains("freeze and dump"),
        "not stalled in the dump: {err}"
    );
}

/// 1 MiB into the root filesystem's stream (ahead of the freeze), with
/// 48 MiB of it still to come: the source is blocked writing, its reads
/// are not what times out.
#[test]
fn a_partition_during_the_rootfs_fails_within_the_timeout() {
    let err = partition("prf", forty_eight_mib, |_, part, _| match part {
        Some((Part::Ahead, into)) if into >= 1 << 20 => Some(Verdict::Stall),
        _ => None,
    });
    assert!(
        err.contains("ahead of the freeze") && !err.contains("freeze and dump"),
        "not stalled sending the root filesystem ahead: {err}"
    );
}

/// The link goes down after the agent accepted the offer (and prepared
/// the restore), as the source opens its page connection: the agent, whose
/// handshake deadline is a minute here, drops the move as soon as the
/// control connection closes, not a minute later.
#[test]
fn a_cut_before_the_page_connection_frees_the_destination_at_once() {
    let two = Two::new();
    let (err, _, events, _) = attacked_move_with(
        &two,
        "cpc",
        (&["--handshake-timeout", "60"], &[]),
        |_| {},
        |r| {
            r.rule(once(|r, _, _| {
                (r.conn == 1 && r.dir == Dir::Up && r.index == 0).then_some(Verdict::Cut)
            }))
        },
    );
    assert_happened(&events, "cut every connection");
    assert!(
        !err.contains("freeze and dump"),
        "frozen for nothing: {err}"
    );
}

/// The source asked for the restore and waits for the answer; the request
/// never arrives.
#[test]
fn a_partition_at_the_restore_request_fails_within_the_timeout() {
    let err = partition(
        "prq",
        |_| {},
        |_, part, _| (part.map(|p| p.0) == Some(Part::Restore)).then_some(Verdict::Stall),
    );
    assert!(err.contains("restore"), "not stalled at the restore: {err}");
}

/// The agent restored the container and answers `Restored` (its sixth
/// data record on the control connection: accepted, pages ready, rootfs
/// received ahead, images received, changes received, restored); the
/// answer never arrives. Only
/// one copy may run: the source, which never heard of the restore, runs
/// on, so B must kill its own.
#[test]
fn a_partition_at_the_restore_answer_leaves_one_copy() {
    let err = partition(
        "pra",
        |_| {},
        |r, _, _| (r.conn == 0 && r.dir == Dir::Down && r.index == 5).then_some(Verdict::Stall),
    );
    assert!(err.contains("restore"), "not stalled at the restore: {err}");
}

/// `ferry keygen --identity` for A and B, peers files naming each other:
/// a stranger's identity (not in B's peers file) is refused, so is a
/// shared-key source (naming both kinds), the source running on each time;
/// then A's identity moves the container, the report naming the channel.
#[test]
fn per_host_identities_move_and_refuse_strangers() {
    let two = Two::new();
    let d = two.dir();
    let keygen = |name: &str| {
        let f = d.join(name);
        let out = run_ferry(
            Command::new(ferry_bin())
                .args(["keygen", "--identity"])
                .arg(&f),
        );
        assert!(out.status.success(), "{out:?}");
        let public = std::fs::read_to_string(d.join(format!("{name}.pub"))).unwrap();
        (f, public)
    };
    let ((ia, pa), (ib, pb), (ic, pc)) = (keygen("id-a"), keygen("id-b"), keygen("id-c"));
    let peers = |name: &str, lines: &[&str]| {
        let p = d.join(name);
        std::fs::write(&p, lines.concat()).unwrap();
        p
    };
    let flags = |id: &Path, peers: &Path| {
        vec![
            "--identity".to_string(),
            id.display().to_string(),
            "--peers".into(),
            peers.display().to_string(),
        ]
    };
    let (peers_a, peers_b) = (peers("peers-a", &[&pb]), peers("peers-b", &[&pa]));
    let agent = two.agent(&two.b, "ids", &flags(&ib, &peers_b));
    let (id, count) = two.counter("ids", COUNTER, |_| {});
    let pid = two.a.pid(&id);

    // C lists B, but B does not list C.
    let peers_c = peers("peers-c", &[&pb]);
    let err = failed(&migrate(
        &two.a,
        &id,
        &agent.addr,
        &flags(&ic, &peers_c),
        &[],
    ));
    assert!(err.contains("peers file"), "{err}");
    let c_key = pc.split_whitespace().next().unwrap();
    assert!(
        agent.said().contains(c_key),
        "the agent does not name C's key:\n{}",
        agent.said()
    );
    assert_counts_on(&two.a, &id, &count);

    // A shared key against an agent of identities.
    let err = failed(&migrate(&two.a, &id, &agent.addr, &two.keyed(&[]), &[]));
    assert!(
        err.contains("--identity") && err.contains("--key-file"),
        "{err}"
    );
    assert_counts_on(&two.a, &id, &count);
    assert_eq!(two.a.pid(&id), pid, "the refusals touched the source");
    assert!(leftovers(&two.b, &agent, &id, &two.cgroup("ids")).is_empty());

    let r = report(&migrate(
        &two.a,
        &id,
        &agent.addr,
        &flags(&ia, &peers_a),
        &["--mode", "precopy", "--json"],
    ));
    let ch = r["channel"].as_str().unwrap();
    assert!(
        ch.contains("Noise_XX") && ch.contains("per-host identities"),
        "{r}"
    );
    assert!(two.a.ids().is_empty());
    let before = numbers(&count);
    let moved = two
        .b
        .path()
        .join("incoming")
        .join(&id)
        .join("bundle/rootfs/out/count");
    assert_continuous(&wait_numbers(&moved, before.len() + 5));
    two.b.remove(&id);
}

/// --plaintext on one side only is refused before anything is frozen, the
/// message naming the flag, whichever side asked; on both sides the move
/// works and its report says PLAINTEXT.
#[test]
fn plaintext_must_be_asked_on_both_sides() {
    let two = Two::new();
    let (id, count) = two.counter("plain", COUNTER, |_| {});
    let pid = two.a.pid(&id);
    for (source, agent) in [(&["--plaintext"][..], &[][..]), (&[], &["--plaintext"])] {
        let agent = two.agent(&two.b, "plain", &two.keyed(agent));
        let err = failed(&migrate(&two.a, &id, &agent.addr, &two.keyed(source), &[]));
        assert!(err.contains("--plaintext"), "{err}");
        assert!(!err.contains("freeze"), "refused after the freeze: {err}");
        assert_eq!(two.a.pid(&id), pid);
        assert_counts_on(&two.a, &id, &count);
        assert!(leftovers(&two.b, &agent, &id, &two.cgroup("plain")).is_empty());
    }
    let plain = two.keyed(&["--plaintext"]);
    let agent = two.agent(&two.b, "plain", &plain);
    let out = migrate(&two.a, &id, &agent.addr, &plain, &["--mode", "precopy"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("channel: PLAINTEXT"), "{said}");
    let moved = two
        .b
        .path()
        .join("incoming")
        .join(&id)
        .join("bundle/rootfs/out/count");
    assert_continuous(&wait_numbers(&moved, numbers(&count).len() + 5));
    two.b.remove(&id);
}
