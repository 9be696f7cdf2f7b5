//! `ferry check` against the real CRIU: the report agrees with what the
//! installed criu says of itself, and a missing or old criu is a clear error.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The binary under test: $FERRY_BIN (hack/test sets it), else the debug
/// build, which `cargo test --workspace` builds.
fn ferry() -> PathBuf {
    let p = std::env::var_os("FERRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ferry"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` (hack/test does)",
        p.display()
    );
    p
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(ferry());
    cmd.args(args).env_remove("FERRY_CRIU");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ferry")
}

#[test]
fn check_reports_the_installed_criu() {
    let out = run(&["check", "--json"], &[]);
    assert!(
        out.status.success(),
        "ferry check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");

    // Cross-check against the binary's own idea of its version.
    let path = report["criu"]["path"].as_str().unwrap();
    let cli = Command::new(path).arg("--version").output().unwrap();
    let cli = String::from_utf8_lossy(&cli.stdout);
    let v = &report["criu"]["version"];
    let reported = format!("{}.{}", v["major"], v["minor"]);
    assert!(
        cli.contains(&format!("Version: {reported}")),
        "ferry says {reported}, criu says {cli}"
    );
    assert!(
        (v["major"].as_u64().unwrap(), v["minor"].as_u64().unwrap()) >= (4, 2),
        "CRIU older than 4.2 passed the check"
    );
    assert_eq!(report["criu"]["check_ok"], true);
    // The kernel of this project's machines: userfaultfd yes, soft-dirty no
    // (NOTES.md); time namespaces exist on any kernel >= 5.6.
    assert_eq!(report["features"]["lazy_pages"], true);
    assert_eq!(report["features"]["timens"], true);
    assert!(report["features"]["mem_dirty_track"].is_boolean());
    // The host settings that weigh on every downtime, as the kernel has them.
    let sysctl = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().parse::<u64>().unwrap())
    };
    let d = &report["downtime"];
    assert_eq!(
        d["nf_conntrack_buckets"].as_u64(),
        sysctl("/proc/sys/net/netfilter/nf_conntrack_buckets"),
        "{d}"
    );
    assert_eq!(
        d["rcu_expedited"].as_bool(),
        sysctl("/sys/kernel/rcu_expedited").map(|v| v != 0),
        "{d}"
    );
    let favor = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" - cgroup") && l.contains("favordynmods"));
    assert_eq!(d["cgroup_favordynmods"].as_bool(), Some(favor), "{d}");

    let text = run(&["check"], &[]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("lazy pages (userfaultfd)   yes"), "{text}");
}

#[test]
fn check_fails_clearly_without_criu() {
    let out = run(&["check"], &[("FERRY_CRIU", "/nonexistent/criu")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/criu") && err.contains("not found"),
        "{err}"
    );
    assert!(
        err.contains("hack/setup"),
        "the error says how to fix it: {err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("criu");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let out = run(&["--criu", script.to_str().unwrap(), "check"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not executable"), "{err}");
}

#[test]
fn check_refuses_a_criu_older_than_4_2() {
    // Debian 12's criu 3.17, which hack/setup installs for its `crit`, is a
    // real too-old CRIU.
    let old = PathBuf::from("/usr/sbin/criu");
    assert!(
        old.exists(),
        "/usr/sbin/criu (Debian's criu 3.17, installed by hack/setup) is missing"
    );
    let out = run(&["--criu", "/usr/sbin/criu", "check"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("older than 4.2"), "{err}");
}

/// `ferry --version` as runc prints it, and `--version --json` the same as
/// an object: the commit this checkout is at, libseccomp's version, and
/// the CRIU `ferry check` finds, as that criu says of itself.
#[test]
fn version_names_commit_spec_libseccomp_and_criu() {
    let out = run(&["--version", "--json"], &[]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON version");
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(
        v["commit"].as_str().unwrap(),
        String::from_utf8_lossy(&head.stdout).trim(),
        "ferry says it was built at another commit than this checkout's HEAD (rebuild it: cargo build --bins, as hack/test does): {v}"
    );
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["spec"].as_str().unwrap().starts_with("1."), "{v}");
    let criu = Command::new("criu").arg("--version").output().unwrap();
    let criu = String::from_utf8_lossy(&criu.stdout);
    assert!(
        criu.contains(&format!("Version: {}", v["criu"].as_str().unwrap())),
        "ferry says CRIU {}, criu says {criu}",
        v["criu"]
    );
    let lib = v["libseccomp"].as_str().unwrap();
    assert!(lib.starts_with("2."), "libseccomp {lib}");

    let text = run(&["--version"], &[]);
    let text = String::from_utf8_lossy(&text.stdout);
    for line in [
        format!("ferry version {}", v["version"].as_str().unwrap()),
        format!("commit: {}", v["commit"].as_str().unwrap()),
        format!("spec: {}", v["spec"].as_str().unwrap()),
        format!("libseccomp: {lib}"),
        format!("criu: {}", v["criu"].as_str().unwrap()),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in {text}");
    }

    // No CRIU where it is pointed to: said, not an error.
    let out = run(
        &["--version", "--json"],
        &[("FERRY_CRIU", "/nonexistent/criu")],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["criu"].is_null(), "{v}");
}
