//! `ferry_oci::docker::Engine` against a real dockerd 20.10 (Debian's
//! docker.io), as root: a private dockerd in a network namespace of its
//! own, with its own data-root, exec-root and socket in a tempdir, and a
//! busybox image imported from Debian's busybox-static (no registry).
//! Containers run with runc, so that nothing here depends on the ferry
//! binary.
//!
//! The docker CLI sets things up and checks what the Engine did; the Engine
//! itself never uses it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_oci::docker::{create_spec, Engine, RestartPolicy};
use ferry_oci::Error;

const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's CLI, the same 20.10 as dockerd.
const DOCKER: &str = "/usr/bin/docker";
const RUNC: &str = "/usr/sbin/runc";
const SLEEPER: &[&str] = &["sh", "-c", "while :; do sleep 1; done"];

fn require_prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the docker_engine tests run as root (they start a dockerd)"
    );
    for p in [DOCKERD, DOCKER, RUNC] {
        assert!(
            Path::new(p).exists(),
            "{p} is missing: apt-get install docker.io runc (hack/setup does)"
        );
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A busybox root filesystem (Debian's busybox-static and its applet
/// links), which `docker import` turns into an image.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox is missing: apt-get install busybox-static (hack/setup does)");
    let root = dir.join("rootfs");
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc", "root", "run"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = run(Command::new(root.join("bin/busybox")).arg("--list"));
    assert!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    root
}

/// A dockerd of the test's own; everything it made goes when it drops,
/// also when the test failed.
struct Dockerd {
    dir: tempfile::TempDir,
    netns: String,
    child: Option<std::process::Child>,
}

impl Dockerd {
    fn start() -> Dockerd {
        require_prerequisites();
        let dir = tempfile::Builder::new()
            .prefix("ferry-engine-")
            .tempdir()
            .unwrap();
        let netns = format!("fe{}", std::process::id());
        ip(&["netns", "add", &netns]);
        let mut d = Dockerd {
            dir,
            netns,
            child: None,
        };
        ip(&["-n", &d.netns, "link", "set", "lo", "up"]);
        let log = std::fs::File::create(d.path().join("dockerd.log")).unwrap();
        // nsenter, not `ip netns exec`: the latter remounts /sys and hides
        // the cgroup hierarchies from dockerd.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", d.netns))
            .arg(DOCKERD)
            .arg("--data-root")
            .arg(d.path().join("data"))
            .arg("--exec-root")
            .arg(d.path().join("exec"))
            .arg("-H")
            .arg(d.host())
            .arg("--pidfile")
            .arg(d.path().join("docker.pid"))
            // The runtime the migration registers; its containers are not
            // started here, so any executable does.
            .arg(format!("--add-runtime=ferry={RUNC}"))
            .args(["--iptables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        d.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker(&["info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let rootfs = busybox_rootfs(d.path());
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let st = Command::new(DOCKER)
            .args(["-H", &d.host(), "import", "-", "busybox:ferry"])
            .stdin(tar.stdout.take().unwrap())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(tar.wait().unwrap().success(), "tar of the busybox rootfs");
        assert!(st.success(), "docker import failed");
        d
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path().join("docker.sock").display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("dockerd.log")).unwrap_or_default()
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        run(Command::new(DOCKER).args(["-H", &self.host()]).args(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker inspect` of one container, as JSON.
    fn inspect(&self, id: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", id])).unwrap();
        v[0].clone()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).lines() {
                let _ = self.docker(&["rm", "-f", "-v", id]);
            }
        }
        if let Some(mut c) = self.child.take() {
            // dockerd is nsenter's child, so its pid is the pidfile's.
            let pid = std::fs::read_to_string(self.path().join("docker.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let deadline = Instant::now() + Duration::from_secs(20);
                while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            } else {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        // dockerd leaves its exec-root mounts (netns, shm) and overlays on
        // a hard stop: unmount them deepest first, or the tempdir stays.
        let dir = self.path().to_string_lossy().into_owned();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .map(str::to_string)
            .collect();
        for m in mounts.iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn json_str(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[test]
fn engine_inspects_recreates_and_manages_containers_of_dockerd_20_10() {
    let d = Dockerd::start();
    d.ok(&["network", "create", "--subnet", "172.30.5.0/24", "fnet"]);
    d.ok(&["network", "create", "--subnet", "172.30.6.0/24", "fnet2"]);
    d.ok(&["volume", "create", "fvol"]);
    let mut args = vec![
        "run",
        "-d",
        "--name",
        "src",
        "--runtime",
        "runc",
        "--network",
        "fnet",
        "--ip",
        "172.30.5.10",
        "--network-alias",
        "srcalias",
        "--restart",
        "always",
        "-l",
        "k=v",
        "-e",
        "A=B",
        "-v",
        "fvol:/data",
        "-v",
        "/data2",
        "busybox:ferry",
    ];
    args.extend_from_slice(SLEEPER);
    let id = d.ok(&args);
    // A second network, connected after the run.
    d.ok(&["network", "connect", "--ip", "172.30.6.10", "fnet2", "src"]);

    // The host as docker finds it: DOCKER_HOST here (no other test of this
    // binary reads it).
    std::env::set_var("DOCKER_HOST", d.host());
    let e = Engine::connect(None).expect("connecting to the test's dockerd");
    assert_eq!(e.host(), d.host());
    assert_eq!(e.api_version(), "1.41", "dockerd 20.10 speaks API 1.41");

    // container(): by name with and without '/', by full and short id.
    let c = e.container("src").unwrap();
    for key in ["/src", &id, &id[..12]] {
        assert_eq!(e.container(key).unwrap().id, id, "container({key})");
    }
    assert_eq!(c.id, id);
    assert_eq!(c.name, "src");
    assert!(c.running && !c.paused);
    let src_inspect = d.inspect(&id);
    assert_eq!(
        i64::from(c.pid),
        src_inspect["State"]["Pid"].as_i64().unwrap()
    );
    assert!(Path::new(&format!("/proc/{}", c.pid)).exists());
    assert_eq!(c.runtime, "runc");
    assert_eq!(c.image_name, "busybox:ferry");
    assert_eq!(c.image_id, json_str(&src_inspect["Image"]));
    assert_eq!(c.storage_driver, "overlay2");
    let upper = c.upper_dir.as_ref().expect("overlay2 has an upper dir");
    assert!(upper.is_dir(), "{} is not a directory", upper.display());
    assert!(upper.starts_with(d.path().join("data")));
    let sandbox = c.sandbox_key.as_ref().expect("a sandbox key");
    assert!(sandbox.starts_with(d.path().join("exec/netns")));
    assert!(sandbox.exists(), "{} is missing", sandbox.display());
    assert_eq!(c.volumes, vec!["fvol".to_string()], "only the named volume");
    let nets: Vec<&str> = c.networks.iter().map(|a| a.network.as_str()).collect();
    assert_eq!(nets, ["fnet", "fnet2"], "the primary network first");
    let a = &c.networks[0];
    assert_eq!(a.ip, Some(Ipv4Addr::new(172, 30, 5, 10)));
    assert_eq!(a.prefix, Some(24));
    assert!(a.fixed && !a.builtin);
    let src_mac = json_str(&src_inspect["NetworkSettings"]["Networks"]["fnet"]["MacAddress"]);
    assert_eq!(a.mac.as_deref(), Some(src_mac));
    assert_eq!(c.networks[1].ip, Some(Ipv4Addr::new(172, 30, 6, 10)));
    assert!(c.networks[1].fixed);

    // A container that does not exist is named.
    match e.container("nosuch") {
        Err(err @ Error::DockerNotFound { .. }) => {
            assert!(err.to_string().contains("nosuch"), "{err}")
        }
        other => panic!("container(nosuch): {other:?}"),
    }

    // runtime_root(): <exec-root>/runtime-runc/moby, found from dockerd's
    // command line through the socket's peer.
    let root = e.runtime_root().unwrap();
    assert_eq!(root, d.path().join("exec/runtime-runc/moby"));
    assert!(
        root.join(&id).is_dir(),
        "{} has no state dir for {id}",
        root.display()
    );

    // image(): layers as dockerd has them; None for an unknown image.
    let img = e
        .image("busybox:ferry")
        .unwrap()
        .expect("the imported image");
    assert_eq!(img.id, c.image_id);
    let layers: Vec<String> = serde_json::from_str(&d.ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .RootFS.Layers}}",
        "busybox:ferry",
    ]))
    .unwrap();
    assert!(!layers.is_empty());
    assert_eq!(img.layers, layers);
    assert_eq!(img.tags, vec!["busybox:ferry".to_string()]);
    assert_eq!(e.image("nosuch:image").unwrap(), None);

    // network(): subnets; None for an unknown network.
    let n = e.network("fnet").unwrap().expect("fnet");
    assert_eq!(n.name, "fnet");
    assert_eq!(n.driver, "bridge");
    assert_eq!(n.id, d.ok(&["network", "inspect", "-f", "{{.Id}}", "fnet"]));
    assert_eq!(n.subnets, vec![(Ipv4Addr::new(172, 30, 5, 0), 24)]);
    assert!(e.network("nosuchnet").unwrap().is_none());

    // name_taken(): the exact name only.
    assert_eq!(e.name_taken("src").unwrap().as_deref(), Some(id.as_str()));
    assert_eq!(e.name_taken("/src").unwrap().as_deref(), Some(id.as_str()));
    assert_eq!(e.name_taken("sr").unwrap(), None);
    assert_eq!(e.name_taken("copy").unwrap(), None);

    // create_spec() round trip: the same container under another name and
    // other addresses, on the same dockerd.
    let mut spec = create_spec(&e.inspect("src").unwrap());
    assert_eq!(spec.name, "src");
    // Its own name is taken: dockerd's refusal says so.
    let err = e.create(&spec).unwrap_err();
    eprintln!("name taken: {}", ferry_oci::error::chain(&err));
    assert!(
        ferry_oci::error::chain(&err).contains("already in use"),
        "{}",
        ferry_oci::error::chain(&err)
    );
    spec.name = "copy".into();
    let eps = spec
        .body
        .networking_config
        .as_mut()
        .and_then(|n| n.endpoints_config.as_mut())
        .expect("endpoints");
    assert_eq!(eps.len(), 2);
    for (net, addr) in [("fnet", "172.30.5.11"), ("fnet2", "172.30.6.11")] {
        eps.get_mut(net)
            .and_then(|ep| ep.ipam_config.as_mut())
            .expect("a fixed address")
            .ipv4_address = Some(addr.into());
    }
    let copy = e.create(&spec).unwrap();
    assert_ne!(copy, id);
    assert_eq!(
        e.name_taken("copy").unwrap().as_deref(),
        Some(copy.as_str())
    );
    e.start(&copy).unwrap();
    let (s, k) = (&src_inspect, d.inspect(&copy));
    assert_eq!(json_str(&k["Name"]), "/copy");
    for path in [
        "/Config/Env",
        "/Config/Cmd",
        "/Config/Labels",
        "/Config/Hostname",
        "/Config/Image",
        "/HostConfig/RestartPolicy",
        "/HostConfig/NetworkMode",
        "/HostConfig/Runtime",
        "/HostConfig/Binds",
        "/HostConfig/MaskedPaths",
    ] {
        assert_eq!(s.pointer(path), k.pointer(path), "{path}");
        assert!(k.pointer(path).is_some(), "{path} is missing");
    }
    assert_eq!(k["Config"]["Labels"]["k"], "v");
    assert_eq!(k["HostConfig"]["RestartPolicy"]["Name"], "always");
    assert_eq!(k["State"]["Running"], true);
    let knet = &k["NetworkSettings"]["Networks"];
    assert_eq!(json_str(&knet["fnet"]["IPAddress"]), "172.30.5.11");
    assert_eq!(json_str(&knet["fnet2"]["IPAddress"]), "172.30.6.11");
    // Config.MacAddress made it through API 1.41: the same MAC.
    assert_eq!(json_str(&knet["fnet"]["MacAddress"]), src_mac);
    let aliases: Vec<&str> = knet["fnet"]["Aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(json_str)
        .collect();
    assert!(aliases.contains(&"srcalias"), "{aliases:?}");
    assert!(aliases.contains(&&copy[..12]), "{aliases:?}");
    // The old short id stays once, as dockerd's alias for the hostname the
    // copy keeps (the source's default hostname is its short id); the spec
    // itself does not carry it.
    let spec_aliases = spec
        .body
        .networking_config
        .as_ref()
        .unwrap()
        .endpoints_config
        .as_ref()
        .unwrap()["fnet"]
        .aliases
        .clone()
        .unwrap_or_default();
    assert!(
        !spec_aliases.contains(&id[..12].to_string()),
        "{spec_aliases:?}"
    );
    assert_eq!(json_str(&k["Config"]["Hostname"]), &id[..12]);
    assert_eq!(
        aliases.iter().filter(|a| **a == &id[..12]).count(),
        1,
        "{aliases:?}"
    );
    let kc = e.container("copy").unwrap();
    assert_eq!(kc.volumes, vec!["fvol".to_string()]);
    assert_eq!(kc.networks[0].ip, Some(Ipv4Addr::new(172, 30, 5, 11)));

    // Restart policies: off and back, as dockerd shows them.
    let old = e.disable_restart(&copy).unwrap();
    assert_eq!(
        old,
        RestartPolicy {
            name: "always".into(),
            maximum_retry_count: 0
        }
    );
    assert_eq!(
        d.inspect(&copy)["HostConfig"]["RestartPolicy"]["Name"],
        "no"
    );
    let on_failure = RestartPolicy {
        name: "on-failure".into(),
        maximum_retry_count: 3,
    };
    e.set_restart(&copy, &on_failure).unwrap();
    assert_eq!(e.disable_restart(&copy).unwrap(), on_failure);
    e.set_restart(&copy, &old).unwrap();
    let rp = &d.inspect(&copy)["HostConfig"]["RestartPolicy"];
    assert_eq!(
        (rp["Name"].as_str(), rp["MaximumRetryCount"].as_i64()),
        (Some("always"), Some(0))
    );

    // rename().
    e.rename(&copy, "copy2").unwrap();
    assert_eq!(e.name_taken("copy").unwrap(), None);
    assert_eq!(
        e.name_taken("copy2").unwrap().as_deref(),
        Some(copy.as_str())
    );
    assert_eq!(e.container(&copy).unwrap().name, "copy2");

    // wait_not_running(): times out while it runs, returns once killed.
    let err = e
        .wait_not_running(&copy, Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, Error::DockerTimeout { .. }), "{err}");
    e.disable_restart(&copy).unwrap();
    d.ok(&["kill", &copy]);
    e.wait_not_running(&copy, Duration::from_secs(10)).unwrap();
    assert!(!e.container(&copy).unwrap().running);

    // remove(): with its anonymous volume; gone twice is fine.
    let anon: Vec<String> = e
        .inspect(&copy)
        .unwrap()
        .mounts
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.destination.as_deref() == Some("/data2"))
        .filter_map(|m| m.name)
        .collect();
    assert_eq!(anon.len(), 1, "the copy's anonymous volume");
    e.remove(&copy, false).unwrap();
    assert!(matches!(
        e.container(&copy),
        Err(Error::DockerNotFound { .. })
    ));
    e.remove(&copy, false).unwrap();
    let vols = d.ok(&["volume", "ls", "-q"]);
    assert!(!vols.contains(&anon[0]), "anonymous volume left: {vols}");
    assert!(vols.contains("fvol"), "the named volume stays: {vols}");
    // A running one needs force.
    assert!(e.remove(&id, false).is_err());
    e.remove(&id, true).unwrap();
    assert_eq!(e.name_taken("src").unwrap(), None);
    drop(e);
    drop(d);
}

#[test]
fn a_dockerd_that_does_not_run_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // No socket at all.
    let host = format!("unix://{}/docker.sock", dir.path().display());
    let err = Engine::connect(Some(&host)).unwrap_err();
    assert!(matches!(err, Error::DockerConnect { .. }), "{err:?}");
    let msg = err.to_string();
    eprintln!("no socket: {}", ferry_oci::error::chain(&err));
    // The fix (`is dockerd running? set --docker-host...`) is the
    // binary's hint; the library names the host and why.
    assert!(msg.contains(&host), "{msg}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the cause is missing: {err}"
    );
    // A socket dockerd left behind when it died: nobody listens.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let host = format!("unix://{}", stale.display());
    let err = Engine::connect(Some(&host)).unwrap_err();
    eprintln!("stale socket: {}", ferry_oci::error::chain(&err));
    assert!(matches!(err, Error::DockerConnect { .. }), "{err:?}");
    assert!(err.to_string().contains(&host), "{err}");
    // A tcp host is refused before anything is tried.
    let err = Engine::connect(Some("tcp://127.0.0.1:2375")).unwrap_err();
    eprintln!("tcp: {err}");
    assert!(matches!(err, Error::DockerHost { .. }), "{err:?}");
    assert!(err.to_string().contains("tcp://127.0.0.1:2375"), "{err}");
}
