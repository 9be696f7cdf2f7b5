//! A demo of the swrk client on a plain process tree: start a counter,
//! checkpoint it through CRIU's RPC (notifies shown as they come), restore it,
//! and show that it continues from the next number. Run as root:
//!
//!     cargo run --release -p criu-rpc --example checkpoint_demo
//!
//! `hack/demo` runs it after setting the machine up.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criu_rpc::{Criu, DumpOptions, HandlerError, ImageDirs, LogLevel, Notify, RestoreOptions};
use nix::unistd::Pid;

fn numbers(file: &Path) -> Vec<u64> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn wait_lines(file: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while numbers(file).len() < n {
        assert!(Instant::now() < deadline, "the counter does not count");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// True while any process uses `pid` as pid, group or session id.
fn in_use(pid: Pid) -> bool {
    let id = pid.as_raw().to_string();
    fs::read_dir("/proc").unwrap().flatten().any(|p| {
        let stat = fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let rest = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        p.file_name().to_str() == Some(&id)
            || f.get(2) == Some(&id.as_str())
            || f.get(3) == Some(&id.as_str())
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let criu = Criu::new();
    println!("CRIU {} at {}", criu.version()?, criu.resolve()?.display());
    let work = tempfile::tempdir()?;
    let images = work.path().join("images");
    fs::create_dir(&images)?;
    let file = work.path().join("count");

    let script = format!(
        "i=0; exec 3>>{}; while :; do echo $i >&3; i=$((i+1)); sleep 0.1; done",
        file.display()
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    let mut child = cmd.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    wait_lines(&file, 10);
    println!(
        "counter running as pid {pid}, at {:?}",
        numbers(&file).last()
    );

    let mut opts = DumpOptions::new(
        ImageDirs::open(&images)?
            .log_file("dump.log")
            .log_level(LogLevel::Debug),
        pid,
    );
    opts.tree.notify_scripts = true;
    let start = Instant::now();
    let mut show = |n: Notify| -> Result<(), HandlerError> {
        println!("  criu notify: {}", n.script());
        Ok(())
    };
    criu.dump(&opts, &mut show)?;
    println!(
        "checkpointed in {:?}: {} KiB of images in {}",
        start.elapsed(),
        dir_size(&images) / 1024,
        images.display()
    );
    child.wait()?;
    let last = numbers(&file).last().copied();
    println!("counter stopped at {last:?}");
    while in_use(pid) {
        std::thread::sleep(Duration::from_millis(50));
    }

    let start = Instant::now();
    let mut ropts = RestoreOptions::new(ImageDirs::open(&images)?.log_file("restore.log"));
    ropts.tree.notify_scripts = true;
    let restored = criu.restore(&ropts, &mut show)?;
    println!("restored as pid {} in {:?}", restored.pid, start.elapsed());
    let n = numbers(&file).len();
    wait_lines(&file, n + 10);
    let all = numbers(&file);
    let consecutive = all.iter().enumerate().all(|(i, v)| *v == i as u64);
    println!(
        "counter continued: {:?} -> {:?}; every number once, in order: {consecutive}",
        last,
        all.last()
    );
    nix::sys::signal::kill(restored.pid, nix::sys::signal::Signal::SIGKILL)?;
    nix::sys::wait::waitpid(restored.pid, None)?;
    if !consecutive {
        return Err("the counter skipped or repeated a number".into());
    }
    Ok(())
}
