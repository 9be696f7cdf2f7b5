//! containerd-shim-ferry-v2 under containerd, as root: Debian's containerd
//! (1.6) runs with its own root, state, socket and config in a temp dir,
//! with the shim on its PATH, and a busybox image made by
//! hack/mkimage-busybox and imported with `ctr image import` (no registry).
//!
//! - `ctr run --runtime io.containerd.ferry.v2` runs a counter whose output
//!   is seen; exec, pause and resume work; `ctr task kill` then
//!   `ctr task delete` and `ctr container delete` leave no process, cgroup,
//!   mount, shim or Ferry state behind;
//! - `ctr container checkpoint --task` (the shim's Checkpoint, leave
//!   running) then, after the container is gone, `ctr container restore
//!   --live` (Create with a checkpoint, restored at Start): the counter
//!   continues from where it was checkpointed; the same for a task with a
//!   terminal, whose restored output reaches `ctr task attach`;
//! - `ctr run -t` and `ctr task exec -t` (on a pty of script(1)) run on a
//!   terminal whose master the shim received over the console socket;
//! - a task killed for lack of memory gives a `/tasks/oom` event.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_tests::*;

const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const RUNTIME: &str = "io.containerd.ferry.v2";
/// ctr 1.6 sends `ctr task checkpoint`'s --exit, --image-path and
/// --work-path only to a runtime named io.containerd.runc.v1/v2; the test
/// containerd finds the ferry shim under that name first on its PATH, so
/// that these options reach it as they would from any other client.
const RUNC_NAMED: &str = "io.containerd.runc.v2";
const IMAGE: &str = "docker.io/library/ferry-busybox:latest";
/// The counter: numbers on stdout.
const LOOP: &str = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done";

/// The shim under test, next to the ferry binary under test.
fn shim_bin() -> PathBuf {
    let p = ferry_bin().with_file_name("containerd-shim-ferry-v2");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` (hack/test does)",
        p.display()
    );
    p
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Containerd {
    dir: tempfile::TempDir,
    /// A containerd namespace of the test's own (the cgroup parent too).
    ns: String,
    child: Option<std::process::Child>,
}

impl Containerd {
    fn start(tag: &str) -> Containerd {
        Containerd::start_with(tag, &[])
    }

    /// With extra environment for containerd and so its shims.
    fn start_with(tag: &str, env: &[(&str, &str)]) -> Containerd {
        require_root();
        for bin in [CONTAINERD, CTR] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: apt-get install containerd (hack/setup does)"
            );
        }
        let shim_dir = shim_bin().parent().unwrap().to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix("ferry-ctd-")
            .tempdir()
            .unwrap();
        let p = dir.path();
        let config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             # No Kubernetes here: the CRI plugin would want CNI.\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  level = \"debug\"\n",
            root = p.join("root").display(),
            state = p.join("state").display(),
            sock = p.join("containerd.sock").display(),
        );
        std::fs::write(p.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(p.join("containerd.log")).unwrap();
        // The shim also answers to runc's runtime name, in a dir of the
        // test's own ahead of everything (see `RUNC_NAMED`).
        let named = p.join("bin");
        std::fs::create_dir(&named).unwrap();
        std::os::unix::fs::symlink(shim_bin(), named.join("containerd-shim-runc-v2")).unwrap();
        let path = format!(
            "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            named.display(),
            shim_dir.display()
        );
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(p.join("config.toml"))
            // containerd finds containerd-shim-ferry-v2 on its PATH and
            // hands its environment to the shim.
            .env("PATH", path)
            .env("FERRY_SHIM_ROOT", p.join("ferry"))
            // containerd unpacks checkpoints into a temp dir there and
            // never removes it.
            .env("XDG_RUNTIME_DIR", p)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let c = Containerd {
            ns: format!("ferry-e2e-{}-{tag}", std::process::id()),
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let tar = c.path().join("busybox.tar");
        let out = Command::new("bash")
            .arg(repo().join("hack/mkimage-busybox"))
            .arg(&tar)
            .arg(IMAGE)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hack/mkimage-busybox failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.ok(&["image", "import", tar.to_str().unwrap()]);
        c
    }

    /// A container id no other containerd on this host uses (ctr's fifo
    /// dirs under /run/containerd/fifo are shared).
    fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.ns)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` on this containerd and namespace, killed if it hangs (a shim
    /// that never answers must fail the test, not stall it).
    fn ctr_cmd(&self) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["--signal=KILL", "120", CTR])
            .arg("--address")
            .arg(self.path().join("containerd.sock"))
            .arg("--namespace")
            .arg(&self.ns);
        cmd
    }

    /// `ctr` without `timeout`, for a ctr the test kills itself.
    fn ctr_raw(&self) -> Command {
        let mut cmd = Command::new(CTR);
        cmd.arg("--address")
            .arg(self.path().join("containerd.sock"))
            .arg("--namespace")
            .arg(&self.ns);
        cmd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        run_ferry(self.ctr_cmd().args(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}): {}{}\ncontainerd's log ends with:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr run -d` of the counter with the ferry shim; its output goes to
    /// a log file (`--log-uri file://`), which is returned.
    fn run_counter(&self, id: &str) -> PathBuf {
        self.run_counter_as(id, RUNTIME)
    }

    fn run_counter_as(&self, id: &str, runtime: &str) -> PathBuf {
        let log = self.path().join(format!("{id}.log"));
        self.ok(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            "--log-uri",
            &format!("file://{}", log.display()),
            IMAGE,
            id,
            "sh",
            "-c",
            LOOP,
        ]);
        log
    }

    /// The task's pid and status, as `ctr task ls` shows them.
    fn task(&self, id: &str) -> Option<(i32, String)> {
        self.ok(&["task", "ls"]).lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| (f[1].parse().unwrap(), f[2].to_string()))
        })
    }

    fn wait_status(&self, id: &str, status: &str) -> i32 {
        let mut pid = 0;
        wait_until(
            &format!("task {id} to be {status}"),
            Duration::from_secs(20),
            || match self.task(id) {
                Some((p, s)) if s == status => {
                    pid = p;
                    true
                }
                _ => false,
            },
        );
        pid
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.path()
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.ns)
            .join(id)
    }

    fn cgroup(&self, id: &str) -> String {
        format!("{}/{id}", self.ns)
    }

    /// Shim processes of this containerd (serving container `id`).
    fn shims(&self, id: Option<&str>) -> Vec<i32> {
        let sock = self.path().join("containerd.sock");
        let sock = sock.to_string_lossy();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args
                .first()
                .is_some_and(|a| a.ends_with("containerd-shim-ferry-v2"))
                && id.is_none_or(|id| args.windows(2).any(|w| w[0] == "-id" && w[1] == id))
                && args.iter().any(|a| *a == sock)
            {
                out.push(pid);
            }
        }
        out
    }

    /// The container is fully there: its init, its cgroups, its rootfs
    /// mount, its shim and Ferry's state (so that the checks of
    /// [`Containerd::assert_nothing_left`] can fail).
    fn assert_all_there(&self, id: &str, pid: i32) {
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "no init {pid}");
        assert!(
            !cgroup_leftovers(&self.cgroup(id)).is_empty(),
            "no cgroup {} for {id}",
            self.cgroup(id)
        );
        let rootfs = self.bundle(id).join("rootfs");
        assert!(
            !mount_leftovers(rootfs.to_str().unwrap()).is_empty(),
            "the rootfs of {id} is not mounted at {}",
            rootfs.display()
        );
        assert!(!self.shims(Some(id)).is_empty(), "no shim for {id}");
        assert!(
            self.path().join("ferry").join(&self.ns).join(id).exists(),
            "no Ferry state for {id}"
        );
    }

    fn assert_nothing_left(&self, id: &str, pid: i32) {
        wait_until(
            &format!("the shim of {id} to exit"),
            Duration::from_secs(10),
            || self.shims(Some(id)).is_empty(),
        );
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the init {pid} of {id} is still there"
        );
        assert_eq!(
            cgroup_leftovers(&self.cgroup(id)),
            Vec::<PathBuf>::new(),
            "cgroups of {id} left behind"
        );
        assert_eq!(
            mount_leftovers(self.bundle(id).to_str().unwrap()),
            Vec::<String>::new(),
            "mounts of {id} left behind"
        );
        assert!(
            !self.path().join("ferry").join(&self.ns).join(id).exists(),
            "Ferry's state of {id} left behind"
        );
    }

    /// `ctr task kill -s SIGKILL`, then task and container delete.
    fn kill_and_delete(&self, id: &str) {
        self.ok(&["task", "kill", "--signal", "SIGKILL", id]);
        self.wait_status(id, "STOPPED");
        self.ok(&["task", "delete", id]);
        self.ok(&["container", "delete", id]);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let tasks = self.ctr(&["task", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
            std::thread::sleep(Duration::from_millis(300));
            let _ = self.ctr(&["task", "delete", "--force", id]);
        }
        let cs = self.ctr(&["container", "ls", "-q"]);
        for id in String::from_utf8_lossy(&cs.stdout).lines() {
            let _ = self.ctr(&["container", "delete", id]);
        }
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Shims of a failed test outlive containerd: they are ours to stop.
        for pid in self.shims(None) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let mounts = mount_leftovers(self.path().to_str().unwrap());
        for m in mounts.iter().rev() {
            if let Some(p) = m.split(' ').nth(4) {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // `ctr container restore` leaves its fifo dir behind. Its files are
        // named after our ids, NS-NAME: the dash keeps namespace "cr" off
        // the fifos of namespace "crtty", a test that may still run.
        let ours_prefix = format!("{}-", self.ns);
        if let Ok(rd) = std::fs::read_dir("/run/containerd/fifo") {
            for d in rd.flatten() {
                let ours = std::fs::read_dir(d.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|f| f.file_name().to_string_lossy().starts_with(&ours_prefix));
                if ours {
                    let _ = std::fs::remove_dir_all(d.path());
                }
            }
        }
        // The namespace's parent cgroups (containerd's cgroupsPath is
        // /<namespace>/<id>).
        for p in cgroup_leftovers(&self.ns) {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// `ctr events`, collected while the test runs: what the shim published.
struct Events {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Events {
    fn start(c: &Containerd) -> Events {
        let mut child = c
            .ctr_raw()
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        // ctr subscribes once it runs; give it the time to.
        std::thread::sleep(Duration::from_millis(300));
        Events {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// Waits until every topic was seen for container `id`.
    fn assert_seen(&self, id: &str, topics: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.lines.lock().unwrap().clone();
            let missing: Vec<&&str> = topics
                .iter()
                .filter(|t| {
                    !lines
                        .iter()
                        .any(|l| l.contains(&format!(" {t} ")) && l.contains(id))
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {missing:?} event for {id} among:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn containerd_runs_execs_pauses_kills_and_deletes_with_ferry() {
    let c = Containerd::start("run");
    let events = Events::start(&c);
    let id = &c.id("counter");
    let log = c.run_counter(id);
    let v = wait_numbers(&log, 5);
    assert_consecutive(&v);
    let pid = c.wait_status(id, "RUNNING");
    c.assert_all_there(id, pid);

    // The init runs in the container's own pid namespace.
    let ps = c.ok(&["task", "ps", id]);
    assert!(ps.contains(&pid.to_string()), "ctr task ps: {ps}");

    // exec: output back through the shim's pipes, exit status returned.
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        id,
        "sh",
        "-c",
        "echo in-ferry; exit 7",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "in-ferry");

    // A detached exec shows in ps with its exec id (ProcessDetails); it
    // dies with the container's pid namespace.
    let sleeper = &c.id("sleeper");
    c.ok(&[
        "task",
        "exec",
        "--detach",
        "--exec-id",
        sleeper,
        id,
        "sleep",
        "300",
    ]);
    wait_until(
        "the exec id in ctr task ps",
        Duration::from_secs(10),
        || c.ok(&["task", "ps", id]).contains(sleeper.as_str()),
    );

    // pause stops the counter, resume lets it go on.
    c.ok(&["task", "pause", id]);
    c.wait_status(id, "PAUSED");
    let frozen = numbers(&log).len();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(numbers(&log).len(), frozen, "the counter ran while paused");
    c.ok(&["task", "resume", id]);
    c.wait_status(id, "RUNNING");
    let v = wait_numbers(&log, frozen + 3);
    assert_consecutive(&v);

    let metrics = c.ok(&["task", "metrics", id]);
    assert!(metrics.contains(id), "ctr task metrics: {metrics}");

    c.kill_and_delete(id);
    c.assert_nothing_left(id, pid);
    events.assert_seen(
        id,
        &[
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete",
        ],
    );
}

#[test]
fn containerd_checkpoint_then_restore_continues_the_counter() {
    let c = Containerd::start("cr");
    let events = Events::start(&c);
    let id = &c.id("counter");
    let log = c.run_counter(id);
    wait_numbers(&log, 5);
    let pid = c.wait_status(id, "RUNNING");
    let reference = format!("ferry-e2e/{id}:checkpoint");

    // The shim's Checkpoint with containerd's options (leave running,
    // file locks); ctr pauses the task around it and resumes it after.
    c.ok(&["container", "checkpoint", "--task", id, &reference]);
    let at_checkpoint = numbers(&log).len() as u64;
    c.wait_status(id, "RUNNING");
    // It ran on after the checkpoint: far enough that a restore from the
    // checkpoint and a mere continuation cannot be confused.
    let before = wait_numbers(&log, at_checkpoint as usize + 10);
    assert_consecutive(&before);
    let images = c.ok(&["image", "ls", "-q"]);
    assert!(images.contains(&reference), "no checkpoint image: {images}");
    events.assert_seen(id, &["/tasks/checkpointed"]);

    c.kill_and_delete(id);
    c.assert_nothing_left(id, pid);

    // Create with the checkpoint, restored at Start; detached (no tty), so
    // its output is read from its fifo with `ctr task attach`.
    c.ok(&["container", "restore", "--live", id, &reference]);
    let restored = c.wait_status(id, "RUNNING");
    assert_ne!(restored, pid, "the restored init has the old host pid");
    // Not under `timeout`: killing it must close the pipe read here.
    let mut attach = c
        .ctr_raw()
        .args(["task", "attach", id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::<u64>::new()));
    let reader = {
        let seen = seen.clone();
        let out = attach.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(n) = l.trim().parse() {
                    seen.lock().unwrap().push(n);
                }
            }
        })
    };
    let waited = Instant::now();
    while seen.lock().unwrap().len() < 10 && waited.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGKILL: ctr attach forwards the signals it gets to the task.
    let _ = attach.kill();
    let _ = attach.wait();
    let _ = reader.join();
    let after = seen.lock().unwrap().clone();
    assert!(
        after.len() >= 10,
        "the restored counter printed {after:?}; containerd's log ends with:\n{}",
        tail(&c.log(), 30)
    );
    assert_continuous(&after);
    let first = after[0];
    assert!(
        (5..=at_checkpoint + 2).contains(&first),
        "the restored counter starts at {first}: the checkpoint was taken at ~{at_checkpoint}, \
         the killed container had reached {}",
        before.len() - 1
    );
    let restored_pid = c.wait_status(id, "RUNNING");
    c.assert_all_there(id, restored_pid);

    c.kill_and_delete(id);
    c.assert_nothing_left(id, restored_pid);
}

/// `ctr -t` needs a terminal of its own: script(1) runs it on a pty.
fn on_a_pty(c: &Containerd, args: &str) -> Output {
    let out = script_on_a_pty(&format!("{} {args}", timed_ctr(c, 120)));
    assert!(
        out.status.success(),
        "{args} on a pty failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// ctr on this containerd, killed after `secs`.
///
/// `timeout --foreground`: without it, timeout moves itself into a process
/// group of its own, so ctr is in the pty's background group and is stopped
/// by SIGTTOU when it puts the terminal in raw mode (and hangs until the
/// timeout). That only showed where the shell script(1) starts forks before
/// running timeout (dash, with SHELL unset as in CI); bash execs it as the
/// session leader, whose setpgid fails.
fn timed_ctr(c: &Containerd, secs: u32) -> String {
    format!(
        "timeout --foreground --signal=KILL {secs} {CTR} --address {} --namespace {}",
        c.path().join("containerd.sock").display(),
        c.ns
    )
}

/// A shell script run by script(1) on a pty of its own (SHELL is set so
/// that every run uses the same shell).
fn script_on_a_pty(script: &str) -> Output {
    Command::new("script")
        .args(["-q", "-e", "-c", script, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) is missing: apt-get install util-linux (hack/setup does)")
}

#[test]
fn containerd_runs_and_execs_with_a_terminal() {
    let c = Containerd::start("tty");
    // The init on a pty: its master comes to the shim over the console
    // socket, its output back to ctr through the fifo.
    let id = &c.id("tty");
    let out = on_a_pty(
        &c,
        &format!("run -t --rm --runtime {RUNTIME} {IMAGE} {id} sh -c 'tty; echo tty-done'"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/0") && text.contains("tty-done"),
        "ctr run -t printed: {text}"
    );
    c.assert_nothing_left(id, 0);

    // exec -t in a container without one.
    let id = &c.id("counter");
    c.run_counter(id);
    let pid = c.wait_status(id, "RUNNING");
    let out = on_a_pty(
        &c,
        // The short sleep keeps the pty open while script(1) drains it: its
        // last output was once missing here (1 run in ~40, under load) when
        // the process and ctr exited at once.
        &format!("task exec -t --exec-id t1 {id} sh -c 'tty; echo exec-done; sleep 0.2'"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/") && text.contains("exec-done"),
        "ctr task exec -t printed {text:?} (stderr {:?}); containerd's log ends with:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&c.log(), 40)
    );
    c.kill_and_delete(id);
    c.assert_nothing_left(id, pid);
}

/// A task with a terminal: the shim holds the console's master, outside the
/// dumped tree (orphan_pts_master); the restored task gets a new pty whose
/// master comes back to the shim, and its output reaches `ctr task attach`.
#[test]
fn containerd_checkpoints_and_restores_a_task_with_a_terminal() {
    let c = Containerd::start("crtty");
    let id = &c.id("tty");
    on_a_pty(
        &c,
        &format!("run -d -t --runtime {RUNTIME} {IMAGE} {id} sh -c '{LOOP}'"),
    );
    let pid = c.wait_status(id, "RUNNING");
    // At least ten numbers before the checkpoint: a restart from 0 shows.
    std::thread::sleep(Duration::from_millis(1500));
    let reference = format!("ferry-e2e/{id}:checkpoint");
    c.ok(&["container", "checkpoint", "--task", id, &reference]);
    c.wait_status(id, "RUNNING");
    c.kill_and_delete(id);
    c.assert_nothing_left(id, pid);

    // ctr restores a terminal task on its own terminal (the spec says
    // terminal), then attach shows what the restored counter prints.
    let out = script_on_a_pty(&format!(
        "{ctr} container restore --live {id} {reference}; {attach} task attach {id}",
        ctr = timed_ctr(&c, 60),
        attach = timed_ctr(&c, 3),
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    let seen: Vec<u64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(
        seen.len() >= 10,
        "the restored task printed {text:?} ({}); containerd's log ends with:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&c.log(), 30)
    );
    assert_continuous(&seen);
    assert!(
        seen[0] >= 10,
        "the restored counter starts at {}: it began again instead of going on",
        seen[0]
    );
    let restored = c.wait_status(id, "RUNNING");
    c.kill_and_delete(id);
    c.assert_nothing_left(id, restored);
}

/// A task that outgrows its memory limit: the kernel's OOM killer ends
/// the allocation, and the shim publishes `/tasks/oom` for the container
/// (as runc-shim does from the v1 memory cgroup's oom_control).
#[test]
fn containerd_reports_an_oom_kill() {
    let c = Containerd::start("oom");
    let events = Events::start(&c);
    let id = &c.id("hog");
    let log = c.path().join("hog.log");
    // dd's 64 MiB buffer, filled from /dev/zero, in a 16 MiB cgroup.
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        &(16u64 << 20).to_string(),
        "--log-uri",
        &format!("file://{}", log.display()),
        IMAGE,
        id,
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd-exit=$?; sleep 1000",
    ]);
    let pid = c.wait_status(id, "RUNNING");
    events.assert_seen(id, &["/tasks/oom"]);
    wait_until(
        "dd's exit status in the log",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("dd-exit=137")
        },
    );
    c.kill_and_delete(id);
    c.assert_nothing_left(id, pid);
}

#[test]
fn containerd_failed_checkpoint_says_why_and_leaves_the_counter_running() {
    let c = Containerd::start_with("cpfail", &[("FERRY_CRIU", "/nonexistent/criu")]);
    let id = &c.id("counter");
    let log = c.run_counter(id);
    wait_numbers(&log, 5);
    let pid = c.wait_status(id, "RUNNING");
    let out = c.ctr(&["container", "checkpoint", "--task", id, "ferry-e2e/fail:1"]);
    assert!(!out.status.success(), "a checkpoint without criu succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/criu"),
        "the error does not name the criu it could not run: {err}"
    );
    // ctr resumes the task it paused; it runs on, unharmed.
    assert_eq!(c.wait_status(id, "RUNNING"), pid);
    let n = numbers(&log).len();
    let v = wait_numbers(&log, n + 5);
    assert_consecutive(&v);
    c.kill_and_delete(id);
    c.assert_nothing_left(id, pid);
}

#[test]
fn containerd_cleans_up_after_a_killed_shim() {
    let c = Containerd::start("shimkill");
    let id = &c.id("counter");
    let log = c.run_counter(id);
    wait_numbers(&log, 3);
    let pid = c.wait_status(id, "RUNNING");
    c.assert_all_there(id, pid);
    // containerd notices the shim is gone and runs `shim delete` (the
    // shim's cleanup of what it left: the container, its cgroups, the
    // rootfs mount).
    for shim in c.shims(Some(id)) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    wait_until(
        "containerd to drop the task of the killed shim",
        Duration::from_secs(20),
        || c.task(id).is_none(),
    );
    c.ok(&["container", "delete", id]);
    wait_until("the init to be gone", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    c.assert_nothing_left(id, pid);
}

/// The runtime options' `Root` (`ctr run --runc-root`, or `Root` in
/// containerd's runtime options): the task's Ferry state lives there (plus
/// the namespace, as runc-shim's), every request finds it, and the cleanup
/// after a killed shim finds it too.
#[test]
fn containerd_keeps_a_task_under_the_runtime_options_root() {
    let c = Containerd::start("root");
    let id = &c.id("counter");
    let alt = c.path().join("alt-root");
    let log = c.path().join(format!("{id}.log"));
    // ctr 1.6 sends runc options only to a runtime of runc's name.
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNC_NAMED,
        "--runc-root",
        alt.to_str().unwrap(),
        "--log-uri",
        &format!("file://{}", log.display()),
        IMAGE,
        id,
        "sh",
        "-c",
        LOOP,
    ]);
    wait_numbers(&log, 3);
    let pid = c.wait_status(id, "RUNNING");
    let state = alt.join(&c.ns).join(id);
    assert!(
        state.join("state.json").is_file(),
        "no state in {}",
        state.display()
    );
    assert!(
        !c.path().join("ferry").join(&c.ns).join(id).exists(),
        "the state went to the default root too"
    );
    // Requests on the task find it there.
    c.ok(&["task", "pause", id]);
    c.wait_status(id, "PAUSED");
    c.ok(&["task", "resume", id]);
    c.wait_status(id, "RUNNING");
    let n = numbers(&log).len();
    assert_consecutive(&wait_numbers(&log, n + 3));
    // A killed shim's cleanup removes the container from that root.
    for shim in c.shims(Some(id)) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    wait_until(
        "containerd to drop the task of the killed shim",
        Duration::from_secs(20),
        || c.task(id).is_none(),
    );
    c.ok(&["container", "delete", id]);
    wait_until("the init to be gone", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(!state.exists(), "{} left behind", state.display());
    c.assert_nothing_left(id, pid);
}

#[test]
fn containerd_checkpoint_with_exit_writes_where_asked_and_stops_the_task() {
    let c = Containerd::start("exit");
    let id = &c.id("counter");
    let log = c.run_counter_as(id, RUNC_NAMED);
    wait_numbers(&log, 5);
    let pid = c.wait_status(id, "RUNNING");
    c.assert_all_there(id, pid);
    let images = c.path().join("images");
    let work = c.path().join("work");
    c.ok(&[
        "task",
        "checkpoint",
        "--exit",
        "--image-path",
        images.to_str().unwrap(),
        "--work-path",
        work.to_str().unwrap(),
        id,
    ]);
    for f in [
        images.join("inventory.img"),
        images.join("descriptors.json"),
    ] {
        assert!(f.exists(), "{} is missing", f.display());
    }
    assert!(
        work.join("dump.log").exists(),
        "CRIU's log is not in the work path"
    );
    // `exit`: the container is gone once dumped; containerd sees it stop.
    c.wait_status(id, "STOPPED");
    let n = numbers(&log).len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(numbers(&log).len(), n, "the counter runs on after --exit");
    c.ok(&["task", "delete", id]);
    c.ok(&["container", "delete", id]);
    c.assert_nothing_left(id, pid);
}

#[test]
fn containerd_stdin_reaches_the_container_and_close_io_ends_it() {
    let c = Containerd::start("stdin");
    let id = &c.id("cat");
    // ctr run copies its stdin into the stdin fifo and, at its end, sends
    // CloseIO: cat then reads EOF, exits, and its output came back.
    let mut ctr = c
        .ctr_cmd()
        .args(["run", "--rm", "--runtime", RUNTIME, IMAGE, id, "sh", "-c"])
        .arg("cat; echo cat-done")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // ctr arms its CloseIO only once the task exists: an EOF before that
    // is lost (ctr's race, runc's too), so the input waits for the task.
    c.wait_status(id, "RUNNING");
    {
        use std::io::Write;
        let mut stdin = ctr.stdin.take().unwrap();
        stdin.write_all(b"through the pipes\n").unwrap();
    }
    let out = ctr.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ctr run with stdin failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through the pipes\ncat-done\n"
    );
    c.assert_nothing_left(id, 0);
}
