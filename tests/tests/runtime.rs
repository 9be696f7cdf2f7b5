//! `ferry` as an OCI runtime, end to end, as root: the lifecycle of a
//! busybox container with each step checked, and bad input refused cleanly.

use std::time::Duration;

use ferry_tests::*;

fn unique(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

#[test]
fn busybox_lifecycle() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(tmp.path(), COUNTER);
    let count = bundle.join("rootfs/out/count");
    let id = unique("life");
    let b = bundle.to_str().unwrap();

    // The config says which runtime-spec it was written for (runc 1.3's
    // `runc spec` writes 1.2.1); the state must say the same.
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    spec["ociVersion"] = "1.2.1".into();
    std::fs::write(&config, spec.to_string()).unwrap();

    let pidfile = tmp.path().join("pid");
    root.ok(&[
        "create",
        "--bundle",
        b,
        "--pid-file",
        pidfile.to_str().unwrap(),
        &id,
    ]);
    assert_eq!(root.status(&id), "created");
    let state: serde_json::Value = serde_json::from_str(&root.ok(&["state", &id])).unwrap();
    let pid = state["pid"].as_i64().unwrap();
    // runtime-spec: the state's ociVersion is the one the container was
    // created with (its config's), as runc's `state` prints it.
    assert_eq!(state["ociVersion"], "1.2.1");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        pid.to_string()
    );
    assert!(numbers(&count).is_empty(), "the process ran before start");
    // The init leads its own session in its own pid namespace (CRIU needs both).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_eq!(fields[3], pid.to_string(), "init is its session's leader");
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap(),
        std::fs::read_link("/proc/self/ns/pid").unwrap()
    );

    root.ok(&["start", &id]);
    assert_eq!(root.status(&id), "running");
    wait_numbers(&count, 3);

    let out = root.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo hello from $(hostname) pid $$; ls /dev/fd/",
    ]);
    assert!(out.starts_with("hello from ferry pid "), "{out}");
    let fds: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(
        fds.len(),
        4,
        "the exec'd shell has only stdio (+ the ls dir fd): {fds:?}"
    );
    let code = root
        .ferry(&["exec", &id, "sh", "-c", "exit 3"])
        .status
        .code();
    assert_eq!(code, Some(3), "exec returns the process's exit code");

    let ps: Vec<i64> = serde_json::from_str(&root.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(ps.contains(&pid), "{ps:?}");
    let table = root.ok(&["ps", &id]);
    assert!(table.lines().next().unwrap().contains("PID"));
    assert!(table.contains(&pid.to_string()));

    root.ok(&["pause", &id]);
    assert_eq!(root.status(&id), "paused");
    let frozen = numbers(&count).len();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(numbers(&count).len(), frozen, "a paused container counted");
    root.ok(&["resume", &id]);
    assert_eq!(root.status(&id), "running");
    wait_numbers(&count, frozen + 3);

    let stats: serde_json::Value =
        serde_json::from_str(&root.ok(&["events", "--stats", &id])).unwrap();
    assert_eq!(stats["type"], "stats");
    assert!(
        stats["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{stats}"
    );
    root.ok(&["update", "--memory", "67108864", "--pids-limit", "50", &id]);
    let mem = std::fs::read_to_string(format!("/sys/fs/cgroup/memory/{id}/memory.limit_in_bytes"))
        .unwrap();
    assert_eq!(mem.trim(), "67108864");
    let pids = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/{id}/pids.max")).unwrap();
    assert_eq!(pids.trim(), "50");
    // Hybrid host: the container is in the unified and name=systemd
    // hierarchies too, as runc puts it.
    for h in ["unified", "systemd"] {
        let procs =
            std::fs::read_to_string(format!("/sys/fs/cgroup/{h}/{id}/cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "{h}: {procs}");
    }

    let listed: serde_json::Value =
        serde_json::from_str(&root.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["status"], "running");

    let err = root.fails(&["delete", &id]);
    assert!(err.contains("running"), "{err}");
    root.ok(&["kill", &id, "KILL"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while root.status(&id) != "stopped" {
        assert!(
            std::time::Instant::now() < deadline,
            "kill did not stop the container"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    root.ok(&["delete", &id]);
    assert!(root.ids().is_empty());
    assert_eq!(cgroup_leftovers(&id), Vec::<std::path::PathBuf>::new());
    assert!(!root.path().join(&id).exists());
}

#[test]
fn run_in_the_foreground_returns_the_exit_code() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(tmp.path(), &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    let id = unique("fg");
    let out = root.ferry(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    assert!(root.ids().is_empty(), "run removes the container");
    assert!(cgroup_leftovers(&id).is_empty());
}

#[test]
fn go_runc_single_dash_flags() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(tmp.path(), &["sleep", "30"]);
    let id = unique("dash");
    let pidfile = tmp.path().join("p");
    root.ok(&[
        "create",
        "-bundle",
        bundle.to_str().unwrap(),
        "-pid-file",
        pidfile.to_str().unwrap(),
        &id,
    ]);
    assert!(pidfile.exists());
    root.ok(&["delete", "-force", &id]);
}

#[test]
fn bad_input_is_refused_cleanly() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let id = unique("bad");

    let err = root.fails(&["create", "--bundle", "/nonexistent/bundle", &id]);
    assert!(
        err.contains("/nonexistent/bundle") && err.contains("does not exist"),
        "{err}"
    );

    let bundle = busybox_bundle(tmp.path(), &["sleep", "30"]);
    let config = bundle.join("config.json");
    let good = std::fs::read(&config).unwrap();
    std::fs::write(&config, b"{ not json").unwrap();
    let err = root.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(err.contains("config.json"), "{err}");
    std::fs::write(&config, &good).unwrap();

    std::fs::rename(bundle.join("rootfs"), bundle.join("rootfs.away")).unwrap();
    let err = root.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(
        err.contains("rootfs") && err.contains("does not exist"),
        "{err}"
    );
    std::fs::rename(bundle.join("rootfs.away"), bundle.join("rootfs")).unwrap();

    let err = root.fails(&["state", "no-such-container"]);
    assert!(
        err.contains("no-such-container") && err.contains("does not exist"),
        "{err}"
    );
    let err = root.fails(&["kill", "no-such-container"]);
    assert!(err.contains("does not exist"), "{err}");
    let err = root.fails(&["create", "--bundle", bundle.to_str().unwrap(), "../escape"]);
    assert!(err.contains("invalid container id"), "{err}");

    // Nothing half-made by the failures above.
    assert!(root.ids().is_empty());
    assert!(cgroup_leftovers(&id).is_empty());
    assert!(mount_leftovers(bundle.to_str().unwrap()).is_empty());

    root.ok(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    let err = root.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        root.status(&id),
        "created",
        "the first container is untouched"
    );
    root.remove(&id);
}

#[test]
fn hooks_run_with_the_state_on_stdin() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(tmp.path(), &["sleep", "30"]);
    let out = tmp.path().join("hooks");
    std::fs::create_dir(&out).unwrap();
    let hook = |name: &str| {
        serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/{name}.json", out.display())],
        })
    };
    edit_config(&bundle, |c| {
        c["hooks"] = serde_json::json!({
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")],
        });
    });
    let id = unique("hooks");
    root.ok(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("createRuntime.json")).unwrap()).unwrap();
    assert_eq!(state["id"], id.as_str());
    assert_eq!(state["status"], "creating");
    assert!(state["pid"].as_i64().unwrap() > 0);
    assert!(!out.join("poststart.json").exists());
    root.ok(&["start", &id]);
    assert!(out.join("poststart.json").exists());
    root.ok(&["delete", "--force", &id]);
    let stopped: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("poststop.json")).unwrap()).unwrap();
    assert_eq!(stopped["status"], "stopped");

    // A failing hook fails the create, and nothing is left.
    edit_config(&bundle, |c| {
        c["hooks"] = serde_json::json!({"createRuntime": [{"path": "/bin/false"}]});
    });
    let err = root.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(
        err.contains("error running hook /bin/false (createRuntime): exit status 1"),
        "{err}"
    );
    assert!(root.ids().is_empty());
    assert!(cgroup_leftovers(&id).is_empty());
}

#[test]
fn a_terminal_goes_to_the_console_socket() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(tmp.path(), &["sh", "-c", "echo hello-tty; tty; sleep 2"]);
    edit_config(&bundle, |c| c["process"]["terminal"] = true.into());
    let console = Console::listen(&tmp.path().join("console.sock"));
    let id = unique("tty");
    root.ok(&[
        "create",
        "--bundle",
        bundle.to_str().unwrap(),
        "--console-socket",
        console.path_str(),
        &id,
    ]);
    root.ok(&["start", &id]);
    let out = console.wait_for("its tty", |t| t.contains("/dev/pts/"));
    assert!(out.contains("hello-tty"), "{out:?}");
    assert!(
        out.contains("/dev/pts/0"),
        "the shell's stdin is the pty: {out:?}"
    );
    let err = root.fails(&[
        "create",
        "--bundle",
        bundle.to_str().unwrap(),
        &unique("tty2"),
    ]);
    assert!(err.contains("--console-socket"), "{err}");
}

/// linux.seccomp: the filter confines the container and what is exec'd in
/// it (mkdir denied, chmod denied only to mode 0777); a profile Ferry
/// cannot honour is refused by create with nothing left behind.
#[test]
fn a_seccomp_profile_confines_the_container_and_its_execs() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(
        tmp.path(),
        &[
            "sh",
            "-c",
            "mkdir /tmp/d 2>/out/mkdir.err; echo $? > /out/mkdir.rc; touch /out/f; \
             chmod 644 /out/f; echo $? > /out/chmod644.rc; \
             chmod 777 /out/f 2>/out/chmod777.err; echo $? > /out/chmod777.rc; sleep 30",
        ],
    );
    edit_config(&bundle, |c| c["linux"]["seccomp"] = seccomp_profile());
    let id = unique("seccomp");
    root.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    let out = bundle.join("rootfs/out");
    wait_file(&out.join("chmod777.rc"));
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    assert_eq!(read("mkdir.rc").trim(), "1");
    assert!(
        read("mkdir.err").contains("Operation not permitted"),
        "{}",
        read("mkdir.err")
    );
    assert_eq!(
        read("chmod644.rc").trim(),
        "0",
        "a chmod the profile allows failed"
    );
    assert_eq!(read("chmod777.rc").trim(), "1");
    assert!(
        read("chmod777.err").contains("Permission denied"),
        "{}",
        read("chmod777.err")
    );
    assert_eq!(seccomp_mode(root.pid(&id)), "2", "the init is not filtered");
    // An exec'd process gets the container's filter too.
    let exec = root.ferry(&["exec", &id, "mkdir", "/tmp/from-exec"]);
    assert!(!exec.status.success(), "mkdir through exec was allowed");
    root.ok(&["delete", "--force", &id]);

    // SCMP_ACT_NOTIFY needs a seccomp agent: refused, nothing made.
    edit_config(&bundle, |c| {
        c["linux"]["seccomp"]["syscalls"][0]["action"] = "SCMP_ACT_NOTIFY".into()
    });
    let id = unique("seccomp-notify");
    let err = root.fails(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(err.contains("SCMP_ACT_NOTIFY"), "{err}");
    assert!(root.ids().is_empty());
    assert!(cgroup_leftovers(&id).is_empty());
}

/// A container in a user namespace: its root is a mapped host id, a bind
/// source under a directory only the host's root may enter is still
/// mounted (the runtime clones it before the init enters the namespace),
/// exec joins the
/// namespace, and a checkpoint is refused before anything freezes.
#[test]
fn a_user_namespace_container_runs_as_its_mapped_root() {
    const HOST_ROOT: u32 = 200_000;
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(
        tmp.path(),
        &[
            "sh",
            "-c",
            "cat /secret/f > /out/read; id -u > /out/uid; sleep 30",
        ],
    );
    // The source is readable, the directory above it is not: only the
    // host's root can reach it by path.
    let hidden = tmp.path().join("hidden");
    let secret = hidden.join("dir");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("f"), "for root only\n").unwrap();
    std::fs::set_permissions(&hidden, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let chown = std::process::Command::new("chown")
        .args(["-R", &format!("{HOST_ROOT}:{HOST_ROOT}")])
        .arg(bundle.join("rootfs"))
        .status()
        .unwrap();
    assert!(chown.success());
    edit_config(&bundle, |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
        let map = serde_json::json!([{"containerID": 0, "hostID": HOST_ROOT, "size": 65536}]);
        c["linux"]["uidMappings"] = map.clone();
        c["linux"]["gidMappings"] = map;
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "source": secret, "destination": "/secret", "options": ["bind", "ro"]
        }));
    });
    let id = unique("userns");
    root.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    let out = bundle.join("rootfs/out");
    wait_file(&out.join("uid"));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        std::fs::read_to_string(out.join("read")).unwrap(),
        "for root only\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("uid")).unwrap().trim(),
        "0"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", root.pid(&id))).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some(HOST_ROOT.to_string().as_str()),
        "the host sees the mapped id: {uid_line}"
    );
    assert_eq!(root.ok(&["exec", &id, "id", "-u"]).trim(), "0");

    let images = tmp.path().join("images");
    let err = root.fails(&["checkpoint", "--image-path", images.to_str().unwrap(), &id]);
    assert!(err.contains("user namespace"), "{err}");
    assert_eq!(root.status(&id), "running");
    root.ok(&["delete", "--force", &id]);
    assert!(cgroup_leftovers(&id).is_empty());
}

/// `run --preserve-fds N` hands the caller's fds 3..3+N to the container's
/// process (runc's flag; runc's suite checks it only for exec).
#[test]
fn run_preserves_the_fds_it_is_told_to() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(
        tmp.path(),
        &[
            "sh",
            "-c",
            "if echo through fd 4 2>/dev/null >&4; then echo open; else echo closed; fi",
        ],
    );
    let run = |n: u32, got: &std::path::Path, id: &str| {
        // fds 3 and 4 are open in the caller.
        let script = format!(
            "exec 3</dev/null 4>{got}; {ferry} --root {root} run --preserve-fds {n} --bundle {b} {id}",
            got = got.display(),
            ferry = ferry_bin().display(),
            root = root.path().display(),
            b = bundle.display(),
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let got = tmp.path().join("fd4");
    assert_eq!(run(2, &got, &unique("preserve2")), "open");
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "through fd 4\n");
    let got = tmp.path().join("fd4-not");
    assert_eq!(run(1, &got, &unique("preserve1")), "closed");
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "");
}
