//! Soak: a counter container moves 50 times back and forth between two
//! `ferry serve` agents of this machine (each with its own
//! `--cgroup-parent`), pre-copy and post-copy in turn. Every move must
//! succeed and the count go on without a gap; afterwards the machine must
//! be as it was (mounts, cgroup directories, iptables rules, network
//! namespaces) and each agent must hold the descriptors and threads it held
//! after its warm-up, its memory not growing with the moves.
//!
//! The machine is compared whole: nothing else may run meanwhile (cargo
//! runs test binaries one after another, and this binary has this one
//! test). Run it with `--nocapture` to see each move's downtime.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_tests::*;

/// Moves measured after the warm-up.
const MOVES: usize = 50;

/// How much an agent's resident memory may grow over the [`MOVES`] moves
/// (it idles at about 16 MiB). A leak of 400 KiB a move crosses it: less
/// than what one move of this container goes through (its images are a few
/// hundred KiB, its 2 MiB rootfs streams through 64 KiB buffers). What may
/// grow without a leak is glibc's malloc arenas: each connection runs on a
/// thread of its own, whose arena (at most 8 per core) keeps the memory it
/// freed for the next thread, a few MiB in all.
const RSS_GROWTH_BOUND_KIB: u64 = 20 << 10;

#[test]
fn fifty_moves_back_and_forth_leave_the_machine_as_it_was() {
    require_root();
    let before = Machine::settled();
    let tag = std::process::id();
    let tmp = tempfile::Builder::new()
        .prefix("ferry-soak-")
        .tempdir()
        .unwrap();
    let key = keygen(&tmp.path().join("key"));
    let parents = [
        format!("/ferry-soak-a-{tag}"),
        format!("/ferry-soak-b-{tag}"),
    ];
    {
        let hosts = [Root::new(), Root::new()];
        let agents = [
            Serve::start(&hosts[0], &key, &parents[0]),
            Serve::start(&hosts[1], &key, &parents[1]),
        ];
        let soak = Soak {
            hosts: &hosts,
            agents: &agents,
            parents: &parents,
            key: &key,
            id: format!("soak-{tag}"),
        };
        let bundle = busybox_bundle(tmp.path(), COUNTER);
        hosts[0].ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &soak.id]);
        let mut count = bundle.join("rootfs/out/count");
        wait_numbers(&count, 3);

        // Warm-up: each agent receives one pre-copy and one post-copy move
        // before its descriptors and memory are taken (first uses set up
        // what stays: allocator arenas, lazily opened files).
        let mut at = 0;
        for (n, mode) in ["precopy", "postcopy", "postcopy", "precopy"]
            .into_iter()
            .enumerate()
        {
            let m = soak.hop(at, mode, &count);
            println!("warm-up {}: {}", n + 1, m.line());
            (at, count) = (m.to, m.count);
        }
        let warm = agents.each_ref().map(|a| Usage::idle(a.child.id()));
        for (h, u) in ["A", "B"].iter().zip(&warm) {
            println!("agent {h} after the warm-up: {}", u.summary());
            for (n, t) in &u.fds {
                println!("  fd {n} -> {t}");
            }
        }

        // Every round trip is one pre-copy and one post-copy move, the
        // pre-copy one way, then the other: each agent receives both.
        let mut moves = Vec::new();
        for i in 0..MOVES {
            let round = i / 2;
            let precopy = (at == 0) == (round % 2 == 0);
            let mode = if precopy { "precopy" } else { "postcopy" };
            let m = soak.hop(at, mode, &count);
            println!("move {:2}: {}", i + 1, m.line());
            (at, count) = (m.to, m.count.clone());
            moves.push(m);
        }
        summarise(&moves);

        // The whole count, from the first number the container wrote on A.
        let n = numbers(&count).len();
        assert_consecutive(&wait_numbers(&count, n + 3));

        // The agents hold what they held after the warm-up.
        for (h, (agent, warm)) in ["A", "B"].iter().zip(agents.iter().zip(&warm)) {
            let pid = agent.child.id();
            assert_eq!(children(pid), Vec::<u32>::new(), "agent {h} keeps children");
            let now = Usage::back_to(pid, warm);
            println!("agent {h} after {MOVES} moves: {}", now.summary());
            assert!(
                now.same_handles(warm),
                "agent {h} holds other descriptors or threads than after its warm-up:\n{}",
                now.diff(warm)
            );
            assert!(
                now.rss_kib < warm.rss_kib + RSS_GROWTH_BOUND_KIB,
                "agent {h}'s memory grew from {} KiB to {} KiB over {MOVES} moves",
                warm.rss_kib,
                now.rss_kib
            );
        }

        hosts[at].ok(&["delete", "--force", &soak.id]);
        assert_no_criu();
        for p in &parents {
            let left = cgroup_leftovers(p.trim_start_matches('/'));
            assert!(left.is_empty(), "cgroup directories of {p} left: {left:?}");
        }
        // What may stay in a state root is the last copy of the container
        // it received (an agent removes it when the id arrives again or
        // when it starts): no mount, no scratch dir of a move, nothing of
        // the moves before.
        let received = |root: &Root| root.path().join("incoming").join(&soak.id);
        for (h, root) in ["A", "B"].iter().zip(&hosts) {
            let mounts = mount_leftovers(&root.path().to_string_lossy());
            assert!(
                mounts.is_empty(),
                "mounts left in {h}'s state root: {mounts:?}"
            );
            let left: Vec<_> = files_under(root.path())
                .into_iter()
                .filter(|f| !f.starts_with(received(root)))
                .collect();
            assert!(
                left.is_empty(),
                "{h}'s state root keeps files of moves: {left:?}"
            );
        }
        // The agents stop, the roots go.
    }
    let after = Machine::settled_as(&before);
    let diff = before.diff(&after);
    assert!(
        diff.is_empty(),
        "the machine changed over {MOVES} moves:\n{diff}"
    );
}

/// The two hosts (state roots), their agents and cgroup parents, the key
/// and the container's id.
struct Soak<'a> {
    hosts: &'a [Root; 2],
    agents: &'a [Serve; 2],
    parents: &'a [String; 2],
    key: &'a Path,
    id: String,
}

/// One move, as `ferry migrate --json` reported it.
struct Move {
    from: usize,
    to: usize,
    mode: String,
    downtime_ms: f64,
    total_ms: f64,
    /// Dump, transfer and restore, as the report splits the downtime.
    phases_ms: [f64; 3],
    /// Where the container's count file is now.
    count: PathBuf,
}

impl Move {
    fn line(&self) -> String {
        let name = |h: usize| ["A", "B"][h];
        let [dump, transfer, restore] = self.phases_ms;
        format!(
            "{} -> {} {:8}: downtime {:6.1} ms (dump {dump:.0}, transfer {transfer:.0}, \
             restore {restore:.0}), total {:6.1} ms",
            name(self.from),
            name(self.to),
            self.mode,
            self.downtime_ms,
            self.total_ms
        )
    }
}

impl Soak<'_> {
    /// Moves the container from host `from` to the other one in `mode`; it
    /// must succeed, run there in `PARENT/ID` in every hierarchy, and
    /// count on from where it was (`count`: its count file on `from`).
    fn hop(&self, from: usize, mode: &str, count: &Path) -> Move {
        let to = 1 - from;
        let (src, dst) = (&self.hosts[from], &self.hosts[to]);
        let before = numbers(count).len();
        let out = src.ferry(&[
            "migrate",
            &self.id,
            "--to",
            &self.agents[to].addr,
            "--key-file",
            self.key.to_str().unwrap(),
            "--mode",
            mode,
            "--json",
        ]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "a {mode} move failed: {said}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON report ({e}): {said}"));
        assert_eq!(report["mode"], mode, "{report}");
        assert!(src.ids().is_empty(), "the source kept the container");
        assert_eq!(dst.status(&self.id), "running");

        let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", dst.pid(&self.id)))
            .expect("the moved container's /proc/PID/cgroup");
        let want = format!("{}/{}", self.parents[to], self.id);
        for line in cgroups.lines() {
            let path = line.splitn(3, ':').nth(2).unwrap_or_default();
            assert_eq!(
                path, want,
                "the container is not in its agent's parent plus its name: {line}"
            );
        }

        let moved = moved_rootfs(dst, &self.id).join("out/count");
        assert_consecutive(&wait_numbers(&moved, before + 2));
        Move {
            from,
            to,
            mode: mode.to_string(),
            downtime_ms: report["downtime_ms"].as_f64().unwrap(),
            total_ms: report["total_ms"].as_f64().unwrap(),
            phases_ms: ["dump_ms", "transfer_ms", "restore_ms"]
                .map(|k| report[k].as_f64().unwrap_or_default()),
            count: moved,
        }
    }
}

/// Each mode's downtime: least, median, most.
fn summarise(moves: &[Move]) {
    for mode in ["precopy", "postcopy"] {
        let mut d: Vec<f64> = moves
            .iter()
            .filter(|m| m.mode == mode)
            .map(|m| m.downtime_ms)
            .collect();
        d.sort_by(f64::total_cmp);
        if let (Some(lo), Some(hi)) = (d.first(), d.last()) {
            println!(
                "{mode}: {} moves, downtime {lo:.1} / {:.1} / {hi:.1} ms (least / median / most)",
                d.len(),
                d[d.len() / 2]
            );
        }
    }
}

/// What an agent holds: its descriptors (number to target, as
/// /proc/PID/fd shows them), its threads and its resident memory.
#[derive(Debug, Clone, PartialEq)]
struct Usage {
    fds: BTreeMap<u32, String>,
    threads: usize,
    rss_kib: u64,
}

impl Usage {
    fn of(pid: u32) -> Usage {
        let mut fds = BTreeMap::new();
        for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap_or_else(|e| panic!("the agent ({pid}) is gone: {e}"))
            .flatten()
        {
            if let (Ok(n), Ok(t)) = (
                e.file_name().to_string_lossy().parse(),
                std::fs::read_link(e.path()),
            ) {
                fds.insert(n, t.to_string_lossy().into_owned());
            }
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        Usage {
            fds,
            threads: field("Threads:") as usize,
            rss_kib: field("VmRSS:"),
        }
    }

    /// Once the agent is idle: the same descriptors and threads for half a
    /// second (a connection's thread ends a little after the move).
    fn idle(pid: u32) -> Usage {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = Usage::of(pid);
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = Usage::of(pid);
            if !now.same_handles(&last) {
                since = Instant::now();
            } else if since.elapsed() >= Duration::from_millis(500) {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "agent {pid} never settled:\n{}",
                now.diff(&last)
            );
            last = now;
        }
    }

    /// Waits (10 s at most) for the agent to hold what it held in `then`;
    /// returns what it holds.
    fn back_to(pid: u32, then: &Usage) -> Usage {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = Usage::of(pid);
            if now.same_handles(then) || Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn same_handles(&self, other: &Usage) -> bool {
        self.fds == other.fds && self.threads == other.threads
    }

    fn summary(&self) -> String {
        format!(
            "{} descriptors, {} threads, {} KiB resident",
            self.fds.len(),
            self.threads,
            self.rss_kib
        )
    }

    /// What `self` holds that `then` did not, and the reverse.
    fn diff(&self, then: &Usage) -> String {
        let mut out = format!("threads: {} then, {} now\n", then.threads, self.threads);
        for (n, t) in &self.fds {
            if then.fds.get(n) != Some(t) {
                out += &format!("+ fd {n} -> {t}\n");
            }
        }
        for (n, t) in &then.fds {
            if self.fds.get(n) != Some(t) {
                out += &format!("- fd {n} -> {t}\n");
            }
        }
        out
    }
}

/// Every file (not directory) under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                _ => out.push(e.path()),
            }
        }
    }
    out
}

/// The machine's state that a move could leave changed, each kind as a
/// set of lines.
#[derive(Debug, Clone, PartialEq)]
struct Machine(BTreeMap<String, BTreeSet<String>>);

impl Machine {
    fn take() -> Machine {
        let mut kinds = BTreeMap::new();
        kinds.insert(
            "mounts (/proc/self/mountinfo)".to_string(),
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect(),
        );
        kinds.insert(
            "cgroup directories (/sys/fs/cgroup)".to_string(),
            cgroup_dirs(),
        );
        // The legacy and nf_tables variants each see their own rules;
        // `iptables-save` is whichever the alternatives system picked.
        for tool in [
            "iptables-save",
            "ip6tables-save",
            "iptables-legacy-save",
            "ip6tables-legacy-save",
            "iptables-nft-save",
            "ip6tables-nft-save",
        ] {
            if let Some(rules) = rules(tool) {
                kinds.insert(tool.to_string(), rules);
            }
        }
        assert!(
            kinds.contains_key("iptables-save") && kinds.contains_key("ip6tables-save"),
            "iptables-save and ip6tables-save are missing (hack/setup installs iptables)"
        );
        let list = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip (iproute2) is missing");
        assert!(list.status.success(), "ip netns list failed");
        kinds.insert(
            "ip netns list".to_string(),
            String::from_utf8_lossy(&list.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
        );
        kinds.insert(
            "/run/netns".to_string(),
            std::fs::read_dir("/run/netns")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
        );
        Machine(kinds)
    }

    /// The machine once it stopped changing (what an earlier test binary
    /// left may still be going away): the same twice in a row, a second
    /// apart, within 10 s.
    fn settled() -> Machine {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = Machine::take();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = Machine::take();
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// The machine once it is as `then` (a restored task's leftovers take
    /// a moment to go), or as it is after 10 s.
    fn settled_as(then: &Machine) -> Machine {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = Machine::take();
            if now == *then || Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Lines added (+) and gone (-), per kind.
    fn diff(&self, after: &Machine) -> String {
        let empty = BTreeSet::new();
        let mut out = String::new();
        let kinds: BTreeSet<&String> = self.0.keys().chain(after.0.keys()).collect();
        for k in kinds {
            let (b, a) = (
                self.0.get(k).unwrap_or(&empty),
                after.0.get(k).unwrap_or(&empty),
            );
            if a == b {
                continue;
            }
            out += &format!("{k}:\n");
            for l in a.difference(b) {
                out += &format!("  + {l}\n");
            }
            for l in b.difference(a) {
                out += &format!("  - {l}\n");
            }
        }
        out
    }
}

/// Every cgroup directory of every hierarchy under /sys/fs/cgroup, as
/// `HIERARCHY/PATH` (links such as cpu,cpuacct -> cpu not followed).
fn cgroup_dirs() -> BTreeSet<String> {
    let base = Path::new("/sys/fs/cgroup");
    let mut out = BTreeSet::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let p = e.path();
                out.insert(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
                stack.push(p);
            }
        }
    }
    out
}

/// What `tool` (an iptables-save) prints, without its comments (they
/// carry the time) and with the chains' packet and byte counters blanked;
/// `None` when the tool is not installed.
fn rules(tool: &str) -> Option<BTreeSet<String>> {
    let out = Command::new(tool).output().ok()?;
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
                (true, Some(i)) => format!("{} [counters]", &l[..i]),
                _ => l.to_string(),
            })
            .collect(),
    )
}
