//! A dockerd of a test's own, with Ferry plugged in as a runtime
//! (`--add-runtime ferry=<ferry_bin()>`): Debian's dockerd 20.10 with its own
//! data-root, exec-root, socket and pidfile, never `--iptables`, running in a
//! network namespace of its own or in a host of [`crate::Hosts`], with or
//! without the default bridge; the busybox image imported from a tarball (no
//! registry). Dropping it leaves nothing: its containers are removed,
//! dockerd is stopped (SIGTERM, then waited for), its mounts are undone and
//! the namespace it made is deleted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{busybox_bundle, ferry_bin, ip, mount_leftovers, require_root, run_ferry, Hosts};

pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const DOCKER: &str = "/usr/bin/docker";
/// The image [`Dockerd::import_busybox`] makes by default.
pub const BUSYBOX_IMAGE: &str = "busybox:ferry";
/// The counter as docker runs it: 0, 1, 2... one a line on stdout (so in
/// `docker logs`), every 0.1 s.
pub const COUNTER_LOOP: &str = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done";

/// How to start a [`Dockerd`].
#[derive(Clone, Debug, Default)]
pub struct DockerdConfig {
    /// An existing network namespace (a name under /run/netns) to run in;
    /// `None`: one of its own, made here and deleted on drop.
    pub netns: Option<String>,
    /// The default bridge (docker0); without it, `--bridge=none`.
    pub bridge: bool,
    pub experimental: bool,
    /// Import the busybox image as [`BUSYBOX_IMAGE`] once it is up.
    pub busybox: bool,
}

pub struct Dockerd {
    dir: tempfile::TempDir,
    netns: String,
    own_netns: bool,
    args: Vec<String>,
    child: Option<Child>,
}

impl Dockerd {
    /// A dockerd in a namespace of its own (named after `tag` and this
    /// process), no bridge, the busybox image imported.
    pub fn start(tag: &str, experimental: bool) -> Dockerd {
        Dockerd::with(
            tag,
            DockerdConfig {
                netns: None,
                bridge: false,
                experimental,
                busybox: true,
            },
        )
    }

    /// A dockerd in host `h` ("a", "b") of `hosts`, without any image yet.
    pub fn in_host(hosts: &Hosts, h: &str, bridge: bool) -> Dockerd {
        Dockerd::with(
            h,
            DockerdConfig {
                netns: Some(hosts.netns(h)),
                bridge,
                experimental: false,
                busybox: false,
            },
        )
    }

    pub fn with(tag: &str, cfg: DockerdConfig) -> Dockerd {
        require_root();
        assert!(
            Path::new(DOCKERD).exists(),
            "{DOCKERD} is missing: apt-get install docker.io (hack/setup does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("ferry-dockerd-")
            .tempdir()
            .unwrap();
        let (netns, own_netns) = match cfg.netns {
            Some(ns) => {
                assert!(
                    Path::new("/run/netns").join(&ns).exists(),
                    "network namespace {ns} does not exist"
                );
                (ns, false)
            }
            None => {
                let ns = format!("fd{}{tag}", std::process::id() % 100000);
                ip(&["netns", "add", &ns]);
                ip(&["-n", &ns, "link", "set", "lo", "up"]);
                (ns, true)
            }
        };
        let p = dir.path();
        let mut args: Vec<String> = vec![
            "--data-root".into(),
            p.join("data").display().to_string(),
            "--exec-root".into(),
            p.join("exec").display().to_string(),
            "-H".into(),
            format!("unix://{}", p.join("docker.sock").display()),
            "--pidfile".into(),
            p.join("docker.pid").display().to_string(),
            "--add-runtime".into(),
            format!("ferry={}", ferry_bin().display()),
            "--iptables=false".into(),
        ];
        if !cfg.bridge {
            args.push("--bridge=none".into());
        }
        if cfg.experimental {
            args.push("--experimental".into());
        }
        let mut d = Dockerd {
            dir,
            netns,
            own_netns,
            args,
            child: None,
        };
        d.start_again();
        if cfg.busybox {
            d.import_busybox(BUSYBOX_IMAGE);
        }
        d
    }

    /// Starts dockerd (again, after [`Dockerd::stop`]: same data) and waits
    /// until it answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "dockerd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("dockerd.log"))
            .unwrap();
        // nsenter, not `ip netns exec`: the latter remounts /sys and hides
        // the cgroup hierarchies from dockerd.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(DOCKERD)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd under nsenter");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.docker(&["info"]).status.success() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("dockerd exited ({st}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops dockerd (SIGTERM; it stops its containers and its containerd)
    /// and waits for it to exit.
    pub fn stop(&mut self) {
        // nsenter execs dockerd (no --fork for a network namespace), so the
        // child is dockerd itself.
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The network namespace it runs in (a name under /run/netns).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn sock(&self) -> PathBuf {
        self.path().join("docker.sock")
    }

    /// `unix:///…/docker.sock`, for `-H` and `--docker-host`.
    pub fn host_arg(&self) -> String {
        format!("unix://{}", self.sock().display())
    }

    /// Where dockerd 20.10 keeps the runtime's state (its `--root`).
    pub fn runtime_root(&self) -> PathBuf {
        self.path().join("exec/runtime-runc/moby")
    }

    /// What dockerd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("dockerd.log")).unwrap_or_default()
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        run_ferry(
            Command::new(DOCKER)
                .arg("-H")
                .arg(self.host_arg())
                .args(args),
        )
    }

    /// `docker ARGS`, asserting success; returns stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} on {}: {}",
            self.netns,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker ARGS`, asserting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "docker {args:?} on {} succeeded but should have failed: {}",
            self.netns,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `ferry ARGS` inside this dockerd's network namespace (nsenter);
    /// stdout and stderr are pipes.
    pub fn ferry(&self, args: &[&str]) -> Output {
        run_ferry(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.netns))
                .arg(ferry_bin())
                .args(args),
        )
    }

    /// Imports Debian's busybox-static rootfs (hack/mkbundle-busybox) as
    /// image `tag`: no registry here. The tarball is the same bytes every
    /// time (names sorted, times and owners fixed), so that two dockerds
    /// importing it hold the same layer, as two hosts that pulled one image.
    pub fn import_busybox(&self, tag: &str) {
        let scratch = self
            .path()
            .join(format!("image-{}", tag.replace([':', '/'], "-")));
        let rootfs = busybox_bundle(&scratch, &["sh"]).join("rootfs");
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args([
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-c",
                ".",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let st = Command::new(DOCKER)
            .arg("-H")
            .arg(self.host_arg())
            .args(["import", "-", tag])
            .stdin(tar.stdout.take().unwrap())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(
            tar.wait().unwrap().success(),
            "tar of the busybox rootfs failed"
        );
        assert!(st.success(), "docker import of {tag} failed");
        let _ = std::fs::remove_dir_all(&scratch);
    }

    /// `docker run -d --name NAME --runtime ferry OPTS… busybox:ferry CMD…`;
    /// returns the container's id.
    pub fn run_ferry_container(&self, name: &str, opts: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name, "--runtime", "ferry"];
        args.extend_from_slice(opts);
        args.push(BUSYBOX_IMAGE);
        args.extend_from_slice(cmd);
        self.ok(&args)
    }

    /// The counter ([`COUNTER_LOOP`]) as container `name`, run by ferry
    /// under docker's default seccomp profile; returns its id.
    pub fn run_counter(&self, name: &str) -> String {
        self.run_ferry_container(name, &[], &["sh", "-c", COUNTER_LOOP])
    }

    /// The numbers in `docker logs` of `id` (a name or an id).
    pub fn log_numbers(&self, id: &str) -> Vec<u64> {
        let out = self.docker(&["logs", id]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Waits (30 s at most) until `docker logs` of `id` has `n` numbers.
    pub fn wait_logs(&self, id: &str, n: usize) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.log_numbers(id);
            if v.len() >= n {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "docker logs {id} on {} stuck at {} numbers: {:?}",
                self.netns,
                v.len(),
                v
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `docker inspect -f '{{.State.Status}}'`: running, exited, created…
    pub fn state(&self, id: &str) -> String {
        self.ok(&["inspect", "-f", "{{.State.Status}}", id])
    }

    /// The full id of container `name_or_id`.
    pub fn id(&self, name_or_id: &str) -> String {
        self.ok(&["inspect", "-f", "{{.Id}}", name_or_id])
    }

    /// `docker ps -a`: (full id, name, state) of every container.
    pub fn all(&self) -> Vec<(String, String, String)> {
        self.ok(&[
            "ps",
            "-a",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Names}} {{.State}}",
        ])
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.into(), f.next()?.into(), f.next()?.into()))
        })
        .collect()
    }

    /// Names of the running containers (`docker ps`).
    pub fn running_names(&self) -> Vec<String> {
        self.ok(&["ps", "--format", "{{.Names}}"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Entries of the runtime root (dockerd's ferry state).
    pub fn runtime_state(&self) -> Vec<String> {
        std::fs::read_dir(self.runtime_root())
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.docker(&["version"]).status.success() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).lines() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        self.stop();
        // What dockerd started and left (containerd, shims: their command
        // lines name this dockerd's exec-root), by pid.
        let me = self.path().to_string_lossy().into_owned();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&me) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        // dockerd leaves its exec-root mounts (netns, shm) on a hard stop;
        // overlays of the data-root too.
        let mounts = mount_leftovers(&me);
        for m in mounts.iter().rev() {
            if let Some(p) = m.split(' ').nth(4) {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if self.own_netns {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns])
                .status();
        }
    }
}
