//! hack/install and hack/uninstall into a temporary prefix: the installed
//! binaries run `ferry check` against the CRIU the install built (the
//! test's PATH has no criu >= 4.2, so hack/install takes its CRIU branch),
//! man pages and completions are there and usable, the unit passes
//! systemd's own verification; hack/uninstall then removes every file and
//! directory the install made, and nothing else.

use std::path::Path;
use std::process::{Command, Output};

use ferry_tests::{ferry_bin, repo, require_root};

/// PATH without /usr/local/sbin (CRIU 4.2 there) and /usr/sbin (Debian's
/// criu 3.17, too old): hack/install must build CRIU into the prefix.
const NO_CRIU_PATH: &str = "/usr/bin:/bin";

fn script(name: &str, args: &[&str]) -> Output {
    let out = Command::new(repo().join("hack").join(name))
        .args(args)
        .env("PATH", NO_CRIU_PATH)
        .env_remove("FERRY_CRIU")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hack/{name} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every path under `dir`, relative to it, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn install_into_a_prefix_then_uninstall_removes_it_all() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    // Someone else's file in a directory the install also uses: it and
    // its directory must survive the uninstall.
    let man1 = prefix.join("share/man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    std::fs::write(man1.join("other.1"), ".TH OTHER 1\n").unwrap();
    let before = tree(&prefix);

    // The binaries of this build (hack/test builds the workspace's bins).
    let built = ferry_bin().parent().unwrap().to_path_buf();
    let p = prefix.to_str().unwrap();
    script(
        "install",
        &["--prefix", p, "--from", built.to_str().unwrap()],
    );

    // The installed ferry runs its check against the CRIU installed with it.
    let criu = prefix.join("sbin/criu");
    let check = Command::new(prefix.join("bin/ferry"))
        .arg("--criu")
        .arg(&criu)
        .arg("check")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "installed ferry check: {said}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        said.contains(&format!("({})", criu.display())) && said.contains(": ok"),
        "ferry check did not use the installed CRIU: {said}"
    );
    assert!(
        prefix.join("bin/containerd-shim-ferry-v2").is_file(),
        "the shim is not installed"
    );

    // Man pages: one for ferry and one per command, found by man itself.
    for page in ["ferry", "ferry-serve", "ferry-migrate", "ferry-checkpoint"] {
        let found = Command::new("man")
            .args(["-w", page])
            .env("MANPATH", prefix.join("share/man"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&found.stdout).trim(),
            man1.join(format!("{page}.1")).display().to_string(),
            "man -w {page}: {}",
            String::from_utf8_lossy(&found.stderr)
        );
    }
    let serve = std::fs::read_to_string(man1.join("ferry-serve.1")).unwrap();
    assert!(serve.contains("config"), "ferry-serve.1 lacks --config");
    assert!(
        !man1.join("ferry-completions.1").exists() && !man1.join("ferry-man.1").exists(),
        "the hidden generator commands got man pages"
    );

    // Completions: bash loads its script and completes ferry's commands.
    let bash = prefix.join("share/bash-completion/completions/ferry");
    let words = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". {}; COMP_WORDS=(ferry mig); COMP_CWORD=1; _ferry ferry mig ferry; echo \"${{COMPREPLY[@]}}\"",
            bash.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&words.stdout).trim(),
        "migrate",
        "bash completion of `ferry mig`: {}",
        String::from_utf8_lossy(&words.stderr)
    );
    for f in [
        "share/zsh/site-functions/_ferry",
        "share/fish/vendor_completions.d/ferry.fish",
    ] {
        let text = std::fs::read_to_string(prefix.join(f)).unwrap();
        assert!(text.contains("migrate"), "{f} does not complete migrate");
    }

    // The unit names the installed binary and passes systemd's own check
    // (unknown keys, bad values, its man page found).
    let unit = prefix.join("lib/systemd/system/ferry-serve.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains(&format!(
            "ExecStart={p}/bin/ferry serve --config /etc/ferry/serve.toml"
        )),
        "{text}"
    );
    assert!(!text.contains('@'), "an unfilled placeholder: {text}");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", prefix.join("share/man"))
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // The example configuration parses: `ferry serve` gets as far as
    // the key file it names.
    let example = prefix.join("share/doc/ferry/serve.toml");
    let serve = Command::new(prefix.join("bin/ferry"))
        .arg("serve")
        .arg("--config")
        .arg(&example)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&serve.stderr);
    assert!(
        !serve.status.success() && err.contains("/etc/ferry/key") && !err.contains("TOML"),
        "ferry serve --config {}: {err}",
        example.display()
    );

    // Installing again changes nothing of what uninstall will remove.
    let manifest = std::fs::read_to_string(prefix.join("share/ferry/install-manifest")).unwrap();
    script(
        "install",
        &["--prefix", p, "--from", built.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(prefix.join("share/ferry/install-manifest")).unwrap(),
        manifest,
        "a second install changed the record"
    );

    let out = script("uninstall", &["--prefix", p]);
    assert_eq!(
        tree(&prefix),
        before,
        "uninstall left or removed something: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
