//! containerd-shim-ferry-v2 under containerd 2.1's CRI plugin, driven as
//! the kubelet drives it (tests/src/cri.rs): a node's containerd runs in a
//! host of hack/hosts with the `ferry` RuntimeClass handler
//! (hack/cri-host), its images imported locally (no registry).
//!
//! - a pod (its sandbox on the ferry shim) with a counter container: the
//!   counter's output reaches the CRI log, ExecSync runs in the container
//!   (in the pod's network and UTS namespaces) and returns its output and
//!   exit code, ContainerStatus follows it, StopContainer, RemoveContainer,
//!   StopPodSandbox and RemovePodSandbox leave no shim, Ferry state, mount
//!   or cgroup behind.

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
