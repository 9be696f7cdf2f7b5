//! Ferry under dockerd, as root: dockerd 20.10 (Debian's docker.io) runs in
//! a network namespace of its own with `--add-runtime ferry=<ferry>`, and a
//! busybox image imported from a tarball (no registry).
//!
//! - containers run with ferry: output, exec, stop, rm, nothing left;
//! - with `--experimental`: `docker checkpoint create` and `docker start
//!   --checkpoint` continue a counter;
//! - WITHOUT `--experimental`, on two dockerds, by hand: `ferry checkpoint
//!   --docker NAME --export FILE.zst` on one (the container stops),
//!   `ferry restore --docker --import FILE.zst` on the other (and again
//!   under another `--name`); the counter continues in both.
//!
//! The dockerd harness is ferry_tests::Dockerd (tests/src/docker.rs).

use ferry_tests::*;
use std::process::Command;

#[test]
fn docker_runs_execs_stops_and_removes_containers_with_ferry() {
    let d = Dockerd::start("r", false);
    let out = d.ok(&[
        "run",
        "--rm",
        "--runtime",
        "ferry",
        "busybox:ferry",
        "sh",
        "-c",
        "echo hello from ferry",
    ]);
    assert_eq!(out, "hello from ferry");
    let id = d.run_counter("counter");
    d.wait_logs(&id, 3);
    let state: serde_json::Value =
        serde_json::from_str(&Root::ferry_at(&d.runtime_root(), &["state", &id])).unwrap();
    assert_eq!(
        state["status"], "running",
        "ferry runs the container: {state}"
    );
    // Under docker's default seccomp profile.
    let pid = state["pid"].as_u64().unwrap() as u32;
    assert_eq!(
        seccomp_mode(pid),
        "2",
        "docker's seccomp profile is not loaded"
    );
    assert_eq!(
        d.ok(&["exec", &id, "sh", "-c", "echo exec works"]),
        "exec works"
    );
    d.ok(&["stop", "-t", "1", &id]);
    d.ok(&["rm", &id]);
    assert!(
        cgroup_leftovers(&format!("docker/{id}")).is_empty(),
        "cgroups left"
    );
    let left: Vec<_> = std::fs::read_dir(d.runtime_root())
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "state left under the runtime root: {left:?}"
    );
}

#[test]
fn experimental_docker_checkpoint_and_start_from_it() {
    let d = Dockerd::start("x", true);
    let id = d.run_counter("counter");
    d.wait_logs(&id, 5);
    d.ok(&["checkpoint", "create", &id, "cp1"]);
    let before = d.log_numbers(&id);
    let out = d.docker(&["start", "--checkpoint", "cp1", &id]);
    if !out.status.success() {
        // dockerd 20.10 uploads the checkpoint it kept back into its
        // containerd's content store, where `checkpoint create` left the
        // same blob (containerd collects it only at its next garbage
        // collection), and fails on "already exists" (moby#42900, a
        // dockerd bug whatever the runtime; the faster the checkpoint,
        // the likelier). The known workaround: remove the stale blob.
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let digest = err
            .split_once("content sha256:")
            .and_then(|(_, rest)| rest.split_once(": already exists"))
            .map(|(hex, _)| format!("sha256:{hex}"))
            .unwrap_or_else(|| panic!("docker start --checkpoint: {err}"));
        let sock = d.path().join("exec/containerd/containerd.sock");
        let rm = Command::new("ctr")
            .arg("--address")
            .arg(&sock)
            .args(["-n", "moby", "content", "rm", &digest])
            .output()
            .unwrap();
        assert!(rm.status.success(), "ctr content rm {digest}: {rm:?}");
        d.ok(&["start", "--checkpoint", "cp1", &id]);
    }
    let after = d.wait_logs(&id, before.len() + 10);
    assert_consecutive(&after);
    d.ok(&["rm", "-f", &id]);
}

#[test]
fn checkpoint_and_restore_across_dockerds_without_experimental() {
    let a = Dockerd::start("a", false);
    let b = Dockerd::start("b", false);
    a.fails(&["checkpoint", "create", "x", "y"]);

    let src = a.run_counter("mover");
    a.wait_logs(&src, 5);
    // One file, zstd-compressed because of its name.
    let archive = a.path().join("mover.tar.zst");
    let out = a.ferry(&[
        "checkpoint",
        "--docker",
        "mover",
        "--export",
        archive.to_str().unwrap(),
        "--docker-host",
        &a.host_arg(),
    ]);
    assert!(
        out.status.success(),
        "ferry checkpoint --docker: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(archive.is_file(), "no archive at {}", archive.display());
    let head = std::fs::read(&archive).unwrap();
    assert_eq!(
        head.get(..4),
        Some(&[0x28, 0xb5, 0x2f, 0xfd][..]),
        "{} is not zstd",
        archive.display()
    );
    // It stopped, as after runc checkpoint.
    assert_ne!(a.state(&src), "running");
    assert!(!a.running_names().contains(&"mover".to_string()));
    let before = a.log_numbers(&src);
    assert_consecutive(&before);
    let k = *before.last().unwrap();
    assert!(
        !a.runtime_state().contains(&src),
        "ferry state of the checkpointed container left: {:?}",
        a.runtime_state()
    );

    let restore = |d: &Dockerd, extra: &[&str]| -> String {
        let mut args = vec![
            "restore",
            "--docker",
            "--import",
            archive.to_str().unwrap(),
            "--docker-host",
        ];
        let host = d.host_arg();
        args.push(&host);
        args.extend_from_slice(extra);
        let out = d.ferry(&args);
        assert!(
            out.status.success(),
            "ferry restore --docker {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let continues = |d: &Dockerd, id: &str| {
        let after = d.wait_logs(id, 10);
        let expected: Vec<u64> = (k + 1..k + 1 + after.len() as u64).collect();
        assert_eq!(after, expected, "the restored container continues from {k}");
    };

    // On B, under the same name.
    let dst = restore(&b, &[]);
    let full = b.id("mover");
    assert!(
        dst.len() >= 12 && full.starts_with(&dst),
        "restore printed {dst:?}, not the new container's id {full}"
    );
    let dst = full;
    assert_eq!(b.state(&dst), "running");
    continues(&b, &dst);
    assert_eq!(b.ok(&["exec", "mover", "sh", "-c", "echo hi"]), "hi");
    b.ok(&["stop", "-t", "1", &dst]);
    b.ok(&["rm", &dst]);
    assert!(
        b.runtime_state().is_empty(),
        "state left under B's runtime root: {:?}",
        b.runtime_state()
    );

    // The same archive on A again, under another name (A still holds the
    // stopped "mover").
    let again = restore(&a, &["--name", "mover2"]);
    let full = a.id("mover2");
    assert!(
        again.len() >= 12 && full.starts_with(&again),
        "restore printed {again:?}, not the new container's id {full}"
    );
    let again = full;
    assert_ne!(again, src);
    assert_eq!(a.state(&again), "running");
    continues(&a, &again);
    a.ok(&["rm", "-f", &again]);
    assert!(
        !a.runtime_state().contains(&again),
        "state left under A's runtime root: {:?}",
        a.runtime_state()
    );
}
