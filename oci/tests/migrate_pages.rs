//! The core of a pre-copy move, for real: memory pages travel from the
//! source's CRIU to the destination's CRIU page server over a sealed
//! channel (ferry_oci::migrate::channel), relayed to and from the sockets
//! CRIU gets on both sides (`ps.fd`), so no unauthenticated port is ever
//! open, no page crosses the network in clear and none touches the
//! source's disk.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criu_rpc::{
    Criu, DumpOptions, HandlerError, ImageDirs, LogLevel, Notify, PageServerAddr,
    PageServerOptions, RestoreOptions,
};
use ferry_oci::migrate::auth::{Credentials, Key};
use ferry_oci::migrate::channel::{Channel, Security};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn numbers(f: &Path) -> Vec<u64> {
    fs::read_to_string(f)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn wait_lines(f: &Path, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = numbers(f);
        if v.len() >= n {
            return v;
        }
        assert!(Instant::now() < deadline, "counter stuck at {}", v.len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

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

#[test]
fn pages_go_through_a_sealed_channel_relayed_to_criu() {
    assert!(nix::unistd::geteuid().is_root(), "needs root (CRIU)");
    let tmp = tempfile::tempdir().unwrap();
    let (src_images, dst_images) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src_images).unwrap();
    fs::create_dir(&dst_images).unwrap();
    let count = tmp.path().join("count");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!(
            "i=0; exec 3>>{}; while :; do echo $i >&3; i=$((i+1)); sleep 0.05; done",
            count.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    let mut child = cmd.spawn().unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    wait_lines(&count, 5);

    let sec = Security::new(Credentials::Shared(Key::generate().unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (dsec, ddir) = (sec.clone(), dst_images.clone());
    let destination = std::thread::spawn(move || {
        let (s, peer) = listener.accept().unwrap();
        let (fd, relay) = Channel::server(s, &dsec, &peer.to_string())
            .unwrap()
            .relay()
            .unwrap();
        let dirs = ImageDirs::open(&ddir)
            .unwrap()
            .log_file("page-server.log")
            .log_level(LogLevel::Debug);
        let ps = Criu::new()
            .page_server_child(&PageServerOptions::new(dirs, PageServerAddr::Socket(fd)))
            .unwrap();
        ps.wait().unwrap();
        relay.wait().unwrap();
    });

    let s = TcpStream::connect(addr).unwrap();
    let (fd, relay) = Channel::client(s, &sec, &addr.to_string())
        .unwrap()
        .relay()
        .unwrap();
    let mut opts = DumpOptions::new(
        ImageDirs::open(&src_images)
            .unwrap()
            .log_file("dump.log")
            .log_level(LogLevel::Debug),
        pid,
    );
    opts.page_server = Some(PageServerAddr::Socket(fd));
    opts.tree.notify_scripts = true;
    let mut frozen = Vec::new();
    let mut h = |n: Notify| -> Result<(), HandlerError> {
        if let Notify::PostDump = n {
            // The dumped tree: the shell and its current sleep.
            frozen.push(pid);
            for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
                let kids = fs::read_to_string(t.path().join("children")).unwrap_or_default();
                frozen.extend(
                    kids.split_whitespace()
                        .map(|k| Pid::from_raw(k.parse().unwrap())),
                );
            }
        }
        Ok(())
    };
    Criu::new().dump(&opts, &mut h).unwrap();
    child.wait().unwrap();
    // Our copy of CRIU's end of the socketpair: the relay ends once the
    // last one is closed.
    drop(opts);
    relay.wait().unwrap();
    destination.join().unwrap();

    let pages = |d: &Path| {
        fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
            .count()
    };
    assert_eq!(pages(&src_images), 0, "no page on the source's disk");
    assert!(pages(&dst_images) > 0, "pages arrived at the destination");

    for e in fs::read_dir(&src_images).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".img") {
            fs::copy(e.path(), dst_images.join(e.file_name())).unwrap();
        }
    }
    let before = numbers(&count);
    let deadline = Instant::now() + Duration::from_secs(20);
    while frozen.iter().any(|p| in_use(*p)) {
        assert!(Instant::now() < deadline, "dumped pids linger");
        std::thread::sleep(Duration::from_millis(50));
    }
    let restored = Criu::new()
        .restore(
            &RestoreOptions::new(
                ImageDirs::open(&dst_images)
                    .unwrap()
                    .log_file("restore.log"),
            ),
            &mut criu_rpc::IgnoreNotify,
        )
        .unwrap();
    let after = wait_lines(&count, before.len() + 10);
    let _ = kill(restored.pid, Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(restored.pid, None);
    for (i, n) in after.iter().enumerate() {
        assert_eq!(*n, i as u64);
    }
}
