//! `ferry checkpoint` and `ferry restore`, end to end against real CRIU,
//! on containers ferry runs: the counter continues exactly, a
//! --leave-running clone runs beside its original, 256 MiB of patterned
//! memory survive, an established TCP connection survives, a bind mount
//! through a symlink stays inside the rootfs and is restored there, bad
//! input is refused with nothing left behind, and so is a restore that
//! fails once its network namespace exists (or is locked); a process that
//! lives inside vfork is checkpointed between its vforks.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_tests::*;

fn unique(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn wait_stopped_or_gone(root: &Root, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while root.ids().contains(&id.to_string()) && root.status(id) != "stopped" {
        assert!(Instant::now() < deadline, "{id} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ferry restore -d --image-path IMAGES --bundle BUNDLE ID`, which must
/// succeed: its stdout.
fn restore_detached(root: &Root, images: &Path, bundle: &Path, id: &str) -> String {
    root.ok(&[
        "restore",
        "-d",
        "--image-path",
        s(images),
        "--bundle",
        s(bundle),
        id,
    ])
}

#[test]
fn counter_continues_after_restore_under_a_new_id() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(tmp.path(), COUNTER);
    let (a, b) = (unique("cra"), unique("crb"));
    root.ok(&["run", "-d", "--bundle", s(&bundle), &a]);
    wait_numbers(&bundle.join("rootfs/out/count"), 5);

    // What the container wrote into its /dev and /dev/shm (tmpfs mounts
    // Ferry copies itself), and how they are mounted.
    root.ok(&[
        "exec",
        &a,
        "sh",
        "-c",
        "echo kept > /dev/shm/marker && chmod 640 /dev/shm/marker && ln -s null /dev/mylink",
    ]);
    let dev_mounts = |id: &str| -> Vec<String> {
        let mi = std::fs::read_to_string(format!("/proc/{}/mountinfo", root.pid(id))).unwrap();
        mi.lines()
            .filter(|l| matches!(l.split(' ').nth(4), Some("/dev" | "/dev/shm")))
            // Mount options and what follows the separator, ids aside.
            .map(|l| l.split(' ').skip(3).collect::<Vec<_>>().join(" "))
            .map(|l| l.split_once(' ').unwrap().1.replace(" - ", " "))
            .collect()
    };
    let dev_before = dev_mounts(&a);
    assert_eq!(dev_before.len(), 2, "{dev_before:?}");

    let images = tmp.path().join("images");
    root.ok(&["checkpoint", "--image-path", s(&images), &a]);
    assert!(!root.ids().contains(&a), "checkpoint removes the container");
    assert!(cgroup_leftovers(&a).is_empty());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&images).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(images.join("dump.log").exists(), "CRIU's log is kept");
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(images.join("stats-dump.json")).unwrap()).unwrap();
    assert!(
        stats["criu"]["pages_written"].as_u64().unwrap() > 0,
        "{stats}"
    );

    let copy = tmp.path().join("copy");
    copy_bundle(&bundle, &copy);
    let count = copy.join("rootfs/out/count");
    let before = numbers(&count);
    assert_consecutive(&before);
    let out = root.ok(&[
        "restore",
        "-d",
        "--print-stats",
        "--image-path",
        s(&images),
        "--bundle",
        s(&copy),
        &b,
    ]);
    assert!(out.contains("pages restored"), "{out}");
    assert_eq!(root.status(&b), "running");
    // Its tasks all sat in its own cgroup: CRIU left them where criu was
    // placed (cgroup mode `ignore`) rather than move them there again.
    let log = std::fs::read_to_string(images.join("restore.log")).unwrap();
    assert!(!log.contains("cg: Move into"), "CRIU moved the tasks");
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", root.pid(&b))).unwrap();
    assert!(
        cgroups.lines().all(|l| l.ends_with(&format!("/{b}"))),
        "the restored init is not in its cgroups: {cgroups}"
    );
    let after = wait_numbers(&count, before.len() + 10);
    assert_consecutive(&after);
    // The original bundle saw nothing of the clone.
    assert_eq!(numbers(&bundle.join("rootfs/out/count")), before);
    // Masked directories (runc's default spec masks /sys/firmware) were
    // external to CRIU and are bound again from an empty directory: still
    // empty, still read-only. /dev's tmpfs is Ferry's to copy (below).
    let listed = root.ok(&["exec", &b, "ls", "-A", "/sys/firmware"]);
    assert_eq!(listed.trim(), "", "a masked directory shows something");
    let err = root.fails(&["exec", &b, "touch", "/sys/firmware/x"]);
    assert!(err.contains("Read-only file system"), "{err}");
    let tmpfs_images = std::fs::read_dir(&images)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("tmpfs-dev-")
        })
        .count();
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", root.pid(&b))).unwrap();
    let firmware = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/sys/firmware"))
        .unwrap_or_else(|| panic!("/sys/firmware is not masked: {mountinfo}"));
    assert!(
        !firmware.contains(" - tmpfs ") && firmware.contains("masked-empty"),
        "not bound from the empty dir: {firmware}"
    );
    // On a cgroup v1 host the spec's cgroup mount is a tmpfs holding a
    // directory per hierarchy with the container's cgroup bound on each:
    // external too, made anew on restore, the binds on it again.
    let v1_host = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(" - cgroup ");
    let cgroup_tmpfs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(images.join("ferry-cgroup-tmpfs.json")).unwrap())
            .unwrap();
    assert_eq!(
        cgroup_tmpfs.as_array().unwrap().len(),
        usize::from(v1_host),
        "{cgroup_tmpfs}"
    );
    if v1_host {
        let cg = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup"))
            .unwrap();
        assert!(cg.contains(" - tmpfs "), "{cg}");
        let listed = root.ok(&["exec", &b, "ls", "/sys/fs/cgroup"]);
        let dirs: Vec<&str> = listed.split_whitespace().collect();
        assert_eq!(
            serde_json::json!(dirs),
            cgroup_tmpfs[0]["dirs"],
            "the restored tmpfs holds what the dumped one did"
        );
        let procs = root.ok(&["exec", &b, "cat", "/sys/fs/cgroup/pids/cgroup.procs"]);
        // Pids as its namespace sees them: the init is 1.
        assert!(
            procs.lines().any(|l| l.trim() == "1"),
            "the restored init is not in the pids cgroup bound there: {procs}"
        );
    }
    // The runtime's tmpfs mounts were Ferry's to copy, not CRIU's to tar:
    // the restored ones are mounted as they were, with what they held.
    let tmpfs_mounts: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.contains(" - tmpfs ") && l.split(' ').nth(4) != Some("/sys/fs/cgroup"))
        .map(|l| l.split(' ').nth(4).unwrap())
        .collect();
    let copied: serde_json::Value =
        serde_json::from_slice(&std::fs::read(images.join("ferry-tmpfs.json")).unwrap()).unwrap();
    let copied: Vec<&str> = copied
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["mountpoint"].as_str().unwrap())
        .collect();
    assert_eq!(copied, tmpfs_mounts, "not every tmpfs mount was copied");
    assert_eq!(tmpfs_images, 0, "CRIU still tarred a tmpfs");
    assert_eq!(
        dev_mounts(&b),
        dev_before,
        "/dev or /dev/shm mounted otherwise"
    );
    let listed = root.ok(&[
        "exec",
        &b,
        "sh",
        "-c",
        "cat /dev/shm/marker; stat -c '%a %F' /dev/shm/marker /dev/null; readlink /dev/mylink",
    ]);
    assert_eq!(
        listed, "kept\n640 regular file\n666 character special file\nnull\n",
        "/dev or /dev/shm lost something"
    );
    root.remove(&b);
}

/// A container with a terminal: its console's master is outside the dumped
/// tree (held by whoever got it over the console socket). CRIU dumps the
/// unpaired slave (orphan_pts_master), and restore makes a new pair whose
/// master goes to the console socket given to restore.
#[test]
fn a_terminal_container_is_checkpointed_and_restored_onto_a_new_console() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(
        tmp.path(),
        &[
            "sh",
            "-c",
            "tty > /out/tty; i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done",
        ],
    );
    edit_config(&bundle, |c| c["process"]["terminal"] = true.into());
    let id = unique("crtty");
    let first = Console::listen(&tmp.path().join("first.sock"));
    root.ok(&[
        "run",
        "-d",
        "--bundle",
        s(&bundle),
        "--console-socket",
        first.path_str(),
        &id,
    ]);
    first.wait_for("ten numbers", |_| first.numbers().len() >= 10);

    let images = tmp.path().join("images");
    root.ok(&["checkpoint", "--image-path", s(&images), &id]);
    assert!(
        !root.ids().contains(&id),
        "checkpoint removes the container"
    );
    // The container is gone, so the first console's slave closed.
    let before = first.finish();
    assert_consecutive(&before);

    // Without a console socket, restore says what it needs and restores nothing.
    let err = root.fails(&[
        "restore",
        "-d",
        "--image-path",
        s(&images),
        "--bundle",
        s(&bundle),
        &id,
    ]);
    assert!(err.contains("--console-socket"), "{err}");
    assert!(!root.ids().contains(&id), "a refused restore left {id}");

    let second = Console::listen(&tmp.path().join("second.sock"));
    root.ok(&[
        "restore",
        "-d",
        "--image-path",
        s(&images),
        "--bundle",
        s(&bundle),
        "--console-socket",
        second.path_str(),
        &id,
    ]);
    assert_eq!(root.status(&id), "running");
    second.wait_for("ten more numbers", |_| second.numbers().len() >= 10);
    let after = second.numbers();
    let last = *before.last().unwrap();
    assert!(
        after[0] == last + 1,
        "the restored counter printed {after:?} after {last}: not where it stopped"
    );
    assert_continuous(&after);
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/out/tty"))
            .unwrap()
            .trim(),
        "/dev/pts/0"
    );
    root.remove(&id);
}

/// A container under a seccomp filter: CRIU dumps the filter with the
/// tasks and restores it, so the restored counter is as confined as the
/// original (its mkdir still denied, /proc says it is filtered).
#[test]
fn a_seccomp_filter_survives_checkpoint_and_restore() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(
        tmp.path(),
        &[
            "sh",
            "-c",
            "i=0; while :; do if mkdir /tmp/d$i 2>/dev/null; then r=made; else r=denied; fi; \
             echo $i $r >> /out/count; i=$((i+1)); sleep 0.05; done",
        ],
    );
    edit_config(&bundle, |c| c["linux"]["seccomp"] = seccomp_profile());
    let id = unique("crseccomp");
    root.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    let count = bundle.join("rootfs/out/count");
    wait_numbers(&count, 5);
    let images = tmp.path().join("images");
    root.ok(&["checkpoint", "--image-path", s(&images), &id]);
    let before = numbers(&count);
    restore_detached(&root, &images, &bundle, &id);
    let after = wait_numbers(&count, before.len() + 10);
    assert_consecutive(&after);
    let text = std::fs::read_to_string(&count).unwrap();
    assert!(
        text.lines().all(|l| l.ends_with(" denied")),
        "a mkdir got through the filter:\n{text}"
    );
    assert_eq!(
        seccomp_mode(root.pid(&id)),
        "2",
        "the restored init is not filtered"
    );
    root.ok(&["delete", "--force", &id]);
}

#[test]
fn a_leave_running_clone_runs_beside_its_original() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(tmp.path(), COUNTER);
    let (a, b) = (unique("lra"), unique("lrb"));
    root.ok(&["run", "-d", "--bundle", s(&bundle), &a]);
    let orig = bundle.join("rootfs/out/count");
    wait_numbers(&orig, 5);
    // Paused, the rootfs copy matches the memory image exactly.
    root.ok(&["pause", &a]);
    let images = tmp.path().join("images");
    root.ok(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        s(&images),
        &a,
    ]);
    let copy = tmp.path().join("copy");
    copy_bundle(&bundle, &copy);
    root.ok(&["resume", &a]);
    assert_eq!(root.status(&a), "running");
    let k = numbers(&orig).len();

    restore_detached(&root, &images, &copy, &b);
    let clone = copy.join("rootfs/out/count");
    assert_consecutive(&wait_numbers(&clone, k + 10));
    assert_consecutive(&wait_numbers(&orig, k + 10));
    assert_eq!(root.status(&a), "running");
    assert_eq!(root.status(&b), "running");
}

/// A process that is inside a vfork 80% of the time (tests/fixtures/
/// vforker.c) is checkpointed every time: CRIU cannot stop a process
/// waiting on its vfork child (it fails after its 10 s timeout), so Ferry
/// freezes the container between vforks. Paused inside one, the
/// checkpoint is refused at once and the container stays paused.
#[test]
fn a_process_inside_vfork_is_checkpointed_between_vforks() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(tmp.path(), &["/vforker", "/out/count"]);
    static_program("vforker", &bundle.join("rootfs/vforker"));
    let id = unique("vfork");
    root.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    let count = bundle.join("rootfs/out/count");
    wait_numbers(&count, 3);
    let init = root.pid(&id);

    // Five times in a row: CRIU alone gets 1 in 5 (0.2^5 for all five).
    for i in 0..5 {
        let images = tmp.path().join(format!("running-{i}"));
        root.ok(&[
            "checkpoint",
            "--leave-running",
            "--image-path",
            s(&images),
            &id,
        ]);
        assert_eq!(root.status(&id), "running");
    }

    // Paused while its child sleeps in the vfork (a vfork child is the
    // only child it ever has, and it is reaped at once).
    let in_vfork = || {
        std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
            .map(|c| !c.trim().is_empty())
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        root.ok(&["pause", &id]);
        if in_vfork() {
            break;
        }
        root.ok(&["resume", &id]);
        assert!(Instant::now() < deadline, "never paused inside a vfork");
        std::thread::sleep(Duration::from_millis(7));
    }
    let images = tmp.path().join("paused");
    let err = root.fails(&["checkpoint", "--image-path", s(&images), &id]);
    assert!(err.contains("vfork child"), "{err}");
    assert!(err.contains("stays paused"), "{err}");
    assert_eq!(root.status(&id), "paused");
    root.ok(&["resume", &id]);

    // Dumped for real (the tasks killed) and restored: it counts on.
    let k = wait_numbers(&count, numbers(&count).len() + 2).len();
    let images = tmp.path().join("final");
    root.ok(&["checkpoint", "--image-path", s(&images), &id]);
    restore_detached(&root, &images, &bundle, &id);
    assert_consecutive(&wait_numbers(&count, k + 10));
    root.ok(&["delete", "--force", &id]);
}

#[test]
fn patterned_memory_survives() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let script = r#"
import zlib, time
N = 256 << 20
m = bytearray(range(256)) * (N // 256)
want = zlib.crc32(m)
i = 0
f = open('/out/mem', 'a')
while True:
    f.write(('ok %d\n' if zlib.crc32(m) == want else 'BAD %d\n') % i)
    f.flush()
    i += 1
    time.sleep(0.1)
"#;
    let bundle = python_bundle(tmp.path(), script);
    let id = unique("mem");
    root.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    let mem = bundle.join("rootfs/out/mem");
    let lines = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(&mem).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the memory checker did not start: {:?}",
            lines(&mem)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let images = tmp.path().join("images");
    root.ok(&["checkpoint", "--image-path", s(&images), &id]);
    let pages: u64 = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        pages >= 256 << 20,
        "only {pages} bytes of pages were dumped"
    );
    let n = lines(&mem).len();
    // runc's --auto-dedup: CRIU punches the page data out of the images
    // as it restores it (what a migration's destination does with its
    // images tmpfs).
    root.ok(&[
        "restore",
        "-d",
        "--auto-dedup",
        "--image-path",
        s(&images),
        "--bundle",
        s(&bundle),
        &id,
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(&mem).len() < n + 3 {
        assert!(Instant::now() < deadline, "the restored checker is silent");
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = lines(&mem);
    for (i, l) in all.iter().enumerate() {
        assert_eq!(l, &format!("ok {i}"), "memory check {i} after restore");
    }
    use std::os::unix::fs::MetadataExt;
    let held: u64 = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().blocks() * 512)
        .sum();
    assert!(
        held < 16 << 20,
        "--auto-dedup left {held} of {pages} bytes of pages allocated"
    );
}

#[test]
fn an_established_tcp_connection_survives() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let net = NetPair::new(&format!("t{}", std::process::id() % 100000), "10.79.0");
    // The server: one connection, answers `ping N` with `pong N` and
    // records the numbers it saw.
    let seen: Arc<Mutex<Vec<u64>>> = Default::default();
    let accepted = Arc::new(Mutex::new(0));
    let (seen2, acc2) = (seen.clone(), accepted.clone());
    let listener = net
        .in_srv(|| TcpListener::bind("10.79.0.1:9000").unwrap())
        .join()
        .unwrap();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        *acc2.lock().unwrap() += 1;
        let mut w = s.try_clone().unwrap();
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { break };
            let n: u64 = line.trim_start_matches("ping ").parse().unwrap();
            seen2.lock().unwrap().push(n);
            if writeln!(w, "pong {n}").is_err() {
                break;
            }
        }
    });
    let script = r#"
import socket, time
s = socket.create_connection(('10.79.0.1', 9000))
f = s.makefile('rw')
o = open('/out/tcp', 'a')
i = 0
while True:
    f.write('ping %d\n' % i)
    f.flush()
    o.write(f.readline())
    o.flush()
    i += 1
    time.sleep(0.05)
"#;
    let bundle = python_bundle(tmp.path(), script);
    let netns = format!("/run/netns/{}", net.ctr());
    edit_config(&bundle, |c| {
        for ns in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = netns.clone().into();
            }
        }
    });
    let id = unique("tcp");
    root.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    let out = bundle.join("rootfs/out/tcp");
    let pongs = |p: &Path| -> Vec<u64> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("pong ")?.parse().ok())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while pongs(&out).len() < 5 {
        assert!(
            Instant::now() < deadline,
            "no TCP traffic before the checkpoint"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let images = tmp.path().join("images");
    root.ok(&[
        "checkpoint",
        "--tcp-established",
        "--image-path",
        s(&images),
        &id,
    ]);
    wait_stopped_or_gone(&root, &id);
    let n = pongs(&out).len();
    std::thread::sleep(Duration::from_millis(500));
    root.ok(&[
        "restore",
        "-d",
        "--tcp-established",
        "--image-path",
        s(&images),
        "--bundle",
        s(&bundle),
        &id,
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pongs(&out).len() < n + 10 {
        assert!(
            Instant::now() < deadline,
            "the connection did not resume: {:?}",
            pongs(&out).len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = pongs(&out);
    for (i, p) in got.iter().enumerate() {
        assert_eq!(*p as usize, i, "pong {i}");
    }
    assert_eq!(
        *accepted.lock().unwrap(),
        1,
        "the client reconnected instead of keeping its connection"
    );
    let s2 = seen.lock().unwrap().clone();
    for (i, p) in s2.iter().enumerate() {
        assert_eq!(*p as usize, i, "the server saw ping {p} at {i}");
    }
    root.ok(&["delete", "--force", &id]);
}

fn iptables_rules() -> String {
    let out = std::process::Command::new("iptables-save")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("0xc114") || l.contains("CRIU"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn bad_input_is_refused_and_a_failed_checkpoint_keeps_the_container() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(tmp.path(), COUNTER);
    let (a, b) = (unique("bada"), unique("badb"));
    root.ok(&["run", "-d", "--bundle", s(&bundle), &a]);
    let count = bundle.join("rootfs/out/count");
    wait_numbers(&count, 3);

    // A checkpoint that cannot reach its page server fails; the container
    // runs on.
    let err = root.fails(&[
        "checkpoint",
        "--page-server",
        "127.0.0.1:1",
        "--image-path",
        s(&tmp.path().join("x")),
        &a,
    ]);
    assert!(err.contains("criu dump failed"), "{err}");
    assert!(
        err.contains("criu log"),
        "the error quotes CRIU's log: {err}"
    );
    assert_eq!(root.status(&a), "running");
    // With --json, the same failure as one object on stdout: its kind and
    // CRIU's part as fields.
    let out = root.ferry(&[
        "checkpoint",
        "--json",
        "--page-server",
        "127.0.0.1:1",
        "--image-path",
        s(&tmp.path().join("xj")),
        &a,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkpoint --json: not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let e = &v["error"];
    assert_eq!(e["kind"], "criu", "{v:#}");
    assert_eq!(e["criu"]["request"], "dump", "{v:#}");
    assert!(
        !e["criu"]["log_lines"].as_array().unwrap().is_empty(),
        "{v:#}"
    );
    assert!(
        Path::new(e["criu"]["log_file"].as_str().unwrap()).is_file(),
        "{v:#}"
    );
    assert!(e["message"].as_str().unwrap().contains("criu dump failed"));
    assert_eq!(root.status(&a), "running");
    // A bad --parent-path is refused with runc's words before anything is
    // frozen: it must be relative to the image path, and a directory there.
    let x = tmp.path().join("x");
    let err = root.fails(&[
        "checkpoint",
        "--parent-path",
        "/abs",
        "--image-path",
        s(&x),
        &a,
    ]);
    assert!(err.contains("--parent-path must be relative"), "{err}");
    let err = root.fails(&[
        "checkpoint",
        "--parent-path",
        "../nope",
        "--image-path",
        s(&x),
        &a,
    ]);
    assert!(err.contains("invalid --parent-path"), "{err}");
    assert_eq!(root.status(&a), "running");
    let n = numbers(&count).len();
    assert_consecutive(&wait_numbers(&count, n + 3));

    let images = tmp.path().join("images");
    root.ok(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        s(&images),
        &a,
    ]);

    // The id is in use.
    let err = root.fails(&[
        "restore",
        "-d",
        "--image-path",
        s(&images),
        "--bundle",
        s(&bundle),
        &a,
    ]);
    assert!(err.contains("already exists"), "{err}");
    let out = root.ferry(&[
        "restore",
        "-d",
        "--json",
        "--image-path",
        s(&images),
        "--bundle",
        s(&bundle),
        &a,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "container_exists", "{v:#}");
    assert_eq!(root.status(&a), "running");

    // A corrupt image dir: refused before anything is created.
    let bad = tmp.path().join("bad");
    copy_bundle(&images, &bad);
    let core = std::fs::read_dir(&bad)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("core-"))
        .unwrap()
        .path();
    let len = std::fs::metadata(&core).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&core)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let err = root.fails(&[
        "restore",
        "-d",
        "--image-path",
        s(&bad),
        "--bundle",
        s(&bundle),
        &b,
    ]);
    assert!(
        err.contains("corrupt checkpoint") && err.contains("core-"),
        "{err}"
    );
    let err = root.fails(&[
        "restore",
        "-d",
        "--image-path",
        s(&tmp.path().join("nothing")),
        "--bundle",
        s(&bundle),
        &b,
    ]);
    assert!(err.contains("inventory.img"), "{err}");

    // A missing rootfs.
    let gone = tmp.path().join("gone");
    copy_bundle(&bundle, &gone);
    std::fs::remove_dir_all(gone.join("rootfs")).unwrap();
    let err = root.fails(&[
        "restore",
        "-d",
        "--image-path",
        s(&images),
        "--bundle",
        s(&gone),
        &b,
    ]);
    assert!(
        err.contains("rootfs") && err.contains("does not exist"),
        "{err}"
    );

    assert!(!root.ids().contains(&b));
    assert!(cgroup_leftovers(&b).is_empty());
    // This container's own: the other tests of this file restore in
    // parallel, each with a criu-root of its own mounted meanwhile.
    let criu_root = format!("/{b}/criu-root");
    assert!(
        mount_leftovers(&criu_root).is_empty(),
        "{:?}",
        mount_leftovers(&criu_root)
    );
    assert_eq!(
        iptables_rules(),
        "",
        "CRIU's network-lock rules were left behind"
    );
    assert_eq!(root.status(&a), "running");
}

/// The host's links Ferry made for containers' networks (`fy...`).
fn ferry_links() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip link show failed");
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("fy"))
        .collect();
    v.sort();
    v
}

/// A restore that fails once Ferry made the container's network namespace
/// (`org.ferry.network.address`) and locked it (`--tcp-established`)
/// leaves nothing, whenever it fails: no state dir, no namespace (neither
/// its pinned file and mount in the state dir, nor the host's veth and
/// route), no lock rules, no cgroup, no restored task; and the id restores
/// after. Three moments: a createRuntime hook (CRIU running, the lock on),
/// the pid file (the tasks restored and running), a poststart hook (last).
#[test]
fn a_restore_failing_after_its_network_namespace_exists_leaves_nothing() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(tmp.path(), COUNTER);
    let address = "10.86.0.50";
    edit_config(&bundle, |c| {
        c["annotations"] =
            serde_json::json!({"org.ferry.network.address": format!("{address}/32")});
    });
    let (a, b) = (unique("leaka"), unique("leakb"));
    let links = ferry_links();
    root.ok(&["run", "-d", "--bundle", s(&bundle), &a]);
    let count = bundle.join("rootfs/out/count");
    wait_numbers(&count, 5);
    assert_eq!(ferry_links().len(), links.len() + 1, "run made no veth");
    let images = tmp.path().join("images");
    root.ok(&[
        "checkpoint",
        "--tcp-established",
        "--image-path",
        s(&images),
        &a,
    ]);
    wait_stopped_or_gone(&root, &a);
    assert_eq!(ferry_links(), links, "checkpoint kept the veth");

    let route = || {
        let out = std::process::Command::new("ip")
            .args(["route", "show", "exact", &format!("{address}/32")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let nothing_left = |what: &str| {
        assert!(!root.ids().contains(&b), "{what}: the container is listed");
        let dir = root.path().join(&b);
        assert!(!dir.exists(), "{what}: its state dir {dir:?} is left");
        let netns = format!("{}/netns", dir.display());
        assert!(
            mount_leftovers(&netns).is_empty(),
            "{what}: its netns is still mounted: {:?}",
            mount_leftovers(&netns)
        );
        assert_eq!(ferry_links(), links, "{what}: its veth is left");
        assert_eq!(route(), "", "{what}: the route to {address} is left");
        assert!(
            cgroup_leftovers(&b).is_empty(),
            "{what}: {:?}",
            cgroup_leftovers(&b)
        );
        assert_eq!(iptables_rules(), "", "{what}: lock rules are left");
        // No restored task writes on.
        let n = numbers(&count).len();
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            numbers(&count).len(),
            n,
            "{what}: the restored counter runs on"
        );
    };
    let restore = |bundle: &Path, extra: &[&str]| {
        let mut args = vec![
            "restore",
            "-d",
            "--tcp-established",
            "--image-path",
            s(&images),
            "--bundle",
            s(bundle),
        ];
        args.extend_from_slice(extra);
        args.push(b.as_str());
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let fails = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        root.fails(&args)
    };
    // A restore from a copy of the bundle whose hook `kind` fails.
    let failing_hook = |kind: &str| {
        let hook = serde_json::json!([
            {"path": "/bin/sh", "args": ["sh", "-c", "echo refused >&2; exit 3"]}
        ]);
        let copy = tmp.path().join(kind);
        copy_bundle(&bundle, &copy);
        edit_config(&copy, |c| c["hooks"] = serde_json::json!({ kind: hook }));
        let err = fails(restore(&copy, &[]));
        assert!(err.contains(kind) && err.contains("refused"), "{err}");
        nothing_left(&format!("a failed {kind} hook"));
    };

    // A createRuntime hook fails while CRIU restores.
    failing_hook("createRuntime");

    // The pid file cannot be written: the tasks run by then.
    let pid_file = tmp.path().join("no/such/dir/pid");
    let err = fails(restore(&bundle, &["--pid-file", s(&pid_file)]));
    assert!(err.contains("pid file"), "{err}");
    nothing_left("an unwritable pid file");

    // A poststart hook fails, the last step.
    failing_hook("poststart");

    // Nothing stale stands in the way: the same id, address and veth name
    // restore, and the counter goes on where it was checkpointed.
    let before = numbers(&count);
    let ok: Vec<String> = restore(&bundle, &[]);
    root.ok(&ok.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(root.status(&b), "running");
    assert!(!route().is_empty(), "no route to the restored container");
    let after = wait_numbers(&count, before.len() + 5);
    assert_eq!(&after[..before.len()], &before[..]);
    root.remove(&b);
    assert_eq!(ferry_links(), links, "delete kept the veth");
}

/// The same for the lock Ferry puts on a network namespace the container
/// joins (dockerd's sandbox): a pending restore (`ROOT/@pending/ID`, as a
/// migration into dockerd leaves it) that `create` claims locks the joined
/// namespace while CRIU restores; when the restore fails there, the lock
/// comes off with everything else, or every packet of whatever else lives
/// in that namespace would be dropped.
#[test]
fn a_failed_pending_restore_unlocks_the_network_namespace_it_joins() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }
    // The source's namespace (which keeps CRIU's lock after the dump, as
    // a migration's source does) and the destination's new sandbox.
    let n = std::process::id() % 100000;
    let (src, dst) = (format!("locksrc{n}"), format!("lockdst{n}"));
    let mut gone = Vec::new();
    for ns in [&src, &dst] {
        ip(&["netns", "add", ns]);
        gone.push(Gone(ns.clone()));
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    let lock_rules = |ns: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "iptables-save", "-t", "filter"])
            .output()
            .unwrap();
        assert!(out.status.success(), "iptables-save in {ns} failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("CRIU") || l.contains("0xc114"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let join = |bundle: &Path, ns: &str| {
        let path = format!("/run/netns/{ns}");
        edit_config(bundle, |c| {
            for n in c["linux"]["namespaces"].as_array_mut().unwrap() {
                if n["type"] == "network" {
                    n["path"] = path.clone().into();
                }
            }
        });
    };
    let bundle = busybox_bundle(tmp.path(), COUNTER);
    join(&bundle, &src);
    let (a, b) = (unique("locka"), unique("lockb"));
    root.ok(&["run", "-d", "--bundle", s(&bundle), &a]);
    let count = bundle.join("rootfs/out/count");
    wait_numbers(&count, 5);
    let images = tmp.path().join("images");
    root.ok(&[
        "checkpoint",
        "--tcp-established",
        "--image-path",
        s(&images),
        &a,
    ]);
    wait_stopped_or_gone(&root, &a);
    assert_ne!(
        lock_rules(&src),
        "",
        "CRIU did not lock the dumped namespace"
    );
    assert_eq!(lock_rules(&dst), "");

    // The request a migration leaves for dockerd's `create` (pending.rs),
    // whose restore joins the destination's sandbox.
    let pending = root.path().join("@pending").join(&b);
    std::fs::create_dir_all(&pending).unwrap();
    std::fs::write(
        pending.join("request.json"),
        serde_json::json!({"images": images, "lazy_work": null}).to_string(),
    )
    .unwrap();
    join(&bundle, &dst);
    edit_config(&bundle, |c| {
        c["hooks"] = serde_json::json!({"createRuntime": [
            {"path": "/bin/sh", "args": ["sh", "-c", "echo refused >&2; exit 3"]}
        ]});
    });
    let err = root.fails(&["create", "--bundle", s(&bundle), &b]);
    assert!(
        err.contains("createRuntime") && err.contains("refused"),
        "{err}"
    );
    assert!(
        pending.join("outcome.json").is_file(),
        "create reported no outcome"
    );
    assert_eq!(
        lock_rules(&dst),
        "",
        "the failed restore left /run/netns/{dst} locked"
    );
    assert!(!root.ids().contains(&b));
    assert!(!root.path().join(&b).exists(), "its state dir is left");
    assert!(
        cgroup_leftovers(&b).is_empty(),
        "{:?}",
        cgroup_leftovers(&b)
    );
    let n = numbers(&count).len();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(numbers(&count).len(), n, "a restored counter runs on");
}

/// A bind whose destination is a symlink in the rootfs naming a host path
/// lands where the link leads inside the rootfs (runc's securejoin), never
/// on the host's directory of that name; CRIU, told about it under that
/// resolved name, dumps and restores it. A bind nested in it gets its
/// mountpoint in the outer bind's source, and a restore re-creates that
/// mountpoint when it was removed after the checkpoint (runc#2748).
#[test]
fn a_symlink_mount_destination_stays_inside_the_rootfs_through_checkpoint_and_restore() {
    let root = Root::new();
    let tmp = tempfile::tempdir().unwrap();
    // The host directory the symlink names: it must see nothing.
    let host = tmp.path().join("host-target");
    std::fs::create_dir_all(&host).unwrap();
    let (outer, inner) = (tmp.path().join("outer"), tmp.path().join("inner"));
    for (d, text) in [(&outer, "outer bind"), (&inner, "inner bind")] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("marker"), format!("{text}\n")).unwrap();
    }
    let bundle = busybox_bundle(
        tmp.path(),
        &[
            "sh",
            "-c",
            "i=0; while :; do cat /escape/marker /escape/in/marker > /out/seen; \
             echo $i >> /out/count; i=$((i+1)); sleep 0.05; done",
        ],
    );
    let rootfs = bundle.join("rootfs");
    std::os::unix::fs::symlink(&host, rootfs.join("escape")).unwrap();
    edit_config(&bundle, |c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(serde_json::json!({
            "destination": "/escape", "type": "bind", "source": s(&outer), "options": ["rbind"]
        }));
        mounts.push(serde_json::json!({
            "destination": "/escape/in", "type": "bind", "source": s(&inner), "options": ["rbind"]
        }));
    });
    let id = unique("crsym");
    root.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    let count = rootfs.join("out/count");
    wait_numbers(&count, 3);
    let seen = || std::fs::read_to_string(rootfs.join("out/seen")).unwrap();
    assert_eq!(seen(), "outer bind\ninner bind\n");
    // The container has both mounts at the link's target inside its root
    // (an absolute link: the same path as on the host, but in the rootfs).
    let in_container = |pid: u32| -> Vec<String> {
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(s(&host)))
            .collect()
    };
    let want = [s(&host).to_string(), format!("{}/in", s(&host))];
    assert_eq!(in_container(root.pid(&id)), want);
    let untouched = |why: &str| {
        assert!(
            std::fs::read_dir(&host).unwrap().next().is_none(),
            "{why}: the host's {} got something",
            host.display()
        );
        assert!(mount_leftovers(s(&host)).is_empty(), "{why}");
    };
    untouched("after run");
    // The inner mountpoint was made in the outer bind's source.
    assert!(outer.join("in").is_dir());

    let images = tmp.path().join("images");
    root.ok(&["checkpoint", "--image-path", s(&images), &id]);
    assert!(!root.ids().contains(&id));
    // As runc's checkpoint.bats does: the restore must make it again.
    std::fs::remove_dir(outer.join("in")).unwrap();
    let before = numbers(&count).len();
    restore_detached(&root, &images, &bundle, &id);
    assert_eq!(root.status(&id), "running");
    assert_continuous(&wait_numbers(&count, before + 5));
    assert_eq!(seen(), "outer bind\ninner bind\n");
    assert_eq!(in_container(root.pid(&id)), want);
    untouched("after restore");
    // Nothing the restore mounted on the host stays: neither CRIU's root
    // nor the binds made to create the nested mountpoint.
    assert!(
        mount_leftovers(s(&rootfs)).is_empty(),
        "{:?}",
        mount_leftovers(s(&rootfs))
    );
    root.remove(&id);
}

/// A network namespace that looks new is dumped as external and made anew
/// on restore. It is looked at before the freeze (outside the downtime), so
/// it is looked at again once the tasks are frozen: changed in between
/// (here by the test, between the library's prepare and its run, where a
/// process with CAP_NET_ADMIN outside the container could), the post-dump
/// answer is a refusal, CRIU rolls back, the container runs on, and the
/// next checkpoint dumps the namespace whole.
#[test]
fn a_netns_changed_between_the_look_and_the_freeze_abandons_the_checkpoint() {
    let root = Root::new();
    let dir = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(dir.path(), COUNTER);
    let id = unique("nschg");
    root.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    let count = bundle.join("rootfs/out/count");
    wait_numbers(&count, 3);
    let pid = root.pid(&id);

    // The prepared checkpoint holds the container's lock (`ferry state`
    // would wait for it) until it has run.
    let c = ferry_oci::runtime::Container::load(root.path(), &id).unwrap();
    let images = dir.path().join("images");
    let opts = ferry_oci::checkpoint::CheckpointOptions {
        image_path: images.clone(),
        ..Default::default()
    };
    let prepared = c
        .prepare_checkpoint(&criu_rpc::Criu::default(), opts)
        .unwrap();
    beyond_a_new_netns(pid);
    let err = prepared.run(&mut |_| {}, |_| ()).unwrap_err();
    let chain = ferry_oci::error::chain(&err);
    let refused = match &err {
        ferry_oci::Error::Criu(criu_rpc::Error::Notify { script, source, .. }) => {
            assert_eq!(*script, "post-dump", "{chain}");
            source.downcast_ref::<ferry_oci::Error>()
        }
        _ => None,
    };
    assert!(
        matches!(refused, Some(ferry_oci::Error::NetnsChanged { .. })),
        "not refused at post-dump for the netns: {chain}"
    );
    assert!(chain.contains("runs on"), "{chain}");
    // Rolled back: running, not frozen, counting.
    assert_eq!(root.status(&id), "running");
    let before = numbers(&count).len();
    wait_numbers(&count, before + 3);

    let again = dir.path().join("again");
    root.ok(&["checkpoint", "--image-path", s(&again), &id]);
    assert!(again.join("inventory.img").exists());
    assert!(
        !again.join("ferry-fresh-netns.json").exists(),
        "the changed namespace is dumped whole now"
    );
    root.remove(&id);
}
