//! Dump and restore a real process tree through the RPC client, against the
//! real CRIU (run as root). The tree is a shell counter that appends one
//! number per line to a file through an fd it keeps open: a restore that
//! resumes from the wrong point shows as a gap or a repeat in the file.

mod common;
use common::Unshare;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criu_rpc::{
    Criu, DumpOptions, Error, HandlerError, ImageDirs, LogLevel, Notify, PageServerAddr,
    PageServerOptions, RestoreOptions,
};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

struct Counter {
    child: Option<Child>,
    pid: Pid,
    file: PathBuf,
}

impl Counter {
    fn start(dir: &Path) -> Counter {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests run real CRIU and need root"
        );
        let file = dir.join("count");
        let script = format!(
            "i=0; exec 3>>{}; while :; do echo $i >&3; i=$((i+1)); sleep 0.05; done",
            file.display()
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // CRIU dumps a tree whose root leads its own session (or needs
        // shell_job); a daemon-like counter is the plain case.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
        }
        let child = cmd.spawn().expect("start counter");
        let pid = Pid::from_raw(child.id() as i32);
        let c = Counter {
            child: Some(child),
            pid,
            file,
        };
        c.wait_for_lines(5);
        c
    }

    fn numbers(&self) -> Vec<u64> {
        numbers(&self.file)
    }

    fn wait_for_lines(&self, n: usize) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.numbers();
            if v.len() >= n {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "counter stuck at {} lines",
                v.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

fn numbers(file: &Path) -> Vec<u64> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Every pid of the tree rooted at `pid`, from /proc's children lists.
fn tree(pid: Pid) -> Vec<Pid> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children = fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse().ok())
                        .map(Pid::from_raw),
                );
            }
        }
        i += 1;
    }
    out
}

/// Whether any process still uses `pid` as its pid, process group or session.
fn pid_in_use(pid: Pid) -> bool {
    let Ok(procs) = fs::read_dir("/proc") else {
        return true;
    };
    procs.flatten().any(|p| {
        let stat = fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid pgrp session ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let id = pid.as_raw().to_string();
        p.file_name().to_str() == Some(id.as_str())
            || f.get(2) == Some(&id.as_str())
            || f.get(3) == Some(&id.as_str())
    })
}

/// A dumped tree's orphans are reaped by init a moment later; CRIU restores
/// the same pids (and the session and group ids) and fails with EEXIST until
/// no zombie holds them (NOTES.md).
fn wait_gone(pids: &[Pid]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|p| pid_in_use(*p)) {
        assert!(
            Instant::now() < deadline,
            "dumped pids {pids:?} still exist"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

type Seen = Arc<Mutex<Vec<String>>>;

fn recorder(seen: &Seen) -> impl FnMut(Notify) -> Result<(), HandlerError> {
    let seen = seen.clone();
    move |n: Notify| {
        seen.lock().unwrap().push(n.script().to_string());
        Ok(())
    }
}

fn dirs(images: &Path, log: &str) -> ImageDirs {
    ImageDirs::open(images)
        .unwrap()
        .log_file(log)
        .log_level(LogLevel::Debug)
}

/// Checks that `v` is 0, 1, 2, ... with no gap and no repeat.
fn assert_consecutive(v: &[u64]) {
    for (i, n) in v.iter().enumerate() {
        assert_eq!(*n, i as u64, "line {i} of the counter is {n}: {v:?}");
    }
}

struct Restored(Pid);
impl Drop for Restored {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGKILL);
        let _ = waitpid(self.0, None);
    }
}

#[test]
fn dump_then_restore_continues_the_counter() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    fs::create_dir(&images).unwrap();
    let mut counter = Counter::start(tmp.path());

    let seen: Seen = Default::default();
    let mut opts = DumpOptions::new(dirs(&images, "dump.log"), counter.pid);
    opts.tree.notify_scripts = true;
    // The tree as dumped (its `sleep` child changes every 50 ms), read while
    // CRIU holds it frozen.
    let frozen: Arc<Mutex<Vec<Pid>>> = Default::default();
    let (root, f) = (counter.pid, frozen.clone());
    let mut record = recorder(&seen);
    let mut handler = move |n: Notify| {
        if let Notify::PostDump = n {
            *f.lock().unwrap() = tree(root);
        }
        record(n)
    };
    Criu::new().dump(&opts, &mut handler).unwrap();
    let pids = frozen.lock().unwrap().clone();
    let dump_notifies = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(dump_notifies, ["pre-dump", "post-dump"]);

    // CRIU killed the tree after dumping it.
    let status = counter.child.take().unwrap().wait().unwrap();
    assert!(
        !status.success(),
        "counter was not killed by the dump: {status}"
    );
    let before = counter.numbers();
    assert_consecutive(&before);
    wait_gone(&pids);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter.numbers(), before, "counter wrote after the dump");

    let mut ropts = RestoreOptions::new(dirs(&images, "restore.log"));
    ropts.tree.notify_scripts = true;
    let restored = Criu::new().restore(&ropts, &mut recorder(&seen)).unwrap();
    let guard = Restored(restored.pid);
    assert_eq!(restored.pid, counter.pid, "CRIU restores the original pid");
    let restore_notifies = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        restore_notifies,
        [
            // No setup-namespaces: this tree has no namespaces of its own.
            "pre-restore",
            "post-restore",
            "pre-resume",
            "post-resume"
        ]
    );

    let after = counter.wait_for_lines(before.len() + 10);
    assert_consecutive(&after);
    drop(guard);
}

#[test]
fn leave_running_dump_restores_a_clone_from_the_dump_point() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    fs::create_dir(&images).unwrap();
    let counter = Counter::start(tmp.path());

    // The last number written while CRIU has the tree frozen: the restored
    // clone must continue right after it.
    let at_dump: Arc<Mutex<Option<u64>>> = Default::default();
    let file = counter.file.clone();
    let at = at_dump.clone();
    let frozen: Arc<Mutex<Vec<Pid>>> = Default::default();
    let (root, f) = (counter.pid, frozen.clone());
    let mut handler = move |n: Notify| -> Result<(), HandlerError> {
        if let Notify::PostDump = n {
            *at.lock().unwrap() = numbers(&file).last().copied();
            *f.lock().unwrap() = tree(root);
        }
        Ok(())
    };
    let mut opts = DumpOptions::new(dirs(&images, "dump.log"), counter.pid);
    opts.leave_running = true;
    opts.tree.notify_scripts = true;
    Criu::new().dump(&opts, &mut handler).unwrap();
    let k = at_dump.lock().unwrap().expect("post-dump notify seen");

    // The original keeps counting.
    let running = counter.wait_for_lines(k as usize + 10);
    assert_consecutive(&running);
    let pids = frozen.lock().unwrap().clone();
    let file = counter.file.clone();
    drop(counter);
    wait_gone(&pids);
    let m = numbers(&file).len();

    let restored = Criu::new()
        .restore(
            &RestoreOptions::new(dirs(&images, "restore.log")),
            &mut criu_rpc::IgnoreNotify,
        )
        .unwrap_or_else(|e| {
            let ps = Command::new("ps").arg("-ef").output().unwrap();
            panic!("{e}\n{pids:?}\n{}", String::from_utf8_lossy(&ps.stdout))
        });
    let _guard = Restored(restored.pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    while numbers(&file).len() < m + 10 {
        assert!(Instant::now() < deadline, "restored clone does not count");
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = numbers(&file);
    assert_consecutive(&all[..m]);
    let clone: Vec<u64> = all[m..].to_vec();
    let expected: Vec<u64> = (k + 1..k + 1 + clone.len() as u64).collect();
    assert_eq!(
        clone, expected,
        "the clone continues from the dump point {k}"
    );
}

/// Dumps `counter` with CRIU's tree frozen-state pids recorded; returns them.
fn dump_recording_tree(counter: &Counter, opts: &DumpOptions) -> Vec<Pid> {
    let frozen: Arc<Mutex<Vec<Pid>>> = Default::default();
    let (root, f) = (counter.pid, frozen.clone());
    let mut handler = move |n: Notify| -> Result<(), HandlerError> {
        if let Notify::PostDump = n {
            *f.lock().unwrap() = tree(root);
        }
        Ok(())
    };
    assert!(
        opts.tree.notify_scripts,
        "the post-dump notify records the tree"
    );
    Criu::new().dump(opts, &mut handler).unwrap();
    let pids = frozen.lock().unwrap().clone();
    assert!(pids.contains(&root));
    pids
}

fn page_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pages-"))
        .collect()
}

/// Memory goes to a page server (as in a pre-copy migration): the dump's
/// own images dir gets no pages, the server's does, and the union restores.
fn dump_through_page_server(daemon: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (images, received) = (tmp.path().join("images"), tmp.path().join("received"));
    fs::create_dir(&images).unwrap();
    fs::create_dir(&received).unwrap();
    let mut counter = Counter::start(tmp.path());

    let ps_opts = PageServerOptions::new(
        dirs(&received, "page-server.log"),
        PageServerAddr::Tcp("127.0.0.1:0".parse().unwrap()),
    );
    let (port, child_server) = if daemon {
        let ps = Criu::new().page_server(&ps_opts).unwrap();
        (ps.port, None)
    } else {
        let ps = Criu::new().page_server_child(&ps_opts).unwrap();
        (ps.port(), Some(ps))
    };
    assert_ne!(port, 0, "CRIU reports the port it bound");

    let mut opts = DumpOptions::new(dirs(&images, "dump.log"), counter.pid);
    opts.tree.notify_scripts = true;
    opts.page_server = Some(PageServerAddr::Tcp(
        format!("127.0.0.1:{port}").parse().unwrap(),
    ));
    let pids = dump_recording_tree(&counter, &opts);
    counter.child.take().unwrap().wait().unwrap();
    // The dump ends with a FLUSH that the page server acknowledges once
    // every page is written, so the daemon's pages are complete here too.
    if let Some(ps) = child_server {
        ps.wait().unwrap();
    }
    assert!(page_files(&images).is_empty(), "pages written locally");
    assert!(!page_files(&received).is_empty(), "no pages received");

    for e in fs::read_dir(&images).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".img") {
            fs::copy(e.path(), received.join(e.file_name())).unwrap();
        }
    }
    let before = counter.numbers();
    wait_gone(&pids);
    let restored = Criu::new()
        .restore(
            &RestoreOptions::new(dirs(&received, "restore.log")),
            &mut criu_rpc::IgnoreNotify,
        )
        .unwrap();
    let _guard = Restored(restored.pid);
    let after = counter.wait_for_lines(before.len() + 10);
    assert_consecutive(&after);
}

#[test]
fn dump_to_a_page_server_child_then_restore() {
    dump_through_page_server(false);
}

#[test]
fn dump_to_a_page_server_daemon_then_restore() {
    dump_through_page_server(true);
}

/// Pre-dump needs soft-dirty tracking. Where the kernel lacks it (this
/// project's VMs), the request is refused with exactly that reason and the
/// tree keeps running; where it has it, the pre-dump works.
#[test]
fn pre_dump_needs_soft_dirty_tracking() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("pre");
    fs::create_dir(&images).unwrap();
    let counter = Counter::start(tmp.path());
    let features = Criu::new().features().unwrap();
    let opts = DumpOptions::new(dirs(&images, "pre-dump.log"), counter.pid);
    let result = Criu::new().pre_dump(&opts, &mut criu_rpc::IgnoreNotify);
    if features.mem_track {
        result.unwrap();
    } else {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::SoftDirtyUnsupported), "{err:?}");
        assert!(err.to_string().contains("soft-dirty"), "{err}");
    }
    let n = counter.numbers().len();
    counter.wait_for_lines(n + 5);
}

/// A handler that fails at post-dump makes CRIU abort: the tree is resumed,
/// not killed (a failed checkpoint loses nothing), and the error names the
/// notify and quotes CRIU's log.
#[test]
fn handler_failure_aborts_the_dump_and_the_tree_keeps_running() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    fs::create_dir(&images).unwrap();
    let mut counter = Counter::start(tmp.path());
    let mut opts = DumpOptions::new(dirs(&images, "dump.log"), counter.pid);
    opts.tree.notify_scripts = true;
    let mut handler = |n: Notify| -> Result<(), HandlerError> {
        match n {
            Notify::PostDump => Err("the destination is gone".into()),
            _ => Ok(()),
        }
    };
    let err = Criu::new().dump(&opts, &mut handler).unwrap_err();
    match &err {
        Error::Notify { script, source, .. } => {
            assert_eq!(*script, "post-dump");
            assert_eq!(source.to_string(), "the destination is gone");
        }
        e => panic!("expected a notify error, got {e:?}"),
    }
    assert!(err.log().is_some(), "CRIU's log is quoted: {err}");
    // Still running, still counting, nothing lost.
    assert!(counter
        .child
        .as_mut()
        .unwrap()
        .try_wait()
        .unwrap()
        .is_none());
    let n = counter.numbers().len();
    assert_consecutive(&counter.wait_for_lines(n + 5));
}

/// CRIU's own failure carries its errno and message and quotes its log.
#[test]
fn criu_failure_quotes_its_log() {
    let tmp = tempfile::tempdir().unwrap();
    // A pid that exists but is not ours to dump sensibly: a kernel thread.
    let opts = DumpOptions::new(dirs(tmp.path(), "dump.log"), Pid::from_raw(2));
    let err = Criu::new()
        .dump(&opts, &mut criu_rpc::IgnoreNotify)
        .unwrap_err();
    let Error::Failed { log, .. } = &err else {
        panic!("expected Failed, got {err:?}");
    };
    let log = log.as_ref().expect("the log is quoted");
    assert!(log.path.ends_with("dump.log"));
    assert!(log.lines.iter().any(|l| l.contains("Error (")), "{log}");
    let text = err.to_string();
    println!("{text}");
    assert!(text.starts_with("criu dump failed: "), "{text}");
    assert!(text.contains("criu log "), "{text}");
}

/// The CPU description a migration's pre-flight compares: dumped here, it
/// checks out here; a corrupt one is refused.
#[test]
fn cpuinfo_dump_and_check() {
    let tmp = tempfile::tempdir().unwrap();
    Criu::new()
        .cpuinfo_dump(&dirs(tmp.path(), "cpuinfo-dump.log"))
        .unwrap();
    let img = tmp.path().join("cpuinfo.img");
    assert!(fs::metadata(&img).unwrap().len() > 0);
    Criu::new()
        .cpuinfo_check(&dirs(tmp.path(), "cpuinfo-check.log"))
        .unwrap();
    fs::write(&img, b"not a cpuinfo image").unwrap();
    let err = Criu::new()
        .cpuinfo_check(&dirs(tmp.path(), "cpuinfo-check2.log"))
        .unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err:?}");
}

/// A python workload in a PID namespace of its own (so that its restore,
/// in a new one, does not clash with the lazily dumped original, which stays
/// until its last page is sent): `procs` processes (the first forks the
/// others), each filling `mib` MiB with a pattern of its own, then writing
/// `i crc` lines to `count-K`, the crc of its whole buffer every time.
fn start_memory_counter(dir: &Path, procs: usize, mib: usize) -> (Unshare, Pid, Vec<PathBuf>) {
    let files: Vec<PathBuf> = (0..procs).map(|k| dir.join(format!("count-{k}"))).collect();
    let script = format!(
        "import os, time, zlib\n\
         os.setsid()\n\
         k = 0\n\
         for n in range(1, {procs}):\n\
         \x20   if os.fork() == 0:\n\
         \x20       k = n\n\
         \x20       break\n\
         buf = bytearray(os.urandom(1 << 20)) * {mib}\n\
         out = open('{}/count-%d' % k, 'a', buffering=1)\n\
         i = 0\n\
         while True:\n\
         \x20   out.write('%d %d\\n' % (i, zlib.crc32(buf)))\n\
         \x20   i += 1\n\
         \x20   time.sleep(0.05)\n",
        dir.display()
    );
    let mut child = Unshare::python("python3", &script, dir, "zlib.crc32(buf)");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let kids = tree(Pid::from_raw(child.child.id() as i32));
        child.init = kids.get(1).copied();
        let counting = files.iter().all(|f| crc_lines(f).len() >= 3);
        if let (Some(pid), true) = (kids.get(1), counting) {
            return (child, *pid, files);
        }
        assert!(Instant::now() < deadline, "python workload did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn crc_lines(file: &Path) -> Vec<(u64, u64)> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

/// Post-copy: the dump keeps the memory back and serves it; the restore
/// registers it with userfaultfd; Ferry's lazy-pages daemon fills it in from
/// the dump's page server, on faults and in the background. The workload
/// goes on with the same 48 MiB (same crc) and no gap in its count.
#[test]
fn lazy_dump_and_restore_through_the_lazy_pages_daemon() {
    lazy_dump_and_restore(1, 48, Window::No);
}

/// The daemon as a pre-copy into the tasks runs it (a window of requests
/// in flight, topped up as answers come), over four processes of 24 MiB
/// each: the window runs from one process's ranges into the next's, every
/// answer lands in the process and at the place it was asked for, and
/// the tasks (running here, not stopped) fault meanwhile, which empties
/// the window before the fault's own request. Each process goes on with
/// its own crc.
#[test]
fn a_window_of_requests_fills_every_process_of_a_tree() {
    lazy_dump_and_restore(4, 24, Window::TasksRunning);
}

/// The same with the tasks restored stopped, as a pre-copy restores them:
/// no fault comes, the window alone brings every page of every process
/// in before they continue.
#[test]
fn a_window_of_requests_fills_a_stopped_tree_alone() {
    lazy_dump_and_restore(4, 24, Window::TasksStopped);
}

#[derive(PartialEq)]
enum Window {
    /// One request at a time (post-copy).
    No,
    TasksRunning,
    TasksStopped,
}

fn lazy_dump_and_restore(procs: usize, mib: usize, window: Window) {
    use criu_rpc::lazy::LazyPages;
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::AtomicBool;

    let tmp = tempfile::tempdir().unwrap();
    let (images, work) = (tmp.path().join("images"), tmp.path().join("work"));
    fs::create_dir(&images).unwrap();
    fs::create_dir(&work).unwrap();
    let (mut unshare, pid, files) = start_memory_counter(tmp.path(), procs, mib);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let source_end = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (dest_end, _) = listener.accept().unwrap();

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let img = images.clone();
    let dump = std::thread::spawn(move || {
        let mut opts = DumpOptions::new(dirs(&img, "dump.log"), pid);
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
    if let Err(e) = ready_rx.recv_timeout(Duration::from_secs(60)) {
        panic!(
            "the lazy dump never said status-ready ({e}): {:?}",
            dump.join()
        );
    }
    let before: Vec<Vec<(u64, u64)>> = files.iter().map(|f| crc_lines(f)).collect();
    let crcs: Vec<u64> = before.iter().map(|b| b[0].1).collect();
    for (b, crc) in before.iter().zip(&crcs) {
        assert!(b.iter().all(|(_, c)| c == crc));
    }
    let mut distinct = crcs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), procs, "each process has memory of its own");
    // Only the non-lazy pages (vdso and the like) were written here.
    let written: u64 = fs::read_dir(&images)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        written < 8 << 20,
        "{written} bytes of pages written locally"
    );

    let daemon = LazyPages::bind(&images, &work).unwrap();
    let daemon = match window {
        Window::No => daemon,
        _ => daemon.tasks_stopped(),
    };
    let (served_tx, served) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = served_tx.send(daemon.serve(dest_end, &AtomicBool::new(false), || {}));
    });
    let mut ropts = RestoreOptions::new(dirs(&images, "restore.log").work_dir(&work).unwrap());
    ropts.lazy_pages = true;
    ropts.leave_stopped = window == Window::TasksStopped;
    let restored = Criu::new()
        .restore(&ropts, &mut criu_rpc::IgnoreNotify)
        .unwrap();
    let _guard = Restored(restored.pid);
    let stats = served
        .recv_timeout(Duration::from_secs(60))
        .expect("the daemon did not bring every page in within a minute")
        .unwrap();
    eprintln!("{stats:?}");
    dump.join().unwrap().unwrap();
    let total = (procs * mib) as u64;
    if window == Window::TasksStopped {
        // Only CRIU's restorer faulted, on its own stacks, before it
        // stopped them.
        assert!(stats.fault_bytes < (total << 20) / 8, "{stats:?}");
        for pid in tree(restored.pid) {
            kill(pid, Signal::SIGCONT).unwrap();
        }
    }
    assert!(
        stats.received_bytes >= total << 20,
        "only {} bytes came lazily: {stats:?}",
        stats.received_bytes
    );
    assert!(stats.processes >= procs as u64, "{stats:?}");
    // Each page was asked for once: the buffers and each interpreter's
    // few MiB of its own, not a range again while its answer was on the
    // way (the source answers every request, the copy of a page already
    // in is skipped, so only this count shows it).
    assert!(
        stats.received_bytes <= (total + 16 * procs as u64) << 20,
        "pages came more than once: {stats:?}"
    );
    // The original was killed once its last page left.
    unshare.child.wait().unwrap();

    for ((file, before), crc) in files.iter().zip(&before).zip(&crcs) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let after = loop {
            let v = crc_lines(file);
            if v.len() >= before.len() + 10 {
                break v;
            }
            assert!(Instant::now() < deadline, "the restored workload is stuck");
            std::thread::sleep(Duration::from_millis(50));
        };
        for (i, (n, c)) in after.iter().enumerate() {
            assert_eq!(*n, i as u64, "{}, line {i}: {after:?}", file.display());
            assert_eq!(
                c,
                crc,
                "{}, line {i}: memory changed across the move",
                file.display()
            );
        }
    }
}
