//! containerd-shim-ferry-v2 under containerd 2.1's CRI plugin, driven as
//! the kubelet drives it (tests/src/cri.rs): each node's containerd runs in a
//! host of hack/hosts with the `ferry` RuntimeClass handler
//! (hack/cri-host), pulling its images from a registry on its own loopback.
//!
//! - a pod (its sandbox on the ferry shim) with a counter container: the
//!   counter's output reaches the CRI log, ExecSync runs in the container
//!   (in the pod's network and UTS namespaces) and returns its output and
//!   exit code, ContainerStatus follows it, StopContainer, RemoveContainer,
//!   StopPodSandbox and RemovePodSandbox leave no shim, Ferry state, mount
//!   or cgroup behind;
//! - CheckpointContainer of the running counter writes checkpointctl's
//!   archive while the counter runs on; `ferry inspect` reads it; restored
//!   by CreateContainer from the archive into a new pod, on the same node
//!   and on host B's node, the counter goes on from the number the dump
//!   froze, with its writable layer, in its new pod's network;
//! - a checkpoint CRIU refuses (the counter holds /dev/loop-control) fails
//!   with CRIU's reason through CRI, and the counter runs on;
//! - a handler with `sandboxer = "shim"` (containerd 2.x's sandbox API,
//!   which the shim has not) is refused at RunPodSandbox with the fix.

use std::time::Duration;

use ferry_tests::cri::*;
use ferry_tests::*;
use k8s_cri::v1::{ContainerState, PodSandboxState};

/// The counter: a number a line on stdout, a tenth of a second apart.
const COUNTER: &str = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done";

/// A cgroup parent of the test's own (the kubelet's /kubepods).
fn cgroup_parent(tag: &str) -> String {
    format!("/ferry-cri-{}-{tag}", std::process::id())
}

#[test]
fn cri_runs_a_pod_on_ferry_with_exec_logs_stop_and_remove() {
    let hosts = Hosts::up(&format!("cri{}r", std::process::id() % 10000), "10.71.0");
    let node = CriHost::start(&hosts, "a", 1);
    let v = node.cri.version();
    assert_eq!(v.runtime_name, "containerd");
    assert!(
        v.runtime_version.starts_with("2.1.") || v.runtime_version.starts_with("v2.1."),
        "containerd under test is {}, not 2.1",
        v.runtime_version
    );
    assert_eq!(v.runtime_api_version, "v1");

    let parent = cgroup_parent("run");
    let pod_cfg = pod_config("counter-pod", "uid-run-1", &node.logs(), &parent);
    let pod = node.cri.run_pod(&pod_cfg, HANDLER);
    let ps = node.cri.pod_status(&pod);
    assert_eq!(ps.state(), PodSandboxState::SandboxReady);
    let ip = ps
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    assert!(
        ip.starts_with(&format!("10.88.{}.", node.number)),
        "the pod's address {ip:?} is not on its node's bridge network"
    );
    // The sandbox runs on Ferry: its shim is ferry's, and Ferry keeps the
    // pause container's state.
    assert!(!node.shims().is_empty(), "no ferry shim runs the sandbox");
    assert!(
        node.ferry_root().join(&pod).exists(),
        "no Ferry state for the sandbox {pod}: {}",
        node.log_tail(30)
    );

    let ctr_cfg = container_config("counter", CRI_BUSYBOX_IMAGE, &["sh", "-c", COUNTER]);
    let id = node.cri.create_container(&pod, &ctr_cfg, &pod_cfg);
    assert_eq!(
        node.cri.container_status(&id).state(),
        ContainerState::ContainerCreated
    );
    node.cri.start_container(&id);
    let st = node.cri.container_status(&id);
    assert_eq!(st.state(), ContainerState::ContainerRunning);
    assert!(
        node.ferry_root().join(&id).exists(),
        "no Ferry state for the container {id}"
    );
    // The kubelet's logs: CRI's log file, every number once, in order.
    let log = std::path::PathBuf::from(&st.log_path);
    assert!(
        log.starts_with(node.logs()),
        "the log {} is not in the pod's log directory",
        log.display()
    );
    let v = wait_log_numbers(&log, 0, 5);
    assert_consecutive(&v);

    // ExecSync: output and exit code back; the process runs in the
    // container (its counter is pid 1 there) and in the pod's network and
    // UTS namespaces (the sandbox's address and hostname).
    let (code, out, err) = node.cri.exec_sync(
        &id,
        &["sh", "-c", "echo in-ferry; echo oops >&2; exit 3"],
        10,
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (3, "in-ferry\n", "oops\n")
    );
    let (code, out, _) = node.cri.exec_sync(&id, &["cat", "/proc/1/cmdline"], 10);
    assert_eq!(code, 0);
    assert!(out.contains("while :"), "pid 1 of the container is {out:?}");
    let (code, out, _) = node.cri.exec_sync(&id, &["hostname"], 10);
    assert_eq!((code, out.trim()), (0, "counter-pod"));
    let (code, out, _) = node
        .cri
        .exec_sync(&id, &["ip", "-4", "addr", "show", "eth0"], 10);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("{ip}/")),
        "eth0 of the container: {out}"
    );
    // A command that is not there: an error naming it, as runc gives.
    let e = node
        .cri
        .try_exec_sync(&id, &["/no/such/binary"], 10)
        .expect_err("ExecSync of a missing binary succeeded");
    assert!(e.message().contains("/no/such/binary"), "{}", e.message());

    // The counter went on meanwhile, still without a gap.
    let before = log_numbers(&log).len();
    let v = wait_log_numbers(&log, before, 3);
    assert_consecutive(&v);

    // StopContainer: sh as pid 1 ignores SIGTERM, so after the grace
    // period containerd kills it (137), as the kubelet would see.
    node.cri.stop_container(&id, 1);
    let st = node.cri.container_status(&id);
    assert_eq!(st.state(), ContainerState::ContainerExited);
    assert_eq!(st.exit_code, 137, "exit code of the stopped counter");
    let stopped = log_numbers(&log).len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        log_numbers(&log).len(),
        stopped,
        "the counter runs on after its stop"
    );
    node.cri.remove_container(&id);
    assert!(
        !node.ferry_root().join(&id).exists(),
        "Ferry's state of the removed container {id} is still there"
    );
    node.cri.stop_pod(&pod);
    assert_eq!(
        node.cri.pod_status(&pod).state(),
        PodSandboxState::SandboxNotready
    );
    node.cri.remove_pod(&pod);
    assert!(node.cri.list_pods().is_empty());
    node.assert_nothing_left(&parent);
}

/// The counter of the checkpoint tests: each number goes to stdout and
/// to /root/count in the writable layer (the rootfs diff of a checkpoint
/// holds the number the dump froze); /root/layer-file is written before
/// the first number.
const LAYER_COUNTER: &str = "echo written-before-checkpoint > /root/layer-file; \
    i=0; while :; do echo $i; echo $i > /root/count; i=$((i+1)); sleep 0.1; done";

/// A file of a CRI checkpoint archive's rootfs-diff.tar.
fn file_in_rootfs_diff(archive: &std::path::Path, path: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -xOf '{}' rootfs-diff.tar | tar -xzOf - '{path}'",
            archive.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{path} is not in the rootfs diff of {}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Restores the counter checkpointed in `archive` on `node`, in a new pod
/// `name`, as the kubelet does (CreateContainer whose image is the
/// archive, then StartContainer), and checks that it goes on from `frozen`
/// (the number the dump froze): its first new number is frozen + 1, its
/// writable layer is there, it runs in the new pod's network namespace.
/// Returns the pod and container ids.
fn restore_and_check(
    node: &CriHost,
    archive: &std::path::Path,
    name: &str,
    uid: &str,
    parent: &str,
    frozen: u64,
    old_id: &str,
) -> (String, String) {
    let pod_cfg = pod_config(name, uid, &node.logs(), parent);
    let pod = node.cri.run_pod(&pod_cfg, HANDLER);
    let ip = node.cri.pod_status(&pod).network.unwrap().ip;
    let cfg = container_config("counter", archive.to_str().unwrap(), &[]);
    let id = node
        .cri
        .try_create_container(&pod, &cfg, &pod_cfg)
        .unwrap_or_else(|e| {
            panic!(
                "CreateContainer from the archive: {}\n{}",
                e.message(),
                node.log_tail(30)
            )
        });
    assert_ne!(id, old_id, "the restored container reuses the old id");
    if let Err(e) = node.cri.try_start_container(&id) {
        panic!(
            "StartContainer (the restore): {}\n{}",
            e.message(),
            node.log_tail(30)
        );
    }
    let st = node.cri.container_status(&id);
    assert_eq!(st.state(), ContainerState::ContainerRunning);
    assert_eq!(
        st.annotations.get("restored").map(String::as_str),
        Some("true")
    );
    assert!(
        node.ferry_root().join(&id).exists(),
        "the restored container {id} is not Ferry's"
    );
    // The log: whatever CRI carried over from the archive, then the
    // restored counter from frozen + 1, every number once, in order.
    let log = std::path::PathBuf::from(&st.log_path);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let v = loop {
        let v = log_numbers(&log);
        if let Some(i) = v.iter().position(|n| *n == frozen + 1) {
            if v.len() >= i + 5 {
                break v[i..].to_vec();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restored counter never wrote {} then 4 more: {v:?}",
            frozen + 1
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_consecutive(&v.iter().map(|n| n - (frozen + 1)).collect::<Vec<_>>());
    // The writable layer came along.
    let (code, out, _) = node.cri.exec_sync(&id, &["cat", "/root/layer-file"], 10);
    assert_eq!((code, out.as_str()), (0, "written-before-checkpoint\n"));
    // It lives in the new pod's network namespace.
    let (code, out, _) = node
        .cri
        .exec_sync(&id, &["ip", "-4", "addr", "show", "eth0"], 10);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("{ip}/")),
        "the restored container is not on its new pod's address {ip}: {out}"
    );
    (pod, id)
}

#[test]
fn cri_checkpoints_a_running_counter_and_restores_it_here_and_on_host_b() {
    let hosts = Hosts::up(&format!("cri{}c", std::process::id() % 10000), "10.72.0");
    let a = CriHost::start(&hosts, "a", 1);
    let b = CriHost::start(&hosts, "b", 2);
    let parent = cgroup_parent("ckpt");
    let pod_cfg = pod_config("counter-pod", "uid-ckpt-1", &a.logs(), &parent);
    let pod = a.cri.run_pod(&pod_cfg, HANDLER);
    let cfg = container_config("counter", CRI_BUSYBOX_IMAGE, &["sh", "-c", LAYER_COUNTER]);
    let id = a.cri.create_container(&pod, &cfg, &pod_cfg);
    a.cri.start_container(&id);
    let log = std::path::PathBuf::from(a.cri.container_status(&id).log_path);
    wait_log_numbers(&log, 0, 5);

    // CheckpointContainer, as the kubelet's checkpoint API calls it.
    let archive = a.path().join("checkpoint-counter.tar");
    if let Err(e) = a.cri.checkpoint(&id, &archive) {
        panic!("CheckpointContainer: {}\n{}", e.message(), a.log_tail(30));
    }
    // The container keeps running, its counter without a gap.
    assert_eq!(
        a.cri.container_status(&id).state(),
        ContainerState::ContainerRunning
    );
    let n = log_numbers(&log).len();
    let v = wait_log_numbers(&log, n, 5);
    assert_consecutive(&v);
    // The archive has checkpointctl's layout, CRIU's images from Ferry.
    let out = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    for f in [
        "checkpoint/inventory.img",
        "checkpoint/pstree.img",
        "config.dump",
        "spec.dump",
        "status.dump",
        "rootfs-diff.tar",
    ] {
        assert!(
            list.lines().any(|l| l.trim_start_matches("./") == f),
            "no {f} in the archive:\n{list}"
        );
    }
    // `ferry inspect` reads it: the counter's process tree.
    let out = std::process::Command::new(ferry_bin())
        .args(["inspect"])
        .arg(&archive)
        .arg("ps")
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && ps.contains("echo written-before-checkpoint"),
        "ferry inspect ARCHIVE ps: {ps}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frozen: u64 = file_in_rootfs_diff(&archive, "root/count")
        .trim()
        .parse()
        .unwrap();

    // Restored in a new pod on the same node, while the original runs on.
    let (pod2, id2) = restore_and_check(
        &a,
        &archive,
        "counter-pod2",
        "uid-ckpt-2",
        &parent,
        frozen,
        &id,
    );
    // And on the second node, from its own copy of the archive.
    let archive_b = b.path().join("checkpoint-counter.tar");
    std::fs::copy(&archive, &archive_b).unwrap();
    let (pod3, id3) = restore_and_check(
        &b,
        &archive_b,
        "counter-pod3",
        "uid-ckpt-3",
        &parent,
        frozen,
        &id,
    );

    // The original went on all along.
    let n = log_numbers(&log).len();
    let v = wait_log_numbers(&log, n, 3);
    assert_consecutive(&v);
    for (node, pod, id) in [(&a, &pod, &id), (&a, &pod2, &id2), (&b, &pod3, &id3)] {
        node.cri.stop_container(id, 0);
        node.cri.remove_container(id);
        node.cri.stop_pod(pod);
        node.cri.remove_pod(pod);
    }
    a.assert_nothing_left(&parent);
    b.assert_nothing_left(&parent);
}

#[test]
fn cri_checkpoint_criu_refuses_says_why_and_the_container_runs_on() {
    let hosts = Hosts::up(&format!("cri{}f", std::process::id() % 10000), "10.73.0");
    let node = CriHost::start(&hosts, "a", 1);
    let parent = cgroup_parent("fail");
    let pod_cfg = pod_config("device-pod", "uid-fail-1", &node.logs(), &parent);
    let pod = node.cri.run_pod(&pod_cfg, HANDLER);
    // The counter holds /dev/loop-control open: a device CRIU cannot dump.
    let mut cfg = container_config(
        "counter",
        CRI_BUSYBOX_IMAGE,
        &["sh", "-c", &format!("exec 3</dev/loop-control; {COUNTER}")],
    );
    cfg.devices.push(k8s_cri::v1::Device {
        container_path: "/dev/loop-control".into(),
        host_path: "/dev/loop-control".into(),
        permissions: "rw".into(),
    });
    let id = node.cri.create_container(&pod, &cfg, &pod_cfg);
    node.cri.start_container(&id);
    let log = std::path::PathBuf::from(node.cri.container_status(&id).log_path);
    wait_log_numbers(&log, 0, 5);
    let archive = node.path().join("refused.tar");
    let e = node
        .cri
        .checkpoint(&id, &archive)
        .expect_err("CRIU dumped a process holding /dev/loop-control");
    eprintln!("the refusal: {}", e.message());
    assert!(
        e.message().contains("Can't dump file") && e.message().contains("chr"),
        "the error does not give CRIU's reason: {}",
        e.message()
    );
    // Still running, unharmed: thawed, counting on without a gap, exec works.
    assert_eq!(
        node.cri.container_status(&id).state(),
        ContainerState::ContainerRunning
    );
    let n = log_numbers(&log).len();
    let v = wait_log_numbers(&log, n, 5);
    assert_consecutive(&v);
    let (code, out, _) = node.cri.exec_sync(&id, &["echo", "alive"], 10);
    assert_eq!((code, out.as_str()), (0, "alive\n"));
    node.cri.stop_container(&id, 0);
    node.cri.remove_container(&id);
    node.cri.stop_pod(&pod);
    node.cri.remove_pod(&pod);
    node.assert_nothing_left(&parent);
}

#[test]
fn cri_sandboxer_shim_is_refused_with_the_fix() {
    let hosts = Hosts::up(&format!("cri{}s", std::process::id() % 10000), "10.75.0");
    let node = CriHost::start_with(&hosts, "a", 1, |config| {
        let podsandbox = "sandboxer = 'podsandbox'";
        assert!(
            config.contains(podsandbox),
            "hack/cri-host's config changed"
        );
        *config = config.replace(podsandbox, "sandboxer = 'shim'");
    });
    let parent = cgroup_parent("sandboxer");
    let pod_cfg = pod_config("sandboxed", "uid-sandboxer-1", &node.logs(), &parent);
    let e = node
        .cri
        .try_run_pod(&pod_cfg, HANDLER)
        .expect_err("a pod sandbox through the sandbox API ran");
    assert!(
        e.message().contains("no sandbox API") && e.message().contains("podsandbox"),
        "the refusal does not say why and what to do: {}",
        e.message()
    );
    assert!(node.cri.list_pods().is_empty());
    node.assert_nothing_left(&parent);
}
