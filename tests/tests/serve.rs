//! `ferry serve` as an installed agent runs it: settings from a
//! configuration file, a command-line flag overriding one of them, and the
//! moves it receives logged at its default level (no --debug, no
//! FERRY_LOG), in the file's log format.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::agents::{keygen, moved_rootfs, Serve};
use ferry_tests::*;

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The agent's log lines (json) whose `msg` is `msg`.
fn logged(log: &std::path::Path, msg: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["msg"] == msg)
        .collect()
}

#[test]
fn serve_takes_its_config_a_flag_overrides_it_and_a_move_is_logged() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(&tmp.path().join("key"));
    let (a, b) = (Root::new(), Root::new());
    let tag = std::process::id();
    let cgroup = format!("/ferry-cfg-{tag}");
    let (in_file, on_flag) = (free_port(), free_port());
    let config = tmp.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{in_file}\"\nkey-file = \"{}\"\nroot = \"{}\"\ncgroup-parent = \"{cgroup}\"\npeer-timeout = 5\nlog-format = \"json\"\n",
            key.display(),
            b.path().display()
        ),
    )
    .unwrap();

    // A key the file does not know is refused, named.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:1\"\npeer-timout = 5\n").unwrap();
    let out = run_ferry(
        Command::new(ferry_bin())
            .args(["serve", "--config"])
            .arg(&bad),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown field `peer-timout`"),
        "an unknown key was not refused by name: {err}"
    );

    // The file's root, cgroup parent, key and log format; the flag's
    // address instead of the file's.
    let log = tmp.path().join("serve.log");
    let addr = format!("127.0.0.1:{on_flag}");
    let child = Command::new(ferry_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &addr])
        .env_remove("FERRY_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let serve = Serve {
        child,
        addr: addr.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "ferry serve did not listen on the flag's {addr}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", in_file)).is_err(),
        "ferry serve listens on the file's address although --listen overrides it"
    );

    // A real move to it.
    let bundle = busybox_bundle(tmp.path(), COUNTER);
    let id = format!("cfg-{tag}");
    a.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    wait_numbers(&bundle.join("rootfs/out/count"), 3);
    let out = a.ok(&[
        "migrate",
        &id,
        "--to",
        &serve.addr,
        "--key-file",
        key.to_str().unwrap(),
        "--mode",
        "precopy",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    // It landed in the file's root, under the file's cgroup parent.
    assert_eq!(b.status(&id), "running");
    let n = numbers(&bundle.join("rootfs/out/count")).len();
    assert_consecutive(&wait_numbers(
        &moved_rootfs(&b, &id).join("out/count"),
        n + 3,
    ));
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", b.pid(&id))).unwrap();
    assert!(
        cgroups.contains(&format!("{cgroup}/{id}")),
        "not under the file's cgroup parent: {cgroups}"
    );

    // The move, logged at the default level as one json object with its
    // fields as keys (the agent logs it once the copy runs).
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(l) = logged(&log, "move received").pop() {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no 'move received' line in the agent's log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(line["level"], "info", "{line}");
    assert_eq!(line["id"], id.as_str(), "{line}");
    assert_eq!(line["mode"], "precopy", "{line}");
    assert_eq!(line["result"], "running", "{line}");
    assert!(
        line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    // Its downtime, seen from the destination, is the source's less about
    // a network delay each way (loopback here).
    let here = line["downtime_ms"].as_u64().unwrap() as f64;
    let there = report["downtime_ms"].as_f64().unwrap();
    assert!(
        here > 0.0 && here <= there + 50.0,
        "downtime logged {here} ms, the source measured {there} ms"
    );
    assert!(line["time"].is_string(), "{line}");

    drop(serve);
    b.ok(&["delete", "--force", &id]);
    assert!(cgroup_leftovers(&format!("ferry-cfg-{tag}/{id}")).is_empty());
}
