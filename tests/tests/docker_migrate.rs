//! Issue 13: live migration of Docker containers, dockerd to dockerd, as
//! root, against the real binaries. Each test brings up two hosts of
//! hack/hosts (a wire subnet of its own, so tests run side by side), a
//! dockerd 20.10 in each (no `--experimental`, ferry as a runtime, the
//! default bridge), the busybox image, one key and a `ferry serve --docker`
//! agent in each host listening on the host's address; `ferry migrate
//! --docker NAME` runs inside the source host.
//!
//! - the counter moves A->B pre-copy by name and back B->A post-copy:
//!   `docker logs` continue without gap or repeat, the source is left exited
//!   as NAME.moved*, the destination's container answers `docker ps`,
//!   inspect and exec, and stop/rm leave no ferry state;
//! - the writable layer moves: files written, a file of the image changed
//!   and one deleted (a whiteout) are the same after the move (with
//!   --rm-source, which removes the source container);
//! - a TCP client keeps one connection to a server on a macvlan network
//!   (same name and subnet on both hosts, a fixed --ip) across the move;
//! - failures keep the source running with its counter going on and leave
//!   no trace on the destination's dockerd: image missing, name taken,
//!   dockerd down, agent SIGKILLed mid-move (and restarted: it removes what
//!   the killed move left);
//! - `--check` lists the problems (image missing, name taken) without
//!   freezing anything.
//!
//! The first test checks the harness alone: two dockerds in two hosts, the
//! macvlan network on both, a ferry container with --ip reachable over TCP
//! from the client host.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ferry_tests::*;

/// The agents' port (each host has its own address).
const PORT: u16 = 7878;
/// The macvlan network of the TCP tests.
const NET: &str = "fnet";

/// Runs `f` on a thread inside network namespace `ns` (a name under
/// /run/netns) and returns what it returns.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// `ferry serve --docker` in a host, its output in a log file; SIGKILLed
/// on drop.
struct Agent {
    child: Option<Child>,
    netns: String,
    addr: String,
    args: Vec<String>,
    log: PathBuf,
}

impl Agent {
    fn start(hosts: &Hosts, h: &str, d: &Dockerd, key: &Path, dir: &Path) -> Agent {
        let root = dir.join(format!("agent-{h}"));
        std::fs::create_dir_all(&root).unwrap();
        let addr = format!("{}:{PORT}", hosts.addr(h));
        let args = vec![
            "--root".to_string(),
            root.display().to_string(),
            "serve".into(),
            "--docker".into(),
            "--docker-host".into(),
            d.host_arg(),
            "--listen".into(),
            addr.clone(),
            "--key-file".into(),
            key.display().to_string(),
        ];
        let mut a = Agent {
            child: None,
            netns: hosts.netns(h),
            addr,
            args,
            log: dir.join(format!("agent-{h}.log")),
        };
        a.spawn();
        a
    }

    /// Starts the agent (again) and waits until it listens.
    fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // nsenter execs ferry (no --fork for a network namespace): the
        // child is the agent itself.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(ferry_bin())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = self.addr.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let a = addr.clone();
            let up = in_ns(&self.netns, move || {
                std::net::TcpStream::connect_timeout(&a.parse().unwrap(), Duration::from_secs(1))
                    .is_ok()
            });
            if up {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "ferry serve --docker on {} exited ({st}): {}",
                    self.netns,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ferry serve --docker did not listen on {addr}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What host B gets of the busybox image.
#[derive(PartialEq)]
enum ImageOnB {
    /// busybox:ferry, as on A.
    Same,
    /// The same rootfs under another tag only (busybox:ferry is missing).
    OtherTag,
}

/// Two hosts of one test, in drop order: agents, dockerds, hosts, files.
struct Two {
    agent_a: Option<Agent>,
    agent_b: Option<Agent>,
    a: Dockerd,
    b: Dockerd,
    hosts: Hosts,
    key: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Two {
    /// `t`: a short tag of the test (names its hosts); `subnet`: its own
    /// wire /24, e.g. "10.72.1".
    fn up(t: &str, subnet: &str, image_b: ImageOnB) -> Two {
        let mut s = Two::without_agents(t, subnet, image_b);
        s.agent_a = Some(Agent::start(&s.hosts, "a", &s.a, &s.key, s._tmp.path()));
        s.agent_b = Some(Agent::start(&s.hosts, "b", &s.b, &s.key, s._tmp.path()));
        s
    }

    /// The same without the agents.
    fn without_agents(t: &str, subnet: &str, image_b: ImageOnB) -> Two {
        require_root();
        let tmp = tempfile::Builder::new()
            .prefix("ferry-dmig-")
            .tempdir()
            .unwrap();
        let key = tmp.path().join("key");
        let out = run_ferry(
            Command::new(ferry_bin())
                .args(["keygen", "--key-file"])
                .arg(&key),
        );
        assert!(
            out.status.success(),
            "ferry keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the key file is readable by others");
        }
        let again = run_ferry(
            Command::new(ferry_bin())
                .args(["keygen", "--key-file"])
                .arg(&key),
        );
        assert!(!again.status.success(), "ferry keygen overwrote a key file");
        // hack/hosts names interfaces after the last 8 bytes of the name
        // (`${NAME: -8}`, empty for a shorter name): 8 bytes, unique.
        let name = format!("dm{:05}{t}", std::process::id() % 100000);
        assert_eq!(name.len(), 8, "{name}");
        let hosts = Hosts::up(&name, subnet);
        let a = Dockerd::in_host(&hosts, "a", true);
        let b = Dockerd::in_host(&hosts, "b", true);
        a.import_busybox(BUSYBOX_IMAGE);
        match image_b {
            ImageOnB::Same => b.import_busybox(BUSYBOX_IMAGE),
            ImageOnB::OtherTag => b.import_busybox("busybox:other"),
        }
        Two {
            agent_a: None,
            agent_b: None,
            a,
            b,
            hosts,
            key,
            _tmp: tmp,
        }
    }

    fn dockerd(&self, h: &str) -> &Dockerd {
        if h == "a" {
            &self.a
        } else {
            &self.b
        }
    }

    /// The other host's agent.
    fn to(&self, from: &str) -> &Agent {
        let a = if from == "a" {
            &self.agent_b
        } else {
            &self.agent_a
        };
        a.as_ref().expect("no agents: Two::up starts them")
    }

    fn agent_b(&mut self) -> &mut Agent {
        self.agent_b
            .as_mut()
            .expect("no agents: Two::up starts them")
    }

    fn migrate_args(&self, from: &str, name: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "migrate",
            "--docker",
            name,
            "--to",
            &self.to(from).addr,
            "--key-file",
            self.key.to_str().unwrap(),
            "--docker-host",
            &self.dockerd(from).host_arg(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// `ferry migrate --docker NAME --to <other agent> …` inside host
    /// `from`: its output, success or not.
    fn migrate(&self, from: &str, name: &str, extra: &[&str]) -> Output {
        let args = self.migrate_args(from, name, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.dockerd(from).ferry(&args)
    }

    /// The same, which must succeed: its stdout.
    fn migrate_ok(&self, from: &str, name: &str, extra: &[&str]) -> String {
        let out = self.migrate(from, name, extra);
        assert!(
            out.status.success(),
            "ferry migrate --docker {name} {extra:?} from {from} failed ({}):\n{}\n--- the destination agent's log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.to(from).log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The same, which must fail: what it said (stderr, then stdout).
    fn migrate_fails(&self, from: &str, name: &str, extra: &[&str]) -> String {
        let out = self.migrate(from, name, extra);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !out.status.success(),
            "ferry migrate --docker {name} {extra:?} from {from} succeeded but should have failed:\n{said}"
        );
        said
    }

    /// `ferry migrate` in the background, its stderr read line by line.
    fn spawn_migrate(&self, from: &str, name: &str, extra: &[&str]) -> BackgroundMove {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.dockerd(from).netns()))
            .arg(ferry_bin())
            .args(self.migrate_args(from, name, extra))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        BackgroundMove {
            child,
            lines,
            reader: Some(reader),
            said: String::new(),
        }
    }
}

/// A `ferry migrate` running in the background.
struct BackgroundMove {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    said: String,
}

impl BackgroundMove {
    /// Lines said since the last call.
    fn poll(&mut self) -> Vec<String> {
        let new: Vec<String> = self.lines.try_iter().collect();
        for l in &new {
            self.said.push_str(l);
            self.said.push('\n');
        }
        new
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the end (3 min at most): whether it succeeded, and all it
    /// said.
    fn finish(mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.poll();
                panic!("ferry migrate hung for 3 minutes; it said:\n{}", self.said);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.poll();
        (status.success(), self.said.clone())
    }
}

impl Drop for BackgroundMove {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Container `name` on `d` is still `id`, running under ferry, its counter
/// going on (numbers keep coming, 0, 1, 2… with no gap and no repeat), and
/// it is the only container there (no NAME.moved* left of a failed move).
fn assert_source_goes_on(d: &Dockerd, name: &str, id: &str, said: &str) {
    assert_eq!(
        d.id(name),
        id,
        "{name} is another container after the failed move: {said}"
    );
    assert_eq!(
        d.state(name),
        "running",
        "the source stopped after the failed move: {said}"
    );
    assert!(
        d.running_names().iter().any(|n| n == name),
        "docker ps does not list {name}: {said}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&Root::ferry_at(&d.runtime_root(), &["state", id])).unwrap();
    assert_eq!(state["status"], "running", "ferry's state: {state}");
    let n = d.log_numbers(name).len();
    let v = d.wait_logs(name, n + 5);
    assert_consecutive(&v);
    let names: Vec<String> = d.all().into_iter().map(|(_, n, _)| n).collect();
    assert_eq!(
        names,
        vec![name.to_string()],
        "the source host has other containers: {said}"
    );
}

/// The destination's containers are what they were before the move.
fn assert_no_trace(d: &Dockerd, before: &[(String, String, String)], said: &str) {
    let now = d.all();
    assert_eq!(
        now, before,
        "the destination's dockerd kept something of the failed move: {said}"
    );
    let ids: Vec<&String> = before.iter().map(|(id, _, _)| id).collect();
    let state: Vec<String> = d
        .runtime_state()
        .into_iter()
        .filter(|e| !ids.contains(&e))
        .collect();
    assert!(
        state.is_empty(),
        "ferry state left on the destination: {state:?}"
    );
}

/// The container named `NAME.moved*` on `d`: (id, name, state).
fn moved_away(d: &Dockerd, name: &str) -> (String, String, String) {
    let all = d.all();
    let prefix = format!("{name}.moved");
    all.iter()
        .find(|(_, n, _)| n.starts_with(&prefix))
        .cloned()
        .unwrap_or_else(|| panic!("no {prefix}* container: docker ps -a lists {all:?}"))
}

/// After a move of `name` (source id `src`) from `s` to `d`: the source is
/// exited and renamed, `docker ps` on the source no longer lists it, the
/// destination runs it under the same name and its `docker logs` continue
/// where the source's stopped. Returns the destination's container id.
fn assert_moved(s: &Dockerd, d: &Dockerd, name: &str, src: &str) -> String {
    assert!(
        !s.running_names().iter().any(|n| n == name),
        "docker ps on the source still lists {name}"
    );
    let (old, old_name, old_state) = moved_away(s, name);
    assert_eq!(old, src, "{old_name} is not the source container");
    assert_eq!(old_state, "exited", "the source container is {old_state}");
    assert_eq!(s.state(src), "exited");
    let before = s.log_numbers(src);
    assert!(!before.is_empty());
    assert_consecutive_from(&before, before[0]);
    let k = *before.last().unwrap();

    assert!(
        d.running_names().iter().any(|n| n == name),
        "docker ps on the destination does not list {name}: {:?}",
        d.all()
    );
    let dst = d.id(name);
    assert_ne!(dst, src);
    let after = d.wait_logs(name, 10);
    assert_eq!(
        after[0],
        k + 1,
        "the destination's first number after the source's last ({k}): {after:?}"
    );
    assert_continuous(&after);
    assert!(
        !s.runtime_state().contains(&src.to_string()),
        "ferry state of the source container left: {:?}",
        s.runtime_state()
    );
    dst
}

fn assert_consecutive_from(v: &[u64], first: u64) {
    for (i, n) in v.iter().enumerate() {
        assert_eq!(*n, first + i as u64, "a gap or a repeat in {v:?}");
    }
}

/// The JSON report of `migrate --json`.
fn report(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("migrate --json printed no JSON object ({e}): {out}"))
}

/// The macvlan network [`NET`] on `d`: the hosts' wire subnet, parent eth0.
fn macvlan(d: &Dockerd, subnet: &str) {
    d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        &format!("{subnet}.0/24"),
        "--gateway",
        &format!("{subnet}.254"),
        "-o",
        "parent=eth0",
        NET,
    ]);
}

/// The echo server: busybox nc, persistent (-ll), each connection handed to
/// `cat`.
const ECHO: &[&str] = &["nc", "-ll", "-p", "5000", "-e", "cat"];

/// One line through a new connection to `addr` from the client host.
fn echo_once(hosts: &Hosts, addr: &str) -> Result<String, String> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    in_ns(&hosts.netns("client"), move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let s = loop {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("cannot connect to {addr}: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        writeln!(w, "hello").map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| format!("no answer from {addr}: {e}"))?;
        Ok(line.trim().to_string())
    })
}

/// The harness alone: two dockerds in two hosts, the macvlan network on
/// both, a ferry container with a fixed --ip on each, each reachable over
/// TCP from the client host (no agent: this runs before the feature).
#[test]
fn the_harness_runs_two_dockerds_with_a_macvlan_network() {
    let s = Two::without_agents("h", "10.72.9", ImageOnB::Same);
    assert_ne!(s.a.netns(), s.b.netns());
    for (d, ip) in [(&s.a, "10.72.9.50"), (&s.b, "10.72.9.51")] {
        macvlan(d, "10.72.9");
        let id = d.run_ferry_container("echo", &["--network", NET, "--ip", ip], ECHO);
        assert!(
            d.runtime_state().contains(&id),
            "ferry does not run {id}: {:?}",
            d.runtime_state()
        );
        let got = echo_once(&s.hosts, &format!("{ip}:5000"));
        assert_eq!(got, Ok("hello".to_string()), "through {}", d.netns());
        d.ok(&["rm", "-f", "echo"]);
    }
    // The counter and its logs, on the default bridge.
    let id = s.a.run_counter("counter");
    assert_consecutive(&s.a.wait_logs("counter", 5));
    assert_eq!(s.a.state(&id), "running");
    assert_eq!(s.a.running_names(), vec!["counter".to_string()]);
}

/// The counter moves A->B pre-copy by name, then back B->A post-copy.
#[test]
fn a_counter_moves_there_and_back_by_name() {
    let s = Two::up("m", "10.72.1", ImageOnB::Same);
    let src = s.a.run_counter("counter");
    s.a.wait_logs("counter", 10);

    let out = s.migrate_ok("a", "counter", &["--mode", "precopy", "--json"]);
    let r = report(&out);
    let dst = assert_moved(&s.a, &s.b, "counter", &src);
    assert_eq!(r["mode"], "precopy", "{r}");
    assert!(r["downtime_ms"].is_number(), "{r}");
    assert_eq!(r["docker"]["name"], "counter", "{r}");
    assert_eq!(r["docker"]["source_id"], src.as_str(), "{r}");
    assert_eq!(r["docker"]["destination_id"], dst.as_str(), "{r}");
    assert!(r["docker"]["notes"].is_array(), "{r}");
    // B's container is a docker container like any other.
    let info = s.b.ok(&[
        "inspect",
        "-f",
        "{{.Name}} {{.Config.Image}} {{.State.Status}} {{.HostConfig.Runtime}}",
        "counter",
    ]);
    assert_eq!(info, "/counter busybox:ferry running ferry");
    assert_eq!(s.b.ok(&["exec", "counter", "sh", "-c", "echo hi"]), "hi");
    assert!(s.b.runtime_state().contains(&dst));

    // And back, post-copy: the name is free on A again.
    let out = s.migrate_ok("b", "counter", &["--mode", "postcopy", "--json"]);
    let r = report(&out);
    assert_eq!(r["mode"], "postcopy", "{r}");
    let back = assert_moved(&s.b, &s.a, "counter", &dst);
    assert_eq!(r["docker"]["destination_id"], back.as_str(), "{r}");
    assert_ne!(back, src);
    assert_eq!(s.a.ok(&["exec", "counter", "sh", "-c", "echo hi"]), "hi");
    // A holds the first source (counter.moved*) and the new counter.
    assert_eq!(s.a.all().len(), 2, "{:?}", s.a.all());

    // To B again pre-copy, its pages into the restored tasks (what a
    // container of 16 MiB or more gets by default). The first source goes
    // first, so that this move's is the one moved away on A.
    let (first, _, _) = moved_away(&s.a, "counter");
    s.a.ok(&["rm", &first]);
    let out = s.migrate_ok(
        "a",
        "counter",
        &["--mode", "precopy", "--precopy-pages", "uffd", "--json"],
    );
    let r = report(&out);
    assert_eq!(r["precopy_pages"], "uffd", "{r}");
    assert!(r["lazy"]["received_bytes"].as_u64().unwrap() > 0, "{r}");
    let there = assert_moved(&s.a, &s.b, "counter", &back);
    assert_eq!(s.b.ok(&["exec", "counter", "sh", "-c", "echo hi"]), "hi");
    assert!(s.a.runtime_state().is_empty(), "{:?}", s.a.runtime_state());

    s.b.ok(&["stop", "-t", "1", "counter"]);
    s.b.ok(&["rm", "counter"]);
    assert!(
        !s.b.runtime_state().contains(&there),
        "ferry state left after docker rm: {:?}",
        s.b.runtime_state()
    );
    for id in [&back, &there] {
        assert!(
            cgroup_leftovers(&format!("docker/{id}")).is_empty(),
            "cgroups of {id} left"
        );
    }
}

/// Files written before the move, a file of the image changed and one
/// deleted (a whiteout in the writable layer) are the same after it; with
/// --rm-source the source container is removed.
#[test]
fn the_writable_layer_moves_with_the_container() {
    let s = Two::up("w", "10.72.2", ImageOnB::Same);
    let script = format!(
        "echo data > /data.txt; chmod 640 /data.txt; mkdir -p /d/e; \
         dd if=/dev/urandom of=/d/e/blob bs=1k count=2048 2>/dev/null; \
         ln -s /data.txt /d/link; echo 'extra:x:5:' >> /etc/group; rm /bin/vi; {COUNTER_LOOP}"
    );
    let src =
        s.a.run_ferry_container("files", &[], &["sh", "-c", &script]);
    s.a.wait_logs("files", 5);
    let look = [
        "exec",
        "files",
        "sh",
        "-c",
        "md5sum /data.txt /d/e/blob /etc/group; stat -c '%a %s %n' /data.txt /d/e/blob; \
         readlink /d/link; if [ -e /bin/vi ]; then echo vi-present; else echo vi-gone; fi",
    ];
    let on_a = s.a.ok(&look);
    assert!(on_a.contains("vi-gone"), "{on_a}");
    assert!(on_a.contains("640 5 /data.txt"), "{on_a}");
    assert!(on_a.contains("2097152 /d/e/blob"), "{on_a}");

    // With --rm-source: nothing of it stays on A.
    let seen = *s.a.log_numbers("files").last().unwrap();
    s.migrate_ok("a", "files", &["--mode", "precopy", "--rm-source"]);
    assert_eq!(
        s.a.all(),
        vec![],
        "--rm-source left the source container on A"
    );
    assert!(
        !s.a.runtime_state().contains(&src),
        "ferry state of the source left: {:?}",
        s.a.runtime_state()
    );
    assert!(
        s.b.running_names().iter().any(|n| n == "files"),
        "{:?}",
        s.b.all()
    );
    let after = s.b.wait_logs("files", 10);
    assert!(
        after[0] > seen,
        "B's first number {} is not after {seen}, seen on A before the move",
        after[0]
    );
    assert_continuous(&after);
    let on_b = s.b.ok(&look);
    assert_eq!(on_b, on_a, "the writable layer changed in the move");
}

/// A client on the client host keeps one TCP connection to a server on a
/// macvlan network with a fixed --ip across the move: lines sent before,
/// during and after it all come back, on the same connection.
#[test]
fn a_tcp_client_keeps_its_connection_across_the_move() {
    let s = Two::up("t", "10.72.3", ImageOnB::Same);
    macvlan(&s.a, "10.72.3");
    macvlan(&s.b, "10.72.3");
    let ip = "10.72.3.50";
    let src =
        s.a.run_ferry_container("echo", &["--network", NET, "--ip", ip], ECHO);

    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (done2, stop2) = (done.clone(), stop.clone());
    let addr: std::net::SocketAddr = format!("{ip}:5000").parse().unwrap();
    let client_ns = format!("/run/netns/{}", s.hosts.netns("client"));
    let client = std::thread::spawn(move || -> Result<u64, String> {
        let ns = std::fs::File::open(&client_ns).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let sock = loop {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("cannot reach the server: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut w = sock.try_clone().unwrap();
        let mut r = BufReader::new(sock);
        let mut i = 0u64;
        while !stop2.load(Ordering::SeqCst) {
            writeln!(w, "ping {i}").map_err(|e| format!("sending ping {i}: {e}"))?;
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) => return Err(format!("the server closed the connection at ping {i}")),
                Ok(_) => {}
                Err(e) => return Err(format!("no answer to ping {i}: {e}")),
            }
            if line.trim() != format!("ping {i}") {
                return Err(format!("ping {i} came back as {line:?}"));
            }
            i += 1;
            done2.store(i, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(i)
    });
    let wait_done = |n: u64, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while done.load(Ordering::SeqCst) < n {
            assert!(
                !client.is_finished(),
                "the client stopped {what} (after {} exchanges)",
                done.load(Ordering::SeqCst)
            );
            assert!(
                Instant::now() < deadline,
                "the client is stuck {what} at {} exchanges",
                done.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_done(20, "before the move");
    let before = done.load(Ordering::SeqCst);

    let out = s.migrate_ok("a", "echo", &["--mode", "precopy", "--json"]);
    let r = report(&out);
    let moved_at = done.load(Ordering::SeqCst);
    assert!(moved_at >= before);
    wait_done(moved_at + 20, "after the move");
    stop.store(true, Ordering::SeqCst);
    let total = client
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the connection did not survive the move: {e}\n{r}"));
    assert!(total >= moved_at + 20);

    // Exited and renamed on A; on B with the same address.
    assert!(!s.a.running_names().iter().any(|n| n == "echo"));
    let (old, _, st) = moved_away(&s.a, "echo");
    assert_eq!((old.as_str(), st.as_str()), (src.as_str(), "exited"));
    let got = s.b.ok(&[
        "inspect",
        "-f",
        "{{range $n, $c := .NetworkSettings.Networks}}{{$n}} {{$c.IPAddress}}{{end}}",
        "echo",
    ]);
    assert_eq!(got, format!("{NET} {ip}"));
    // The server still takes new connections, now on B.
    assert_eq!(
        echo_once(&s.hosts, &format!("{ip}:5000")),
        Ok("hello".to_string())
    );
}

/// On docker's default bridge the container gets the destination's
/// address: pre-flight and the report say so, an established connection
/// from outside is closed (not silently left half-alive), and the moved
/// server takes new connections at its new home.
#[test]
fn on_the_default_bridge_outside_connections_close_and_the_report_says_so() {
    let s = Two::up("b", "10.72.10", ImageOnB::Same);
    let client_ns = s.hosts.netns("client");
    let bridge_ip = |d: &Dockerd| d.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]);
    s.a.run_ferry_container("web", &[], ECHO);
    let ip_a = bridge_ip(&s.a);
    assert!(ip_a.starts_with("172.17."), "{ip_a}");
    // The client reaches a host's default bridge through that host.
    ip(&[
        "-n",
        &client_ns,
        "route",
        "add",
        "172.17.0.0/16",
        "via",
        &s.hosts.addr("a"),
    ]);
    assert_eq!(
        echo_once(&s.hosts, &format!("{ip_a}:5000")),
        Ok("hello".to_string())
    );
    // A connection held open across the move.
    let addr: std::net::SocketAddr = format!("{ip_a}:5000").parse().unwrap();
    let held = in_ns(&client_ns, move || {
        let c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut w = c.try_clone().unwrap();
        writeln!(w, "before").unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "before");
        c
    });

    let check = s.migrate("a", "web", &["--check"]);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{said}");
    assert!(
        said.contains("default bridge") && said.contains(&ip_a),
        "--check says nothing of the address: {said}"
    );

    let r = report(&s.migrate_ok("a", "web", &["--mode", "precopy", "--json"]));
    let notes = r["docker"]["notes"].to_string();
    assert!(
        notes.contains("default bridge") && notes.contains(&ip_a),
        "{r}"
    );
    let ip_b = bridge_ip(&s.b);
    assert!(s.b.running_names().contains(&"web".to_string()));

    ip(&[
        "-n",
        &client_ns,
        "route",
        "replace",
        "172.17.0.0/16",
        "via",
        &s.hosts.addr("b"),
    ]);
    assert_eq!(
        echo_once(&s.hosts, &format!("{ip_b}:5000")),
        Ok("hello".to_string()),
        "the moved server takes new connections at {ip_b}"
    );
    // The held connection is gone: an error or the end, not an answer.
    let old = in_ns(&client_ns, move || {
        let mut w = held.try_clone().unwrap();
        let _ = writeln!(w, "after");
        let mut line = String::new();
        BufReader::new(held).read_line(&mut line).map(|_| line)
    });
    assert!(
        !matches!(&old, Ok(l) if l.trim() == "after"),
        "an outside connection on the default bridge carried on after the move: {old:?}; notes: {notes}"
    );
}

/// B lacks busybox:ferry (the same rootfs is there under another tag).
#[test]
fn a_missing_image_on_the_destination_keeps_the_source() {
    let s = Two::up("i", "10.72.4", ImageOnB::OtherTag);
    let src = s.a.run_counter("counter");
    s.a.wait_logs("counter", 5);
    let before = s.b.all();
    let said = s.migrate_fails("a", "counter", &["--mode", "precopy"]);
    assert!(
        said.contains(BUSYBOX_IMAGE),
        "the error does not name the missing image: {said}"
    );
    assert_source_goes_on(&s.a, "counter", &src, &said);
    assert_no_trace(&s.b, &before, &said);
}

/// B has a container named like the moved one: refused, and B's container
/// is untouched.
#[test]
fn a_taken_name_on_the_destination_keeps_both() {
    let s = Two::up("n", "10.72.5", ImageOnB::Same);
    let src = s.a.run_counter("counter");
    s.a.wait_logs("counter", 5);
    let squat =
        s.b.run_ferry_container("counter", &[], &["sleep", "100000"]);
    let squat_info = |d: &Dockerd| {
        d.ok(&[
            "inspect",
            "-f",
            "{{.Id}} {{.State.Status}} {{.State.Pid}} {{.State.StartedAt}} {{.Path}} {{.Args}}",
            "counter",
        ])
    };
    let info = squat_info(&s.b);
    let before = s.b.all();
    let said = s.migrate_fails("a", "counter", &["--mode", "precopy"]);
    assert!(
        said.contains("counter") && said.contains(&squat[..12]),
        "the error does not name the taken name and the container holding it ({squat}): {said}"
    );
    assert_source_goes_on(&s.a, "counter", &src, &said);
    assert_no_trace(&s.b, &before, &said);
    assert_eq!(squat_info(&s.b), info, "B's own container was touched");
    assert!(info.starts_with(&squat));
}

/// B's dockerd is down (its agent still up): refused; nothing on B once
/// its dockerd is back.
#[test]
fn a_stopped_destination_dockerd_keeps_the_source() {
    let mut s = Two::up("d", "10.72.6", ImageOnB::Same);
    let src = s.a.run_counter("counter");
    s.a.wait_logs("counter", 5);
    let before = s.b.all();
    s.b.stop();
    assert!(!s.b.docker(&["info"]).status.success());
    let said = s.migrate_fails("a", "counter", &["--mode", "precopy"]);
    assert_source_goes_on(&s.a, "counter", &src, &said);
    s.b.start_again();
    assert_no_trace(&s.b, &before, &said);
}

/// The agent is SIGKILLed in the middle of a move of a container holding
/// 256 MiB of memory and 256 MiB in its writable layer, as soon as B's
/// dockerd reports the moved container created (or the move reports pages
/// going): the source keeps running; once restarted, the agent removes what
/// the killed move left on B's dockerd.
#[test]
fn a_killed_agent_keeps_the_source_and_is_cleaned_up_once_restarted() {
    let mut s = Two::up("k", "10.72.7", ImageOnB::Same);
    let script = format!(
        "dd if=/dev/urandom bs=256M count=1 iflag=fullblock 2>/dev/null | sleep 1000000 & \
         dd if=/dev/urandom of=/blob bs=1M count=256 2>/dev/null; {COUNTER_LOOP}"
    );
    let src = s.a.run_ferry_container("big", &[], &["sh", "-c", &script]);
    s.a.wait_logs("big", 5);
    let before = s.b.all();
    assert!(before.is_empty());
    // B's dockerd events, as they come.
    let mut events = Command::new(DOCKER)
        .args(["-H", &s.b.host_arg()])
        .args([
            "events",
            "--filter",
            "type=container",
            "--format",
            "{{.Action}} {{.Actor.ID}}",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, evs) = mpsc::channel();
    let out = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut mig = s.spawn_migrate("a", "big", &["--mode", "precopy"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let why = loop {
        if let Ok(e) = evs.try_recv() {
            break format!("B's dockerd said: {e}");
        }
        if let Some(l) = mig.poll().into_iter().find(|l| l.contains("pages")) {
            break format!("migrate said: {l}");
        }
        if !mig.running() {
            let (ok, said) = mig.finish();
            let _ = events.kill();
            let _ = events.wait();
            panic!("the move ended (success: {ok}) before anything showed it underway:\n{said}");
        }
        assert!(Instant::now() < deadline, "the move never got underway");
        std::thread::sleep(Duration::from_millis(5));
    };
    s.agent_b().kill();
    eprintln!("agent B SIGKILLed when {why}");
    let (moved, said) = mig.finish();
    let _ = events.kill();
    let _ = events.wait();
    let said = format!("(agent killed when {why})\n{said}");
    assert!(
        !moved,
        "the move claimed success with its agent killed: {said}"
    );
    assert_source_goes_on(&s.a, "big", &src, &said);
    s.agent_b().spawn();
    // The restarted agent removes the docker container, then its pending
    // request: wait for both (the state was seen between the two once).
    let ids: Vec<String> = before.iter().map(|(id, _, _)| id.clone()).collect();
    let cleaned = || s.b.all() == before && s.b.runtime_state().iter().all(|e| ids.contains(e));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cleaned() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_no_trace(
        &s.b,
        &before,
        &format!("{said}\n--- agent B's log:\n{}", s.to("a").log()),
    );
}

/// Watches container `id`'s processes and cgroups until `stop`: whether
/// any of them was ever traced (CRIU seizes every task it dumps) or frozen.
fn watch_freeze(
    d: &Dockerd,
    id: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    let pid: u32 = d
        .ok(&["inspect", "-f", "{{.State.Pid}}", id])
        .parse()
        .unwrap();
    let mut freezers = Vec::new();
    for l in std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
    {
        let f: Vec<&str> = l.splitn(3, ':').collect();
        if f.len() == 3 && f[1] == "freezer" {
            freezers.push(format!("/sys/fs/cgroup/freezer{}/freezer.state", f[2]));
        } else if f.len() == 3 && f[1].is_empty() {
            freezers.push(format!("/sys/fs/cgroup/unified{}/cgroup.events", f[2]));
        }
    }
    assert!(!freezers.is_empty(), "no cgroup of {id} found");
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            for f in &freezers {
                let t = std::fs::read_to_string(f).unwrap_or_default();
                if t.contains("FROZEN") || t.contains("FREEZING") || t.contains("frozen 1") {
                    seen.push(format!("{f}: {}", t.trim()));
                }
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(t) = status.lines().find(|l| l.starts_with("TracerPid:")) {
                if t.split_whitespace().nth(1) != Some("0") {
                    seen.push(format!("/proc/{pid}/status: {t}"));
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        seen
    })
}

/// `--check` lists what B lacks (the image, then also the name) without
/// freezing anything or leaving anything on B; once B can take it, --check
/// says so and still moves nothing.
#[test]
fn check_lists_the_problems_without_freezing_anything() {
    let s = Two::up("c", "10.72.8", ImageOnB::OtherTag);
    let src = s.a.run_counter("counter");
    s.a.wait_logs("counter", 5);
    let stop = Arc::new(AtomicBool::new(false));
    let watch = watch_freeze(&s.a, &src, stop.clone());

    let before = s.b.all();
    let said = s.migrate_fails("a", "counter", &["--check"]);
    assert!(said.contains(BUSYBOX_IMAGE), "{said}");
    assert_no_trace(&s.b, &before, &said);

    // Also the name taken, by a container of the image B has.
    let squat = s.b.ok(&[
        "create",
        "--name",
        "counter",
        "busybox:other",
        "sleep",
        "100000",
    ]);
    let before = s.b.all();
    let said = s.migrate_fails("a", "counter", &["--check"]);
    assert!(
        said.contains(BUSYBOX_IMAGE) && said.contains(&squat[..12]),
        "--check does not list both problems (image, name held by {squat}): {said}"
    );
    assert_no_trace(&s.b, &before, &said);

    stop.store(true, Ordering::SeqCst);
    let seen = watch.join().unwrap();
    assert!(seen.is_empty(), "--check froze the source: {seen:?}");
    assert_source_goes_on(&s.a, "counter", &src, &said);

    // Fixed: --check says it would go, and still moves nothing.
    s.b.ok(&["rm", "counter"]);
    s.b.import_busybox(BUSYBOX_IMAGE);
    let out = s.migrate("a", "counter", &["--check"]);
    assert!(
        out.status.success(),
        "--check refuses a destination that can take it: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_source_goes_on(&s.a, "counter", &src, "after a --check that fits");
    assert_no_trace(&s.b, &[], "after a --check that fits");
}
