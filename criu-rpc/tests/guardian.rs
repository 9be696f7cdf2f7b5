//! The post-copy guardian (`criu_rpc::lazy::Guardian`), against real
//! processes, real cgroups and the real CRIU (run as root).
//!
//! The agent whose death the guardian must survive is a real process: this
//! test binary re-executes itself as `guardian agent ...` and plays the
//! destination agent of a post-copy move there (guardian, lazy-pages
//! daemon, CRIU restore), so that a test can SIGKILL it while pages are
//! still missing. The workload is a python process that fills 48 MiB with
//! random bytes and appends `i crc` lines, the crc of the whole buffer each
//! time: a copy running on zero pages writes a wrong crc.
//!
//! `harness = false`: main() decides whether this process is the test
//! runner or the agent.

mod common;
use common::Unshare;

use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criu_rpc::lazy::{guardian::GUARDIAN_NAME, Guardian, LazyPages};
use criu_rpc::{
    CgroupMode, Criu, DumpOptions, HandlerError, ImageDirs, LogLevel, Notify, PageServerAddr,
    RestoreOptions,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Set in the agent's environment.
const AGENT: &str = "FERRY_GUARD_TEST_AGENT";

fn main() {
    if std::env::var_os(AGENT).is_some() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        std::process::exit(agent(&args));
    }
    run_tests();
}

// ------------------------------------------------------------ the agent

/// A page source that trickles: at most 16 KiB a read, 2 ms apart (about
/// 8 MiB/s), so that a post-copy of 48 MiB takes seconds.
struct Slow<S> {
    inner: S,
    slow: bool,
}

impl<S: Read> Read for Slow<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.slow {
            return self.inner.read(buf);
        }
        std::thread::sleep(Duration::from_millis(2));
        let n = buf.len().min(16 << 10);
        self.inner.read(&mut buf[..n])
    }
}

impl<S: Write> Write for Slow<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `IMAGES WORK PROCS GUARD SLOW`, with fd 3 the connection to the
/// lazy dump's page server: what `ferry serve` does on a post-copy move.
/// criu (and so the restored tree) goes into the cgroup of `PROCS`; with
/// GUARD=1 a guardian watches it. Prints `guardian PID`, `restored PID`,
/// `served ok|err ...`, `guardian-gone BOOL`, then waits for stdin's end.
fn agent(args: &[String]) -> i32 {
    let [images, work, procs, guard, slow] = args else {
        say(&format!("agent: bad arguments {args:?}"));
        return 2;
    };
    let (images, work, procs) = (Path::new(images), Path::new(work), PathBuf::from(procs));
    // SAFETY: the test passes the connection as fd 3 and nothing else owns it.
    let source = unsafe { TcpStream::from_raw_fd(3) };
    let guardian = (guard == "1").then(|| Guardian::spawn(std::slice::from_ref(&procs)).unwrap());
    let gpid = guardian.as_ref().map(|g| g.pid().as_raw()).unwrap_or(0);
    say(&format!("guardian {gpid}"));
    let mut daemon = LazyPages::bind(images, work).unwrap();
    if let Some(g) = guardian {
        daemon = daemon.with_guardian(g);
    }
    let slow = slow == "1";
    let kill_procs = procs.clone();
    let cancel = std::sync::Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let served = std::thread::spawn(move || {
        daemon.serve(
            Slow {
                inner: source,
                slow,
            },
            &c,
            || {
                for p in cgroup_pids(kill_procs.parent().unwrap()) {
                    let _ = kill(p, Signal::SIGKILL);
                }
            },
        )
    });
    let dirs = ImageDirs::open(images)
        .unwrap()
        .log_file("restore.log")
        .log_level(LogLevel::Debug)
        .work_dir(work)
        .unwrap();
    let mut ropts = RestoreOptions::new(dirs);
    ropts.lazy_pages = true;
    // The restored tree stays in criu's cgroup: the test's.
    ropts.tree.manage_cgroups = Some(CgroupMode::Ignore);
    let swrk = Criu::new().spawn_for(&ropts).unwrap();
    fs::write(&procs, swrk.pid().to_string()).unwrap();
    match swrk.restore(&ropts, &mut criu_rpc::IgnoreNotify) {
        Ok(r) => say(&format!("restored {}", r.pid)),
        Err(e) => {
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            say(&format!("restore-failed {e}"));
        }
    }
    match served.join().unwrap() {
        Ok(stats) => say(&format!(
            "served ok {} bytes, {} processes",
            stats.received_bytes, stats.processes
        )),
        Err(e) => say(&format!("served err {e}")),
    }
    if gpid != 0 {
        // Released and reaped by serve: no process, not even a zombie.
        say(&format!(
            "guardian-gone {}",
            !Path::new(&format!("/proc/{gpid}")).exists()
        ));
    }
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    0
}

// ------------------------------------------------------------ helpers

/// A cgroup of its own in one hierarchy, emptied (SIGKILL) and removed on
/// drop.
struct TestCgroup {
    dir: PathBuf,
}

/// Where `hierarchy` ("pids" for that v1 controller, "" for cgroup2) is
/// mounted.
fn cgroup_mount(hierarchy: &str) -> PathBuf {
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mi.lines() {
        let Some((pre, post)) = l.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        let hit = match hierarchy {
            "" => post[0] == "cgroup2",
            c => post[0] == "cgroup" && post.get(2).is_some_and(|o| o.split(',').any(|x| x == c)),
        };
        if hit && pre[3] == "/" {
            return PathBuf::from(pre[4]);
        }
    }
    panic!(
        "no {} hierarchy mounted: these tests need the project's hybrid cgroup hosts (NOTES.md)",
        if hierarchy.is_empty() {
            "cgroup2"
        } else {
            hierarchy
        }
    );
}

impl TestCgroup {
    fn new(hierarchy: &str, name: &str) -> TestCgroup {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests use real cgroups and CRIU and need root"
        );
        let dir =
            cgroup_mount(hierarchy).join(format!("ferry-guard-test-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        TestCgroup { dir }
    }

    fn sub(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The pids in the cgroup and its sub-cgroups.
    fn pids(&self) -> Vec<Pid> {
        cgroup_pids(&self.dir)
    }

    fn wait_empty(&self, within: Duration) -> Result<Duration, Vec<Pid>> {
        let t0 = Instant::now();
        loop {
            let left = self.pids();
            if left.is_empty() {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > within {
                return Err(left);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn cgroup_pids(dir: &Path) -> Vec<Pid> {
    let mut out: Vec<Pid> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(Pid::from_raw)
        .collect();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(cgroup_pids(&e.path()));
        }
    }
    out
}

fn remove_cgroup(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&e.path());
        }
    }
    for _ in 0..200 {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => return,
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = kill(p, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        remove_cgroup(&self.dir);
    }
}

/// Starts `sh -c script` already inside `procs`'s cgroup (it moves itself
/// in before exec, so that nothing it forks starts outside).
fn start_in(procs: &Path, script: &str) -> Child {
    let procs = CString::new(procs.as_os_str().as_encoded_bytes()).unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: Pid) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Waits until `pid` no longer runs; how long it took, or `None` past
/// `within`.
fn wait_dead(pid: Pid, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while alive(pid) {
        if t0.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Some(t0.elapsed())
}

/// Waits until no process `pid` exists at all (not even a zombie).
fn wait_gone(pid: Pid, within: Duration) -> bool {
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        if t0.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Every process named like the guardian.
fn guardians() -> Vec<Pid> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == GUARDIAN_NAME)
        })
        .map(Pid::from_raw)
        .collect()
}

// ------------------------------------------------------------ guardian alone

/// What a guardian looks like: its name, a session of its own, nothing of
/// this process's fds but its socket (0-2 on /dev/null), deaf to the
/// signals of a terminal and of a polite stop.
fn guardian_is_detached_and_holds_only_its_socket() {
    let cg = TestCgroup::new("pids", "detached");
    let mut sleeper = start_in(&cg.procs(), "exec sleep 1000");
    // A listening socket of "the agent": the guardian must not keep it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let g = Guardian::spawn(&[cg.procs()]).unwrap();
    let gpid = g.pid();
    let deadline = Instant::now() + Duration::from_secs(5);
    let fds = loop {
        let fds: Vec<(String, String)> = fs::read_dir(format!("/proc/{gpid}/fd"))
            .unwrap()
            .flatten()
            .map(|e| {
                let target = fs::read_link(e.path()).unwrap_or_default();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    target.to_string_lossy().into_owned(),
                )
            })
            .collect();
        let comm = fs::read_to_string(format!("/proc/{gpid}/comm")).unwrap();
        if comm.trim() == GUARDIAN_NAME && fds.len() == 4 {
            break fds;
        }
        assert!(
            Instant::now() < deadline,
            "guardian {gpid} not set up: comm {comm:?}, fds {fds:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut fds = fds;
    fds.sort();
    assert_eq!(
        fds.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["0", "1", "2", "3"],
        "{fds:?}"
    );
    for (n, target) in &fds[..3] {
        assert_eq!(target, "/dev/null", "fd {n}");
    }
    assert!(fds[3].1.starts_with("socket:"), "{fds:?}");
    let stat = fs::read_to_string(format!("/proc/{gpid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // state ppid pgrp session
    assert_eq!(f[3], gpid.to_string(), "its own session: {stat}");
    assert_eq!(
        f[1],
        std::process::id().to_string(),
        "forked from this process"
    );
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
        Signal::SIGQUIT,
    ] {
        kill(gpid, sig).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        alive(gpid),
        "a signal other than SIGKILL ended the guardian"
    );
    drop(listener);
    g.release().unwrap();
    assert!(!Path::new(&format!("/proc/{gpid}")).exists());
    assert!(alive(Pid::from_raw(sleeper.id() as i32)));
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

/// Released, it kills nothing, leaves no process (reaped) and no fd here.
fn released_guardian_kills_nothing_and_leaves_nothing() {
    let cg = TestCgroup::new("pids", "released");
    let mut sleeper = start_in(&cg.procs(), "exec sleep 1000");
    let fds = open_fds();
    let g = Guardian::spawn(&[cg.procs()]).unwrap();
    let gpid = g.pid();
    g.release().unwrap();
    assert!(
        !Path::new(&format!("/proc/{gpid}")).exists(),
        "the released guardian stays (a zombie?)"
    );
    assert_eq!(open_fds(), fds, "an fd leaked");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        sleeper.try_wait().unwrap(),
        None,
        "a released guardian killed"
    );
    assert_eq!(cg.pids(), [Pid::from_raw(sleeper.id() as i32)]);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

/// Its daemon's end hangs up without a release (here: the handle dropped):
/// every process of the v1 cgroup and of its sub-cgroups dies, the forks
/// of a fork loop included, then the guardian exits (reaped by the drop).
fn hang_up_kills_a_v1_cgroup_its_sub_cgroups_and_its_forks() {
    let cg = TestCgroup::new("pids", "v1");
    let sub = cg.sub("inner");
    let mut forker = start_in(&cg.procs(), "while :; do sleep 1000 & sleep 0.01; done");
    let mut inner = start_in(&sub.join("cgroup.procs"), "exec sleep 1000");
    while cg.pids().len() < 10 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let fds = open_fds();
    let g = Guardian::spawn(&[cg.procs()]).unwrap();
    let gpid = g.pid();
    let t0 = Instant::now();
    drop(g);
    println!("  guardian killed and exited in {:?}", t0.elapsed());
    assert!(!Path::new(&format!("/proc/{gpid}")).exists());
    assert_eq!(open_fds(), fds, "an fd leaked");
    for c in [&mut forker, &mut inner] {
        assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
    let left = cg.wait_empty(Duration::from_secs(2));
    assert!(left.is_ok(), "left in the cgroup: {left:?}");
}

/// cgroup2: the same through cgroup.kill, which the kernel applies to the
/// whole subtree and to forks racing with it.
fn hang_up_kills_a_cgroup2_subtree() {
    let cg = TestCgroup::new("", "v2");
    let sub = cg.sub("inner");
    let mut forker = start_in(&cg.procs(), "while :; do sleep 1000 & sleep 0.01; done");
    let mut inner = start_in(&sub.join("cgroup.procs"), "exec sleep 1000");
    while cg.pids().len() < 10 {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(Guardian::spawn(&[cg.procs()]).unwrap());
    for c in [&mut forker, &mut inner] {
        assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
    let left = cg.wait_empty(Duration::from_secs(2));
    assert!(left.is_ok(), "left in the cgroup: {left:?}");
}

/// A kill list that is a plain file of pids (not a cgroup), and one whose
/// cgroup does not exist (yet): the pids listed die, the missing one is
/// skipped.
fn hang_up_kills_the_pids_of_a_plain_file_and_skips_missing_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("pids");
    let mut a = Command::new("sleep").arg("1000").spawn().unwrap();
    let mut b = Command::new("sleep").arg("1000").spawn().unwrap();
    fs::write(&list, format!("{}\n{}", a.id(), b.id())).unwrap();
    let missing = PathBuf::from("/sys/fs/cgroup/pids/ferry-guard-test-no-such/cgroup.procs");
    drop(Guardian::spawn(&[missing, list]).unwrap());
    for c in [&mut a, &mut b] {
        assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
}

fn an_empty_kill_list_is_refused() {
    let e = Guardian::spawn(&[]).unwrap_err();
    assert!(e.to_string().contains("protects nothing"), "{e}");
}

// ------------------------------------------------------------ post-copy

/// The python workload in a PID namespace of its own (its restore, in a
/// new one, does not clash with the lazily dumped original, which stays
/// until its last page is sent). It fills 48 MiB with random bytes and
/// writes `pass chunk crc` lines, the crc of each MiB in turn: a line per
/// MiB keeps its own code and data warm (a page of the interpreter that
/// never arrived would crash it rather than show), and a MiB that never
/// arrived shows as a wrong crc. Before each line it forks a child that
/// exits at once: during a post-copy every fork is a userfaultfd FORK
/// event, whose new userfaultfd the guardian holds until the child is
/// gone.
fn start_memory_counter(dir: &Path) -> (Unshare, Pid, PathBuf) {
    let file = dir.join("count");
    let script = format!(
        "import os, time, zlib\n\
         os.setsid()\n\
         buf = bytearray(os.urandom({CHUNKS} << 20))\n\
         view = memoryview(buf)\n\
         out = open('{}', 'a', buffering=1)\n\
         i = 0\n\
         while True:\n\
         \x20   for k in range({CHUNKS}):\n\
         \x20       pid = os.fork()\n\
         \x20       if pid == 0:\n\
         \x20           os._exit(0)\n\
         \x20       os.waitpid(pid, 0)\n\
         \x20       out.write('%d %d %d\\n' % (i, k, zlib.crc32(view[k << 20:(k + 1) << 20])))\n\
         \x20   i += 1\n\
         \x20   time.sleep(0.05)\n",
        file.display()
    );
    let mut child = Unshare::python("/usr/bin/python3", &script, dir, "zlib.crc32(view");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let kids = fs::read_to_string(format!(
            "/proc/{}/task/{}/children",
            child.child.id(),
            child.child.id()
        ))
        .unwrap_or_default();
        let pid = kids.split_whitespace().next().and_then(|p| p.parse().ok());
        // A whole first pass: every MiB's crc.
        let passes = crc_lines(&file).iter().any(|l| l.pass >= 1);
        if let Some(pid) = pid {
            child.init = Some(Pid::from_raw(pid));
        }
        if let (Some(pid), true) = (child.init, passes) {
            return (child, pid, file);
        }
        assert!(Instant::now() < deadline, "python workload did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// MiB of the workload.
const CHUNKS: usize = 48;

#[derive(Debug, Clone, Copy)]
struct CrcLine {
    pass: u64,
    chunk: usize,
    crc: u64,
}

/// The complete lines of `file` (one being written may show half).
fn crc_lines(file: &Path) -> Vec<CrcLine> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some(CrcLine {
                pass: w.next()?.parse().ok()?,
                chunk: w.next()?.parse().ok()?,
                crc: w.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// A post-copy move on this host: the workload dumped lazily (in a thread
/// here, as the source agent does), restored by an agent process.
/// Fields drop in order: the processes before their directory.
struct Move {
    cg: TestCgroup,
    _workload: Unshare,
    file: PathBuf,
    /// Each MiB's crc, from the workload's first pass.
    crcs: Vec<u64>,
    /// Lines written before the dump froze the workload.
    before: usize,
    dump: Option<JoinHandle<criu_rpc::Result<()>>>,
    agent: Child,
    lines: Receiver<String>,
    _tmp: tempfile::TempDir,
}

impl Move {
    fn start(name: &str, guard: bool, slow: bool) -> Move {
        let cg = TestCgroup::new("pids", name);
        let tmp = tempfile::tempdir().unwrap();
        let (images, work) = (tmp.path().join("images"), tmp.path().join("work"));
        fs::create_dir(&images).unwrap();
        fs::create_dir(&work).unwrap();
        let (workload, pid, file) = start_memory_counter(tmp.path());

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let source_end = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (dest_end, _) = listener.accept().unwrap();
        let (ready_tx, ready_rx) = channel();
        let img = images.clone();
        let dump = std::thread::spawn(move || {
            let dirs = ImageDirs::open(&img)
                .unwrap()
                .log_file("dump.log")
                .log_level(LogLevel::Debug);
            let mut opts = DumpOptions::new(dirs, pid);
            opts.tree.notify_scripts = true;
            opts.lazy_pages = true;
            opts.page_server = Some(PageServerAddr::Socket(source_end.into()));
            let mut handler = move |n: Notify| -> Result<(), HandlerError> {
                if let Notify::StatusReady = n {
                    let _ = ready_tx.send(());
                }
                Ok(())
            };
            Criu::new().dump(&opts, &mut handler)
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the lazy dump never said status-ready");
        let lines = crc_lines(&file);
        let crcs: Vec<u64> = lines
            .iter()
            .filter(|l| l.pass == 0)
            .map(|l| l.crc)
            .collect();
        assert_eq!(crcs.len(), CHUNKS, "{lines:?}");
        let before = lines.len();

        let fd = dest_end.as_raw_fd();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(AGENT, "1")
            .arg(&images)
            .arg(&work)
            .arg(cg.procs())
            .arg(if guard { "1" } else { "0" })
            .arg(if slow { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // SAFETY: dup2 is async-signal-safe; it clears CLOEXEC on fd 3.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) != 3 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut agent = cmd.spawn().unwrap();
        // The agent's copy is the only one: its death hangs the source up.
        drop(dest_end);
        let (tx, lines) = channel();
        let out = agent.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                println!("  agent: {l}");
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Move {
            _tmp: tmp,
            cg,
            _workload: workload,
            file,
            crcs,
            before,
            dump: Some(dump),
            agent,
            lines,
        }
    }

    /// The agent's next line, which must start with `word`; the rest.
    fn expect(&self, word: &str) -> String {
        let l = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the agent never said {word:?}"));
        match l.strip_prefix(word) {
            Some(rest) => rest.trim().to_string(),
            None => panic!("expected {word:?} from the agent, got {l:?}"),
        }
    }

    fn pid_line(&self, word: &str) -> Pid {
        Pid::from_raw(self.expect(word).parse().unwrap())
    }

    fn dump_finished(&self) -> bool {
        self.dump.as_ref().is_none_or(|d| d.is_finished())
    }

    /// The source's dump's outcome (it ends when the last page left, or
    /// when the page connection broke).
    fn join_dump(&mut self) -> criu_rpc::Result<()> {
        self.dump
            .take()
            .expect("joined once")
            .join()
            .expect("the dump thread panicked")
    }

    /// The lines whose crc is not the workload's.
    fn wrong_lines(&self) -> Vec<CrcLine> {
        crc_lines(&self.file)
            .into_iter()
            .filter(|l| self.crcs.get(l.chunk) != Some(&l.crc))
            .collect()
    }

    /// Lines written since the dump (by the restored copy, or by the
    /// source after a failed dump resumed it).
    fn new_lines(&self) -> usize {
        crc_lines(&self.file).len() - self.before
    }
}

impl Drop for Move {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        // The page connection is closed with the agent: the dump ends.
        if let Some(d) = self.dump.take() {
            let _ = d.join();
        }
        // The workload goes with `self.workload`.
    }
}

impl Move {
    /// Waits until the restored copy has written `n` lines (each one a MiB
    /// that arrived), while pages are still missing.
    fn wait_running_mid_postcopy(&self, restored: Pid, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.new_lines() < n {
            assert!(alive(restored), "the restored copy died by itself");
            assert!(
                Instant::now() < deadline,
                "the restored copy writes nothing"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !self.dump_finished(),
            "every page arrived already: the trickle is too fast for this test"
        );
        assert!(self.wrong_lines().is_empty(), "{:?}", self.wrong_lines());
    }
}

/// SIGKILL of the agent in the middle of a post-copy: the restored copy,
/// blocked on a page that has not arrived, is killed by the guardian
/// within a moment and never writes a wrong checksum; the guardian is gone
/// afterwards.
fn sigkill_of_the_agent_mid_postcopy_kills_the_restored_copy() {
    let mut m = Move::start("killed", true, true);
    let gpid = m.pid_line("guardian");
    assert!(alive(gpid));
    let restored = m.pid_line("restored");
    m.wait_running_mid_postcopy(restored, 2);
    assert!(m.cg.pids().contains(&restored));
    // Killed while it waits for a page that has not arrived (rather than
    // for the daemon to read a fork event, the other wait it knows).
    let deadline = Instant::now() + Duration::from_secs(10);
    let wchan = |p: Pid| fs::read_to_string(format!("/proc/{p}/wchan")).unwrap_or_default();
    while wchan(restored) != "handle_userfault" {
        assert!(
            Instant::now() < deadline && !m.dump_finished(),
            "the restored copy never waited for a page (last in {:?})",
            wchan(restored)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "  restored copy {restored} wrote {} lines, waits for a page",
        m.new_lines()
    );

    m.agent.kill().unwrap();
    m.agent.wait().unwrap();
    let t = wait_dead(restored, Duration::from_secs(5));
    println!("  restored copy dead {t:?} after the agent's SIGKILL");
    assert!(t.is_some(), "the restored copy outlived its agent by 5 s");
    let left = m.cg.wait_empty(Duration::from_secs(5));
    assert!(left.is_ok(), "left in the cgroup: {left:?}");
    assert!(
        wait_gone(gpid, Duration::from_secs(10)),
        "the guardian {gpid} stays"
    );
    // The source's page server saw the hang-up (the guardian keeps no
    // connection of the agent's).
    let dump = m.join_dump();
    assert!(
        dump.is_err(),
        "the source's dump succeeded without a reader"
    );
    println!("  the source's dump failed: {}", dump.unwrap_err());
    std::thread::sleep(Duration::from_millis(300));
    let wrong = m.wrong_lines();
    assert!(wrong.is_empty(), "a copy reported wrong memory: {wrong:?}");
    assert!(guardians().iter().all(|p| *p != gpid));
}

/// The control: the same SIGKILL without a guardian lets the kernel
/// release the userfaultfds, and the restored copy runs on with zero pages
/// where its memory had not arrived (what the test above would see).
fn without_a_guardian_the_restored_copy_runs_on_zero_pages() {
    let mut m = Move::start("unguarded", false, true);
    assert_eq!(m.expect("guardian"), "0");
    let restored = m.pid_line("restored");
    m.wait_running_mid_postcopy(restored, 2);
    m.agent.kill().unwrap();
    m.agent.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let wrong = loop {
        let w = m.wrong_lines();
        if !w.is_empty() {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "no wrong checksum 10 s after the agent died (restored copy alive: {})",
            alive(restored)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "  unguarded copy {restored} reported {} wrong MiB, first {:?}",
        wrong.len(),
        wrong[0]
    );
}

/// The guardian dies (SIGKILL) in the middle of a post-copy: the daemon
/// sees it hang up and fails the post-copy while it still holds the
/// userfaultfds, killing the copy (its `on_failure`) rather than going on
/// unprotected; the agent reaps the dead guardian.
fn losing_the_guardian_fails_the_postcopy_and_kills_the_copy() {
    let mut m = Move::start("guardian-lost", true, true);
    let gpid = m.pid_line("guardian");
    let restored = m.pid_line("restored");
    m.wait_running_mid_postcopy(restored, 2);
    kill(gpid, Signal::SIGKILL).unwrap();
    let served = m.expect("served");
    assert!(
        served.starts_with("err") && served.contains("guardian"),
        "{served}"
    );
    assert_eq!(m.expect("guardian-gone"), "true");
    assert!(
        wait_dead(restored, Duration::from_secs(5)).is_some(),
        "the unguarded copy runs on"
    );
    let left = m.cg.wait_empty(Duration::from_secs(5));
    assert!(left.is_ok(), "left in the cgroup: {left:?}");
    println!(
        "  the source's dump: {:?}",
        m.join_dump().map_err(|e| e.to_string())
    );
    let wrong = m.wrong_lines();
    assert!(wrong.is_empty(), "a copy reported wrong memory: {wrong:?}");
    drop(m.agent.stdin.take());
    assert!(m.agent.wait().unwrap().success());
}

/// A complete guarded post-copy: every page arrives, the guardian is
/// released and reaped (no process left), and the copy runs on with its
/// memory intact.
fn a_complete_guarded_postcopy_leaves_no_guardian_and_the_copy_runs_on() {
    let mut m = Move::start("complete", true, false);
    let gpid = m.pid_line("guardian");
    let restored = m.pid_line("restored");
    let served = m.expect("served");
    assert!(served.starts_with("ok"), "{served}");
    assert_eq!(m.expect("guardian-gone"), "true");
    assert!(!Path::new(&format!("/proc/{gpid}")).exists());
    m.join_dump().unwrap();
    let n = m.new_lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.new_lines() < n + 2 * CHUNKS {
        assert!(Instant::now() < deadline, "the restored copy is stuck");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(alive(restored));
    // With at most its fork of the moment.
    let pids = m.cg.pids();
    assert!(pids.contains(&restored) && pids.len() <= 2, "{pids:?}");
    assert!(m.wrong_lines().is_empty(), "{:?}", m.wrong_lines());
    // The agent exits cleanly; the copy runs on.
    drop(m.agent.stdin.take());
    assert!(m.agent.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(restored));
    assert!(guardians().iter().all(|p| *p != gpid));
}

fn run_tests() {
    let tests: &[(&str, fn())] = &[
        (
            "an_empty_kill_list_is_refused",
            an_empty_kill_list_is_refused,
        ),
        (
            "guardian_is_detached_and_holds_only_its_socket",
            guardian_is_detached_and_holds_only_its_socket,
        ),
        (
            "released_guardian_kills_nothing_and_leaves_nothing",
            released_guardian_kills_nothing_and_leaves_nothing,
        ),
        (
            "hang_up_kills_a_v1_cgroup_its_sub_cgroups_and_its_forks",
            hang_up_kills_a_v1_cgroup_its_sub_cgroups_and_its_forks,
        ),
        (
            "hang_up_kills_a_cgroup2_subtree",
            hang_up_kills_a_cgroup2_subtree,
        ),
        (
            "hang_up_kills_the_pids_of_a_plain_file_and_skips_missing_ones",
            hang_up_kills_the_pids_of_a_plain_file_and_skips_missing_ones,
        ),
        (
            "sigkill_of_the_agent_mid_postcopy_kills_the_restored_copy",
            sigkill_of_the_agent_mid_postcopy_kills_the_restored_copy,
        ),
        (
            "without_a_guardian_the_restored_copy_runs_on_zero_pages",
            without_a_guardian_the_restored_copy_runs_on_zero_pages,
        ),
        (
            "losing_the_guardian_fails_the_postcopy_and_kills_the_copy",
            losing_the_guardian_fails_the_postcopy_and_kills_the_copy,
        ),
        (
            "a_complete_guarded_postcopy_leaves_no_guardian_and_the_copy_runs_on",
            a_complete_guarded_postcopy_leaves_no_guardian_and_the_copy_runs_on,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut ran, mut failed) = (0, 0);
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        ran += 1;
        println!("test {name} ...");
        match std::panic::catch_unwind(f) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("\nguardian: {} passed; {failed} failed", ran - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
