//! A Kubernetes node without the kubelet: containerd 2.1 with its CRI plugin
//! and Ferry as a runtime handler ([`CriHost`], configured by
//! hack/cri-host), and a CRI client ([`Cri`]) that speaks to it over its
//! unix socket with the kubelet's own protocol (runtime.v1 over gRPC, the
//! k8s-cri crate's generated client), call by call as the kubelet makes them:
//! RunPodSandbox, CreateContainer, StartContainer, ExecSync,
//! ContainerStatus, StopContainer, RemoveContainer, StopPodSandbox,
//! RemovePodSandbox, CheckpointContainer. Container logs are read from the
//! file CRI writes (the kubelet's `kubectl logs` reads the same file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{cgroup_leftovers, mount_leftovers, repo, require_root, Hosts};

/// Where hack/setup unpacks Debian's containerd 2.1.
pub const CONTAINERD2: &str = "/opt/containerd-2.1/usr/bin/containerd";
pub const CTR2: &str = "/opt/containerd-2.1/usr/bin/ctr";
/// The images hack/setup builds (there is no registry to pull from).
pub const CRI_IMAGES: &str = "/var/cache/ferry/cri";
/// busybox as each node pulls it through CRI, from the registry it runs on
/// its own loopback (hack/lib/oci-registry.py): CRI's restore of a
/// checkpoint pulls the checkpointed container's image by its repo digest,
/// which only a pulled image has.
pub const CRI_BUSYBOX_IMAGE: &str = "localhost:5000/ferry-busybox:latest";
/// The registry's address inside each node's network namespace.
pub const REGISTRY: &str = "127.0.0.1:5000";
/// The RuntimeClass handler hack/cri-host maps to io.containerd.ferry.v2.
pub const HANDLER: &str = "ferry";
/// containerd's namespace for CRI's containers.
pub const K8S_NS: &str = "k8s.io";

/// The kubelet's side of CRI: blocking calls over containerd's socket.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI socket (containerd's gRPC socket) at `sock`.
    pub fn connect(sock: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let path = sock.to_path_buf();
        // The URI is a placeholder: the connector dials the unix socket.
        let channel = rt
            .block_on(
                Endpoint::try_from("http://[::]:0")
                    .unwrap()
                    // A containerd or shim that never answers fails the
                    // test rather than stalling it.
                    .timeout(Duration::from_secs(120))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    })),
            )
            .unwrap_or_else(|e| panic!("connecting to CRI at {}: {e}", sock.display()));
        Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        self.rt.block_on(f).map(|r| r.into_inner())
    }

    fn ok<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> T {
        self.call(f)
            .unwrap_or_else(|s| panic!("CRI {what}: {:?}: {}", s.code(), s.message()))
    }

    pub fn version(&self) -> VersionResponse {
        let mut c = self.runtime.clone();
        self.ok(
            "Version",
            c.version(VersionRequest {
                version: "v1".into(),
            }),
        )
    }

    pub fn image_status(&self, image: &str) -> Option<Image> {
        let mut c = self.images.clone();
        self.ok(
            "ImageStatus",
            c.image_status(ImageStatusRequest {
                image: Some(image_spec(image)),
                verbose: false,
            }),
        )
        .image
    }

    pub fn pull_image(&self, image: &str) -> String {
        let mut c = self.images.clone();
        self.ok(
            "PullImage",
            c.pull_image(PullImageRequest {
                image: Some(image_spec(image)),
                auth: None,
                sandbox_config: None,
            }),
        )
        .image_ref
    }

    /// RunPodSandbox on `handler` (a RuntimeClass's handler).
    pub fn try_run_pod(
        &self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        }))
        .map(|r| r.pod_sandbox_id)
    }

    pub fn run_pod(&self, config: &PodSandboxConfig, handler: &str) -> String {
        self.try_run_pod(config, handler)
            .unwrap_or_else(|s| panic!("CRI RunPodSandbox: {:?}: {}", s.code(), s.message()))
    }

    pub fn pod_status(&self, pod: &str) -> PodSandboxStatus {
        let mut c = self.runtime.clone();
        self.ok(
            "PodSandboxStatus",
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.into(),
                verbose: false,
            }),
        )
        .status
        .expect("PodSandboxStatus without a status")
    }

    pub fn try_create_container(
        &self,
        pod: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        }))
        .map(|r| r.container_id)
    }

    pub fn create_container(
        &self,
        pod: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> String {
        self.try_create_container(pod, config, pod_config)
            .unwrap_or_else(|s| panic!("CRI CreateContainer: {:?}: {}", s.code(), s.message()))
    }

    pub fn try_start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.start_container(StartContainerRequest {
            container_id: id.into(),
        }))
        .map(|_| ())
    }

    pub fn start_container(&self, id: &str) {
        self.try_start_container(id)
            .unwrap_or_else(|s| panic!("CRI StartContainer: {:?}: {}", s.code(), s.message()))
    }

    pub fn container_status(&self, id: &str) -> ContainerStatus {
        let mut c = self.runtime.clone();
        self.ok(
            "ContainerStatus",
            c.container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }),
        )
        .status
        .expect("ContainerStatus without a status")
    }

    /// ExecSync: (exit code, stdout, stderr).
    pub fn try_exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<(i32, String, String), tonic::Status> {
        let mut c = self.runtime.clone();
        let r = self.call(c.exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        }))?;
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_s: i64) -> (i32, String, String) {
        self.try_exec_sync(id, cmd, timeout_s)
            .unwrap_or_else(|s| panic!("CRI ExecSync: {:?}: {}", s.code(), s.message()))
    }

    pub fn stop_container(&self, id: &str, timeout_s: i64) {
        let mut c = self.runtime.clone();
        self.ok(
            "StopContainer",
            c.stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: timeout_s,
            }),
        );
    }

    pub fn remove_container(&self, id: &str) {
        let mut c = self.runtime.clone();
        self.ok(
            "RemoveContainer",
            c.remove_container(RemoveContainerRequest {
                container_id: id.into(),
            }),
        );
    }

    pub fn stop_pod(&self, pod: &str) {
        let mut c = self.runtime.clone();
        self.ok(
            "StopPodSandbox",
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            }),
        );
    }

    pub fn remove_pod(&self, pod: &str) {
        let mut c = self.runtime.clone();
        self.ok(
            "RemovePodSandbox",
            c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            }),
        );
    }

    pub fn list_pods(&self) -> Vec<PodSandbox> {
        let mut c = self.runtime.clone();
        self.ok(
            "ListPodSandbox",
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        )
        .items
    }

    pub fn list_containers(&self) -> Vec<Container> {
        let mut c = self.runtime.clone();
        self.ok(
            "ListContainers",
            c.list_containers(ListContainersRequest { filter: None }),
        )
        .containers
    }

    /// CheckpointContainer into the archive `location` (the kubelet's
    /// checkpoint API passes a path under /var/lib/kubelet/checkpoints).
    pub fn checkpoint(&self, id: &str, location: &Path) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.checkpoint_container(CheckpointContainerRequest {
            container_id: id.into(),
            location: location.to_string_lossy().into_owned(),
            timeout: 0,
        }))
        .map(|_| ())
    }
}

pub fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

/// A pod as the kubelet describes it: name, uid and namespace, a hostname,
/// its log directory, and its cgroup parent (the kubelet's
/// /kubepods/<qos>/pod<uid>, here under a parent of the test's own).
pub fn pod_config(name: &str, uid: &str, logs: &Path, cgroup_parent: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(uid).to_string_lossy().into_owned(),
        labels: HashMap::from([
            ("io.kubernetes.pod.name".into(), name.into()),
            ("io.kubernetes.pod.namespace".into(), "default".into()),
            ("io.kubernetes.pod.uid".into(), uid.into()),
        ]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("{cgroup_parent}/pod{uid}"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The namespaces the kubelet asks for a pod without hostNetwork,
/// hostIPC or shareProcessNamespace: network and IPC shared by the pod,
/// a pid namespace per container (CRI's zero value would be the pod's).
pub fn kubelet_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A container as the kubelet describes it, its log at
/// `<pod log dir>/<name>/0.log` as the kubelet names it.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("io.kubernetes.container.name".into(), name.into())]),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The lines of a CRI container log (`TIME STREAM TAG MESSAGE`, the format
/// containerd's CRI writes and the kubelet reads): (stream, message).
pub fn log_lines(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, ' ');
            let (_time, stream, _tag) = (f.next()?, f.next()?, f.next()?);
            Some((stream.to_string(), f.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// The numbers a counter wrote to its CRI log's stdout.
pub fn log_numbers(path: &Path) -> Vec<u64> {
    log_lines(path)
        .into_iter()
        .filter(|(s, _)| s == "stdout")
        .filter_map(|(_, m)| m.trim().parse().ok())
        .collect()
}

/// Waits (20 s at most) until the CRI log at `path` has `n` numbers more
/// than `after`.
pub fn wait_log_numbers(path: &Path, after: usize, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = log_numbers(path);
        if v.len() >= after + n {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} numbers, not {}: {:?}",
            path.display(),
            v.len(),
            after + n,
            std::fs::read_to_string(path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Kubernetes node: containerd 2.1 with CRI and the ferry handler, its
/// root, state, sockets, pod logs and network namespaces in a temp dir of
/// its own, running in a host of hack/hosts (its pods' bridge is made
/// there). Everything it ran is removed on drop.
pub struct CriHost {
    dir: tempfile::TempDir,
    pid: i32,
    registry: Option<std::process::Child>,
    /// The number that keeps its pod network apart (10.88.N.0/24).
    pub number: u32,
    pub netns: String,
    pub cri: Cri,
}

impl CriHost {
    /// Starts the node's containerd in host `h` of `hosts` and imports the
    /// sandbox and busybox images into CRI's namespace.
    pub fn start(hosts: &Hosts, h: &str, number: u32) -> CriHost {
        Self::start_with(hosts, h, number, |_| {})
    }

    /// Like [`CriHost::start`], with hack/cri-host's config.toml edited by
    /// `edit` before containerd reads it.
    pub fn start_with(
        hosts: &Hosts,
        h: &str,
        number: u32,
        edit: impl FnOnce(&mut String),
    ) -> CriHost {
        require_root();
        for bin in [CONTAINERD2, CTR2] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: hack/setup unpacks Debian's containerd 2.1 there"
            );
        }
        let shim = crate::ferry_bin().with_file_name("containerd-shim-ferry-v2");
        assert!(
            shim.exists(),
            "{} is missing: run `cargo build --bins` (hack/test does)",
            shim.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("ferry-cri-")
            .tempdir()
            .unwrap();
        let netns = hosts.netns(h);
        let script = repo().join("hack/cri-host");
        let out = Command::new("bash")
            .arg(&script)
            .args(["config"])
            .arg(dir.path())
            .arg(number.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hack/cri-host config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = dir.path().join("config.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        edit(&mut text);
        std::fs::write(&config, text).unwrap();
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path())
            .arg(&netns)
            .env("FERRY_SHIM_DIR", shim.parent().unwrap())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hack/cri-host start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pid: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("hack/cri-host start prints containerd's pid");
        let cri = Cri::connect(&dir.path().join("containerd.sock"));
        let mut host = CriHost {
            dir,
            pid,
            registry: None,
            number,
            netns,
            cri,
        };
        let tar = |img: &str| {
            let tar = Path::new(CRI_IMAGES).join(format!("{img}.tar"));
            assert!(
                tar.exists(),
                "{} is missing: hack/setup builds it",
                tar.display()
            );
            tar
        };
        // The sandbox image is used from the node's store, as a node that
        // has pinned it.
        host.ctr(&["images", "import", tar("pause").to_str().unwrap()]);
        host.registry = Some(start_registry(
            &host.netns,
            &[("ferry-busybox", &tar("busybox"))],
        ));
        host.cri.pull_image(CRI_BUSYBOX_IMAGE);
        host
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where pods' logs go (the kubelet's /var/log/pods).
    pub fn logs(&self) -> PathBuf {
        self.path().join("pods")
    }

    /// Ferry's state root for CRI's containers.
    pub fn ferry_root(&self) -> PathBuf {
        self.path().join("ferry").join(K8S_NS)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("containerd.log")).unwrap_or_default()
    }

    /// The last `n` lines of containerd's log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// containerd 2.1's `ctr` on this node, in CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("timeout")
            .args(["--signal=KILL", "120", CTR2, "--address"])
            .arg(self.path().join("containerd.sock"))
            .args(["--namespace", K8S_NS])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The ferry shims this node's containerd runs (their pids).
    pub fn shims(&self) -> Vec<i32> {
        let sock = self.path().join("containerd.sock");
        let sock = sock.to_string_lossy().into_owned();
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
                && args.contains(&sock)
            {
                out.push(pid);
            }
        }
        out
    }

    /// Stops and removes every pod (the kubelet's way: containers first).
    pub fn remove_all_pods(&self) {
        for c in self.cri.list_containers() {
            self.cri.stop_container(&c.id, 0);
            self.cri.remove_container(&c.id);
        }
        for p in self.cri.list_pods() {
            self.cri.stop_pod(&p.id);
            self.cri.remove_pod(&p.id);
        }
    }

    /// Nothing of this node's pods is left: no shim, no Ferry state, no
    /// mount under its dir, no cgroup under `cgroup_parent` (which is then
    /// removed).
    pub fn assert_nothing_left(&self, cgroup_parent: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.shims().is_empty() {
            assert!(
                Instant::now() < deadline,
                "ferry shims {:?} still run after their pods were removed",
                self.shims()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let left: Vec<_> = std::fs::read_dir(self.ferry_root())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "Ferry state left behind: {left:?}");
        // containerd's own snapshot mounts are not the pods'.
        let mounts: Vec<String> = mount_leftovers(self.path().to_str().unwrap())
            .into_iter()
            .filter(|m| !m.contains("/root/io.containerd.snapshotter"))
            .collect();
        assert_eq!(mounts, Vec::<String>::new(), "mounts left behind");
        // The pods' cgroups are gone; the parent is the node's (the
        // kubelet's /kubepods, made by whichever pod came first there and
        // left while others used it), so the test removes it.
        for dir in cgroup_leftovers(cgroup_parent.trim_start_matches('/')) {
            let children: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            assert_eq!(children, Vec::<PathBuf>::new(), "cgroups left behind");
            std::fs::remove_dir(&dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
        }
    }
}

/// Runs hack/lib/oci-registry.py on the loopback of network namespace
/// `netns` at [`REGISTRY`], serving `images` (repository name, tarball);
/// returns once it listens.
pub fn start_registry(netns: &str, images: &[(&str, &Path)]) -> std::process::Child {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{netns}"))
        .arg("python3")
        .arg(repo().join("hack/lib/oci-registry.py"))
        .args(["--listen", REGISTRY]);
    for (name, tar) in images {
        cmd.arg(format!("{name}={}", tar.display()));
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 hack/lib/oci-registry.py");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(
        line.starts_with("listening on"),
        "the registry in {netns} did not start: {line:?}"
    );
    child
}

impl Drop for CriHost {
    fn drop(&mut self) {
        if let Some(mut r) = self.registry.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        // Best effort: a failed test's pods go too.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.remove_all_pods()));
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            // containerd is not our child (hack/cri-host started it): it is
            // reaped by init once it exits.
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        // Shims of a failed test outlive containerd: they are ours to stop.
        for s in self.shims() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(s),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        let mounts = mount_leftovers(self.path().to_str().unwrap());
        for m in mounts.iter().rev() {
            if let Some(p) = m.split(' ').nth(4) {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}
