//! Helpers shared by Ferry's end-to-end tests: where the built binary is,
//! test bundles made by hack/ scripts, and guards that clean up what a test
//! created (containers, state roots) even when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod agents;
pub mod cri;
pub mod docker;
pub use agents::*;
pub use docker::*;
pub mod relay;
pub use relay::{Relay, Tamper};

/// The binary under test: $FERRY_BIN (hack/test sets it), else the debug
/// build, which `cargo test --workspace` builds.
pub fn ferry_bin() -> PathBuf {
    let p = std::env::var_os("FERRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/debug/ferry"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` (hack/test does)",
        p.display()
    );
    p
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "end-to-end tests run containers and CRIU: run them as root (hack/test)"
    );
}

/// A state root of the test's own; every container left in it is
/// force-deleted on drop.
pub struct Root {
    pub dir: tempfile::TempDir,
}

impl Root {
    pub fn new() -> Root {
        require_root();
        Root {
            dir: tempfile::Builder::new()
                .prefix("ferry-root-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `ferry --root ROOT args...`. Its stdout and stderr are pipes, as
    /// dockerd's are (CRIU cannot dump a container whose stdio is a host
    /// file); a container created here inherits them, so ferry's own output
    /// is read once ferry exits rather than at EOF.
    pub fn ferry(&self, args: &[&str]) -> Output {
        run_ferry(
            Command::new(ferry_bin())
                .arg("--root")
                .arg(self.path())
                .args(args),
        )
    }

    /// Like [`Root::ferry`], asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ferry(args);
        assert!(
            out.status.success(),
            "ferry {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`Root::ferry`], asserting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.ferry(args);
        assert!(
            !out.status.success(),
            "ferry {args:?} succeeded but should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `ferry delete --force ID`, and no cgroup of it is left.
    pub fn remove(&self, id: &str) {
        self.ok(&["delete", "--force", id]);
        let left = cgroup_leftovers(id);
        assert!(left.is_empty(), "cgroups of {id} left: {left:?}");
    }

    /// The pid of container `id`'s init, from `ferry state`.
    pub fn pid(&self, id: &str) -> u32 {
        let state: serde_json::Value = serde_json::from_str(&self.ok(&["state", id])).unwrap();
        state["pid"].as_u64().unwrap() as u32
    }

    pub fn status(&self, id: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["state", id])).unwrap();
        v["status"].as_str().unwrap().to_string()
    }

    /// Whether container `id` exists and runs, read once: unlike
    /// `ids().contains(id) && status(id) == "running"`, a container removed
    /// between the two reads (an agent killing an uncommitted copy) is an
    /// answer, not a failed `ferry state`.
    pub fn runs(&self, id: &str) -> bool {
        let out = self.ferry(&["state", id]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("does not exist"), "ferry state {id}: {err}");
            return false;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["status"] == "running"
    }

    pub fn ids(&self) -> Vec<String> {
        self.ok(&["list", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Root {
    /// `ferry --root ROOT args...` on a root that is not the test's (a
    /// dockerd's), asserting success; returns stdout.
    pub fn ferry_at(root: &Path, args: &[&str]) -> String {
        let out = run_ferry(Command::new(ferry_bin()).arg("--root").arg(root).args(args));
        assert!(
            out.status.success(),
            "ferry --root {} {args:?}: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Default for Root {
    fn default() -> Self {
        Root::new()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for id in self.ids_quiet() {
            let _ = Command::new(ferry_bin())
                .arg("--root")
                .arg(self.path())
                .args(["delete", "--force", &id])
                .output();
        }
    }
}

impl Root {
    fn ids_quiet(&self) -> Vec<String> {
        let o = self.ferry(&["list", "-q"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Runs `cmd` with piped stdout/stderr; returns when it exits, with what
/// it wrote, even if a child it left behind keeps the pipes open.
pub fn run_ferry(cmd: &mut Command) -> Output {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ferry");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    // Drain while it runs (a full pipe would block it), without waiting
    // for EOF.
    for fd in [out.as_raw_fd(), err.as_raw_fd()] {
        // SAFETY: flags of fds we own.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) };
    }
    let drain = |r: &mut dyn Read, buf: &mut Vec<u8>| {
        let mut chunk = [0u8; 65536];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let (mut ob, mut eb) = (Vec::new(), Vec::new());
    let status = loop {
        drain(&mut out, &mut ob);
        drain(&mut err, &mut eb);
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    drain(&mut out, &mut ob);
    drain(&mut err, &mut eb);
    Output {
        status,
        stdout: ob,
        stderr: eb,
    }
}

/// A busybox bundle made by hack/mkbundle-busybox running `cmd`.
pub fn busybox_bundle(dir: &Path, cmd: &[&str]) -> PathBuf {
    let b = dir.join("bundle");
    let out = Command::new("bash")
        .arg(repo().join("hack/mkbundle-busybox"))
        .arg(&b)
        .arg("--")
        .args(cmd)
        .env("FERRY_BIN", ferry_bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hack/mkbundle-busybox failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    b
}

/// Builds tests/fixtures/`name`.c into a static program at `out` (gcc, as
/// hack/setup installs it for CRIU's build); fails loudly without gcc.
pub fn static_program(name: &str, out: &Path) {
    let src = repo().join("tests/fixtures").join(format!("{name}.c"));
    let r = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("gcc (for {}): {e}; hack/setup installs it", src.display()));
    assert!(
        r.status.success(),
        "gcc {}: {}",
        src.display(),
        String::from_utf8_lossy(&r.stderr)
    );
}

/// The busybox counter: one number per line in /out/count, every 50 ms.
pub const COUNTER: &[&str] = &[
    "sh",
    "-c",
    "i=0; while :; do echo $i >> /out/count; i=$((i+1)); sleep 0.05; done",
];

pub fn numbers(file: &Path) -> Vec<u64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Waits until `file` exists (a container wrote it), 10 s at the most.
pub fn wait_file(file: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `file` has at least `n` numbers.
pub fn wait_numbers(file: &Path, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = numbers(file);
        if v.len() >= n {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{} stuck at {} numbers",
            file.display(),
            v.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Each number one more than the one before (a counter seen from some
/// point on).
pub fn assert_continuous(v: &[u64]) {
    for w in v.windows(2) {
        assert_eq!(w[1], w[0] + 1, "a gap or a repeat in {v:?}");
    }
}

/// 0, 1, 2, ... with no gap and no repeat.
pub fn assert_consecutive(v: &[u64]) {
    for (i, n) in v.iter().enumerate() {
        assert_eq!(*n, i as u64, "number {i} is {n}: a gap or a repeat");
    }
}

/// Cgroup directories named `name` in any hierarchy.
pub fn cgroup_leftovers(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in rd.flatten() {
            let p = h.path().join(name);
            if p.exists() {
                out.push(p);
            }
        }
    }
    let p = Path::new("/sys/fs/cgroup").join(name);
    if p.join("cgroup.procs").exists() {
        out.push(p);
    }
    out
}

/// Mounts whose mountpoint contains `needle`.
pub fn mount_leftovers(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.contains(needle)))
        .map(str::to_string)
        .collect()
}

/// Edits a bundle's config.json.
pub fn edit_config(bundle: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = bundle.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// A busybox bundle that can also run the host's Python: /usr bound
/// read-only (Debian's /lib and /lib64 are links into it).
pub fn python_bundle(dir: &Path, script: &str) -> PathBuf {
    let b = busybox_bundle(dir, &["/usr/bin/python3", "-u", "-c", script]);
    let root = b.join("rootfs");
    for (l, t) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        let _ = std::os::unix::fs::symlink(t, root.join(l));
    }
    std::fs::create_dir_all(root.join("usr")).unwrap();
    edit_config(&b, |c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]
        }));
        c["process"]["env"] =
            serde_json::json!(["PATH=/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8"]);
    });
    b
}

/// `cp -a` of a bundle, for restoring a checkpoint as another container.
pub fn copy_bundle(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// Runs `cmd` (an `ip` command line) and asserts success.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) is missing");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Gives the network namespace of process `pid` an address more than a
/// new namespace holds (127.0.0.2 on `lo`): Ferry then lets CRIU dump
/// and lock it whole instead of making a new one on restore.
pub fn beyond_a_new_netns(pid: u32) {
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ip",
            "addr",
            "add",
            "127.0.0.2/8",
            "dev",
            "lo",
        ])
        .output()
        .expect("nsenter (util-linux) is missing");
    assert!(
        out.status.success(),
        "adding 127.0.0.2 in the netns of {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two network namespaces joined by a veth pair: `NAME-srv` (10.79.x.1)
/// and `NAME-ctr` (10.79.x.2). Removed on drop.
pub struct NetPair {
    pub name: String,
}

impl NetPair {
    pub fn new(name: &str, subnet: &str) -> NetPair {
        let p = NetPair { name: name.into() };
        let (srv, ctr) = (p.srv(), p.ctr());
        ip(&["netns", "add", &srv]);
        ip(&["netns", "add", &ctr]);
        let (a, b) = (format!("{name}s"), format!("{name}c"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", &srv]);
        ip(&["link", "set", &b, "netns", &ctr]);
        ip(&[
            "-n",
            &srv,
            "addr",
            "add",
            &format!("{subnet}.1/24"),
            "dev",
            &a,
        ]);
        ip(&[
            "-n",
            &ctr,
            "addr",
            "add",
            &format!("{subnet}.2/24"),
            "dev",
            &b,
        ]);
        for (ns, dev) in [(&srv, &a), (&ctr, &b)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        p
    }

    pub fn srv(&self) -> String {
        format!("{}-srv", self.name)
    }

    pub fn ctr(&self) -> String {
        format!("{}-ctr", self.name)
    }

    /// Runs `f` on a thread inside the server namespace.
    pub fn in_srv<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.srv());
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [self.srv(), self.ctr()] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// The hosts of hack/hosts (A, B and a client on a bridge), under a name of
/// the test's own; removed on drop.
pub struct Hosts {
    pub name: String,
    /// The first three bytes of the wire's /24, e.g. "10.66.0".
    pub subnet: String,
}

impl Hosts {
    pub fn up(name: &str, subnet: &str) -> Hosts {
        let st = Command::new("bash")
            .arg(repo().join("hack/hosts"))
            .arg("up")
            .env("FERRY_HOSTS", name)
            .env("FERRY_HOSTS_SUBNET", subnet)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        let h = Hosts {
            name: name.into(),
            subnet: subnet.into(),
        };
        assert!(st.success(), "hack/hosts up failed");
        h
    }

    /// The network namespace (its name under /run/netns) of host `h`: "a",
    /// "b", "client" or "wire".
    pub fn netns(&self, h: &str) -> String {
        format!("{}-{h}", self.name)
    }

    /// The address of host `h` ("a", "b", "client") on the wire.
    pub fn addr(&self, h: &str) -> String {
        let last = match h {
            "a" => 1,
            "b" => 2,
            "client" => 100,
            _ => panic!("hack/hosts has no host {h}"),
        };
        format!("{}.{last}", self.subnet)
    }

    /// Runs `f` on a thread inside host `h`'s network namespace.
    pub fn in_host<T: Send + 'static>(
        &self,
        h: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.netns(h));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("hack/hosts"))
            .arg("down")
            .env("FERRY_HOSTS", &self.name)
            .status();
    }
}

/// The receiving end of a `--console-socket`, as a user of runc's
/// recvtty would hold it: it accepts one connection, takes the pty master
/// passed over it, and collects everything read from the master until the
/// last slave closes (EIO).
pub struct Console {
    pub path: PathBuf,
    text: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Console {
    /// Listens on `path` (which must not exist yet).
    pub fn listen(path: &Path) -> Console {
        use std::io::Read;
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
        use std::sync::{Arc, Mutex};
        let listener = std::os::unix::net::UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("binding the console socket {}: {e}", path.display()));
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let mut cmsg = nix::cmsg_space!([RawFd; 1]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = nix::sys::socket::recvmsg::<()>(
                s.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                nix::sys::socket::MsgFlags::empty(),
            )
            .unwrap();
            let fd = msg
                .cmsgs()
                .unwrap()
                .find_map(|c| match c {
                    nix::sys::socket::ControlMessageOwned::ScmRights(f) => f.first().copied(),
                    _ => None,
                })
                .expect("a pty master over the console socket");
            // SAFETY: SCM_RIGHTS just installed this fd; nothing else owns it.
            let mut master = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            let mut chunk = [0u8; 256];
            while let Ok(n) = master.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Console {
            path: path.to_path_buf(),
            text,
            reader: Some(reader),
        }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Everything read from the master so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// The numbers the terminal showed, one per line.
    pub fn numbers(&self) -> Vec<u64> {
        self.text()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Waits until `done` holds of the text read so far (30 s at most).
    pub fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.text();
            if done(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {what}; it showed: {t:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every slave of the pty closed; returns the numbers the
    /// terminal showed.
    pub fn finish(mut self) -> Vec<u64> {
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.numbers()
    }
}

/// A seccomp profile (linux.seccomp) that allows everything but mkdir
/// (EPERM) and chmod to mode 0777 (EACCES: a condition on an argument).
pub fn seccomp_profile() -> serde_json::Value {
    serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 1, "value": 511, "op": "SCMP_CMP_EQ"}]},
            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 2, "value": 511, "op": "SCMP_CMP_EQ"}]}
        ]
    })
}

/// The `Seccomp:` mode of a process (/proc/PID/status): 2 when filtered.
pub fn seccomp_mode(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .unwrap_or("")
        .trim()
        .to_string()
}
