//! hack/demo-cri's flow: two Kubernetes nodes (containerd 2.1 with CRI and
//! Ferry's shim as RuntimeClass handler `ferry`, in hosts A and B of
//! hack/hosts), driven over CRI as the kubelet drives them: a counter pod on
//! A, its logs and an ExecSync, a CheckpointContainer (the kubelet's
//! checkpoint API) while it runs, `ferry inspect` of the archive, then the
//! archive restored into a new pod on B, where the counter goes on.
//!
//! Run by hack/demo-cri (as root, after hack/setup; FERRY_BIN names the
//! ferry binary whose directory holds containerd-shim-ferry-v2).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ferry_tests::cri::*;
use ferry_tests::{ferry_bin, Hosts};

const COUNTER: &str = "echo hello-from-node-a > /root/note; \
    i=0; while :; do echo $i; echo $i > /root/count; i=$((i+1)); sleep 0.2; done";

fn step(s: &str) {
    println!("\n\x1b[1m==> {s}\x1b[0m");
}

fn tail(log: &std::path::Path, n: usize) -> String {
    let v = log_numbers(log);
    let s: Vec<String> = v[v.len().saturating_sub(n)..]
        .iter()
        .map(u64::to_string)
        .collect();
    s.join(" ")
}

fn main() {
    step(
        "two Kubernetes nodes: containerd 2.1 with CRI, handler `ferry` -> io.containerd.ferry.v2",
    );
    let hosts = Hosts::up("ferry-cri", "10.74.0");
    let a = CriHost::start(&hosts, "a", 1);
    let b = CriHost::start(&hosts, "b", 2);
    let v = a.cri.version();
    println!(
        "node A ({}): {} {} (CRI {}), config {}",
        a.netns,
        v.runtime_name,
        v.runtime_version,
        v.runtime_api_version,
        a.path().join("config.toml").display()
    );
    println!(
        "node B ({}): the same, its own root, state and socket",
        b.netns
    );
    let parent = "/ferry-cri-demo";

    step("RunPodSandbox + CreateContainer + StartContainer on node A");
    let pod_cfg = pod_config("counter", "demo-uid-a", &a.logs(), parent);
    let pod = a.cri.run_pod(&pod_cfg, HANDLER);
    let ip = a.cri.pod_status(&pod).network.unwrap().ip;
    let cfg = container_config("counter", CRI_BUSYBOX_IMAGE, &["sh", "-c", COUNTER]);
    let id = a.cri.create_container(&pod, &cfg, &pod_cfg);
    a.cri.start_container(&id);
    let log = PathBuf::from(a.cri.container_status(&id).log_path);
    println!("pod {} at {ip}, container {}", &pod[..12], &id[..12]);
    wait_log_numbers(&log, 0, 8);
    println!("its CRI log ({}): ... {}", log.display(), tail(&log, 8));
    let (code, out, _) = a
        .cri
        .exec_sync(&id, &["sh", "-c", "hostname; cat /root/note"], 10);
    println!("ExecSync `hostname; cat /root/note`: exit {code}, {out:?}");

    step("CheckpointContainer (what the kubelet's checkpoint API calls)");
    let archive = a.path().join("checkpoint-counter.tar");
    a.cri
        .checkpoint(&id, &archive)
        .unwrap_or_else(|e| panic!("CheckpointContainer: {}", e.message()));
    println!(
        "{} ({} KiB); the container runs on: {:?}",
        archive.display(),
        std::fs::metadata(&archive).unwrap().len() / 1024,
        a.cri.container_status(&id).state()
    );
    std::thread::sleep(Duration::from_secs(1));
    println!("its log goes on: ... {}", tail(&log, 5));

    step("ferry inspect ARCHIVE");
    let out = Command::new(ferry_bin())
        .arg("inspect")
        .arg(&archive)
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));

    step("on node B: a new pod, CreateContainer whose image is the archive, StartContainer");
    let archive_b = b.path().join("checkpoint-counter.tar");
    std::fs::copy(&archive, &archive_b).unwrap();
    let pod_b_cfg = pod_config("counter-restored", "demo-uid-b", &b.logs(), parent);
    let pod_b = b.cri.run_pod(&pod_b_cfg, HANDLER);
    let ip_b = b.cri.pod_status(&pod_b).network.unwrap().ip;
    let cfg_b = container_config("counter", archive_b.to_str().unwrap(), &[]);
    let id_b = b.cri.create_container(&pod_b, &cfg_b, &pod_b_cfg);
    b.cri.start_container(&id_b);
    let st = b.cri.container_status(&id_b);
    let log_b = PathBuf::from(&st.log_path);
    println!(
        "pod {} at {ip_b}, container {}: {:?}, annotations restored={} checkpointedAt={}",
        &pod_b[..12],
        &id_b[..12],
        st.state(),
        st.annotations.get("restored").cloned().unwrap_or_default(),
        st.annotations
            .get("checkpointedAt")
            .cloned()
            .unwrap_or_default()
    );
    std::thread::sleep(Duration::from_secs(2));
    println!("its CRI log: ... {}", tail(&log_b, 10));
    let (code, out, _) = b.cri.exec_sync(
        &id_b,
        &["sh", "-c", "cat /root/note; ip -4 -o addr show eth0"],
        10,
    );
    println!("ExecSync on B: exit {code}, {out:?}");

    step("stop and remove everything (StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox)");
    for (node, pod, id) in [(&a, &pod, &id), (&b, &pod_b, &id_b)] {
        node.cri.stop_container(id, 0);
        node.cri.remove_container(id);
        node.cri.stop_pod(pod);
        node.cri.remove_pod(pod);
    }
    a.assert_nothing_left(parent);
    b.assert_nothing_left(parent);
    println!("done: no shim, Ferry state, mount or pod cgroup left on either node");
}
