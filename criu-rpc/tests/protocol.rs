//! Protocol tests against a fake criu: this test binary re-executes itself as
//! `criu swrk 3` (with FERRY_FAKE_CRIU naming a scenario) and plays CRIU's
//! side of the socketpair, misbehaving on purpose. Each misbehaviour must end
//! in a clear error, without a hang and without leaking an fd.
//!
//! `harness = false`: main() decides whether this process is the test runner
//! or the fake criu.

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use criu_rpc::{
    Criu, DumpOptions, Error, HandlerError, IgnoreNotify, ImageDirs, InheritFd, InheritPassed,
    Notify, RestoreOptions,
};
use nix::sys::socket::{recv, send, sendmsg, ControlMessage, MsgFlags};
use nix::unistd::Pid;
use protobuf::{EnumOrUnknown, Message, MessageField};
use rust_criu::rust_criu_protobuf::rpc;

const SCENARIO: &str = "FERRY_FAKE_CRIU";

fn main() {
    if let Ok(scenario) = std::env::var(SCENARIO) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        assert_eq!(args, ["swrk", "3"], "fake criu called as {args:?}");
        std::process::exit(fake_criu(&scenario));
    }
    run_tests();
}

// ---------------------------------------------------------------- fake criu

fn read_req() -> Option<rpc::Criu_req> {
    let mut buf = vec![0u8; 1 << 16];
    let n = recv(3, &mut buf, MsgFlags::empty()).ok()?;
    if n == 0 {
        return None;
    }
    rpc::Criu_req::parse_from_bytes(&buf[..n]).ok()
}

fn resp(ty: rpc::Criu_req_type, success: bool) -> rpc::Criu_resp {
    let mut r = rpc::Criu_resp::new();
    r.type_ = Some(EnumOrUnknown::new(ty));
    r.success = Some(success);
    r
}

/// A successful RESTORE response naming the restored root `pid`.
fn restored(pid: i32) -> rpc::Criu_resp {
    let mut ok = resp(rpc::Criu_req_type::RESTORE, true);
    let mut rr = rpc::Criu_restore_resp::new();
    rr.pid = Some(pid);
    ok.restore = MessageField::some(rr);
    ok
}

fn send_resp(r: &rpc::Criu_resp, fd: Option<RawFd>) {
    let bytes = r.write_to_bytes().unwrap();
    match fd {
        None => {
            send(3, &bytes, MsgFlags::empty()).unwrap();
        }
        Some(fd) => {
            let fds = [fd];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(
                3,
                &[std::io::IoSlice::new(&bytes)],
                &cmsg,
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        }
    }
}

fn notify(script: &str) -> rpc::Criu_resp {
    let mut r = resp(rpc::Criu_req_type::NOTIFY, true);
    let mut n = rpc::Criu_notify::new();
    n.script = Some(script.into());
    r.notify = MessageField::some(n);
    r
}

fn failure(ty: rpc::Criu_req_type, msg: &str) -> rpc::Criu_resp {
    let mut r = resp(ty, false);
    r.cr_errno = Some(libc::EINVAL);
    r.cr_errmsg = Some(msg.into());
    r
}

/// Runs one scenario as criu; returns criu's exit status.
fn fake_criu(scenario: &str) -> i32 {
    let req = read_req().expect("a request");
    let ty = req.type_();
    match scenario {
        "exit" => {
            eprintln!("fake criu: giving up on purpose");
            3
        }
        "malformed" => {
            send(3, &[0xff, 0xff, 0xff, 0xff, 0x0f], MsgFlags::empty()).unwrap();
            while read_req().is_some() {}
            0
        }
        "unexpected-notify" | "handler-error" => {
            let script = if scenario == "handler-error" {
                "pre-dump"
            } else {
                "bogus-script"
            };
            send_resp(&notify(script), None);
            let reply = read_req().expect("a notify reply");
            if reply.type_() != rpc::Criu_req_type::NOTIFY || reply.notify_success() {
                eprintln!("fake criu: client accepted {script}");
                return 10;
            }
            send_resp(&failure(ty, "aborted by the client's notify reply"), None);
            1
        }
        "grandchild" => {
            // A child keeps the socket open; the parent dies silently. Only
            // a client that watches criu's pid notices.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    std::thread::sleep(Duration::from_secs(60));
                    0
                }
                nix::unistd::ForkResult::Parent { child } => {
                    eprintln!("grandchild {child}");
                    2
                }
            }
        }
        "fds" => {
            // Only stdio and the socket may be open (plus the read_dir fd).
            let mut open: Vec<i32> = fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd > 3)
                .collect();
            open.retain(|fd| fs::read_link(format!("/proc/self/fd/{fd}")).is_ok());
            if open.is_empty() {
                let mut r = resp(rpc::Criu_req_type::VERSION, true);
                let mut v = rpc::Criu_version::new();
                v.major_number = Some(9);
                v.minor_number = Some(8);
                v.sublevel = Some(7);
                r.version = MessageField::some(v);
                send_resp(&r, None);
                0
            } else {
                let what: Vec<String> = open
                    .iter()
                    .map(|fd| format!("{fd} -> {:?}", fs::read_link(format!("/proc/self/fd/{fd}"))))
                    .collect();
                send_resp(&failure(ty, &format!("leaked fds: {what:?}")), None);
                1
            }
        }
        "pts-and-inherit" => {
            // inherit_fd 0 is at fd 4 in criu: read what the test wrote.
            let key = req
                .opts
                .inherit_fd
                .first()
                .map(|i| (i.key().to_string(), i.fd()));
            if key != Some(("fd[7]".to_string(), 4)) {
                send_resp(&failure(ty, &format!("inherit_fd is {key:?}")), None);
                return 1;
            }
            let mut buf = [0u8; 5];
            let n = nix::unistd::read(4, &mut buf).unwrap_or(0);
            if &buf[..n] != b"hello" {
                send_resp(&failure(ty, "fd 4 is not the inherited pipe"), None);
                return 1;
            }
            // Hand a "pts master" (a pipe's write end) to the client, which
            // writes into it.
            let (r, w) = nix::unistd::pipe().unwrap();
            send_resp(&notify("orphan-pts-master"), Some(w.as_raw_fd()));
            drop(w);
            let reply = read_req().expect("a notify reply");
            if !reply.notify_success() {
                return 11;
            }
            let mut buf = [0u8; 5];
            let n = nix::unistd::read(r.as_raw_fd(), &mut buf).unwrap_or(0);
            if &buf[..n] != b"world" {
                send_resp(&failure(ty, "client did not write to the pts master"), None);
                return 1;
            }
            send_resp(&restored(4242), None);
            0
        }
        "passed-inherit" => {
            // Started with two fds (4, 5); the request names the second.
            let keys: Vec<(String, i32)> = req
                .opts
                .inherit_fd
                .iter()
                .map(|i| (i.key().to_string(), i.fd()))
                .collect();
            if keys != [("pipe:[9]".to_string(), 5)] {
                send_resp(&failure(ty, &format!("inherit_fd is {keys:?}")), None);
                return 1;
            }
            let mut buf = [0u8; 5];
            let n = nix::unistd::read(5, &mut buf).unwrap_or(0);
            if &buf[..n] != b"early" {
                send_resp(&failure(ty, "fd 5 is not the pipe passed at spawn"), None);
                return 1;
            }
            send_resp(&restored(4343), None);
            0
        }
        "wrong-type" => {
            send_resp(&resp(rpc::Criu_req_type::PAGE_SERVER, true), None);
            0
        }
        other => panic!("unknown fake criu scenario {other}"),
    }
}

// ---------------------------------------------------------------- the tests

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

fn fake() -> Criu {
    Criu::with_binary(std::env::current_exe().unwrap())
}

fn dump_opts(dir: &Path) -> DumpOptions {
    let mut o = DumpOptions::new(ImageDirs::open(dir).unwrap(), Pid::from_raw(1));
    o.tree.notify_scripts = true;
    o
}

/// Runs `f` with the fake criu playing `scenario`; fails if it hangs or if
/// our process has more fds afterwards than before.
fn with_scenario<T: Send + 'static>(
    scenario: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    // The env var reaches the fake through criu's inherited environment;
    // cases run one at a time, so setting it here is race-free.
    std::env::set_var(SCENARIO, scenario);
    let before = open_fds();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("scenario {scenario}: the client hung"));
    std::env::remove_var(SCENARIO);
    assert_eq!(open_fds(), before, "scenario {scenario}: fds leaked");
    out
}

fn criu_exiting_mid_request() {
    let err = with_scenario("exit", || fake().version().unwrap_err());
    match &err {
        Error::CriuExited { status, output, .. } => {
            assert_eq!(status, "exited with status 3");
            assert!(output.contains("giving up on purpose"), "{output}");
        }
        e => panic!("expected CriuExited, got {e:?}"),
    }
    assert!(
        err.to_string()
            .contains("before answering the version request"),
        "{err}"
    );
}

fn malformed_response() {
    let err = with_scenario("malformed", || fake().version().unwrap_err());
    assert!(matches!(err, Error::Malformed { len: 5, .. }), "{err:?}");
    assert!(err.to_string().contains("malformed"), "{err}");
}

fn unexpected_notify() {
    let dir = tempfile::tempdir().unwrap();
    let err = with_scenario("unexpected-notify", move || {
        let mut seen = Vec::new();
        let mut h = |n: Notify| -> Result<(), HandlerError> {
            seen.push(n.script());
            Ok(())
        };
        let e = fake().dump(&dump_opts(dir.path()), &mut h).unwrap_err();
        assert!(seen.is_empty(), "handler got {seen:?}");
        e
    });
    match &err {
        Error::UnexpectedNotify { script, .. } => assert_eq!(script, "bogus-script"),
        e => panic!("expected UnexpectedNotify, got {e:?}"),
    }
}

#[derive(Debug)]
struct Refused;
impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("network is not ready")
    }
}
impl std::error::Error for Refused {}

fn handler_error_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let err = with_scenario("handler-error", move || {
        let mut h = |_: Notify| -> Result<(), HandlerError> { Err(Box::new(Refused)) };
        fake().dump(&dump_opts(dir.path()), &mut h).unwrap_err()
    });
    match &err {
        Error::Notify { script, source, .. } => {
            assert_eq!(*script, "pre-dump");
            assert_eq!(source.to_string(), "network is not ready");
        }
        e => panic!("expected Notify, got {e:?}"),
    }
}

fn dead_criu_with_socket_held_open() {
    let err = with_scenario("grandchild", || fake().version().unwrap_err());
    let Error::CriuExited { status, output, .. } = &err else {
        panic!("expected CriuExited, got {err:?}");
    };
    assert_eq!(status, "exited with status 2");
    // Do not leave the sleeping grandchild behind.
    let pid: i32 = output
        .trim()
        .strip_prefix("grandchild ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no grandchild pid in {output:?}"));
    nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
}

fn no_fd_leaks_into_criu() {
    // A non-CLOEXEC fd, as a careless library would leave: criu must not
    // inherit it.
    let leaky = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
    assert!(leaky > 2);
    let leaky = unsafe { OwnedFd::from_raw_fd(leaky) };
    let v = with_scenario("fds", || fake().version());
    drop(leaky);
    let v = v.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((v.major, v.minor, v.sublevel), (9, 8, 7));
}

fn passed_fds_and_pts_master() {
    let dir = tempfile::tempdir().unwrap();
    let restored = with_scenario("pts-and-inherit", move || {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"hello").unwrap();
        drop(w);
        let mut opts = RestoreOptions::new(ImageDirs::open(dir.path()).unwrap());
        opts.tree.notify_scripts = true;
        opts.tree.orphan_pts_master = true;
        opts.inherit_fds.push(InheritFd {
            key: "fd[7]".into(),
            fd: r,
        });
        let mut h = |n: Notify| -> Result<(), HandlerError> {
            if let Notify::OrphanPtsMaster { master } = n {
                fs::File::from(master).write_all(b"world")?;
            }
            Ok(())
        };
        fake().restore(&opts, &mut h)
    });
    assert_eq!(
        restored.unwrap_or_else(|e| panic!("{e}")).pid,
        Pid::from_raw(4242)
    );
}

/// criu started with fds before the request knows their keys (a move's
/// destination): the request names them by position; a position criu was
/// not given is refused before anything is sent.
fn fds_passed_at_spawn_named_later() {
    let dir = tempfile::tempdir().unwrap();
    let restored = with_scenario("passed-inherit", move || {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"early").unwrap();
        drop(w);
        let null = OwnedFd::from(fs::File::open("/dev/null").unwrap());
        let swrk = fake().spawn(&[null.as_fd(), r.as_fd()]).unwrap();
        drop((null, r));
        let mut opts = RestoreOptions::new(ImageDirs::open(dir.path()).unwrap());
        opts.inherit_passed.push(InheritPassed {
            key: "pipe:[9]".into(),
            index: 2,
        });
        let err = swrk.restore(&opts, &mut IgnoreNotify).unwrap_err();
        assert!(matches!(err, Error::FdMismatch { .. }), "{err:?}");
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"early").unwrap();
        drop(w);
        let null = OwnedFd::from(fs::File::open("/dev/null").unwrap());
        let swrk = fake().spawn(&[null.as_fd(), r.as_fd()]).unwrap();
        drop((null, r));
        opts.inherit_passed[0].index = 1;
        swrk.restore(&opts, &mut IgnoreNotify)
    });
    assert_eq!(
        restored.unwrap_or_else(|e| panic!("{e}")).pid,
        Pid::from_raw(4343)
    );
}

fn wrong_response_type() {
    let err = with_scenario("wrong-type", || fake().version().unwrap_err());
    assert!(matches!(err, Error::UnexpectedResponse { .. }), "{err:?}");
}

fn criu_missing_or_not_executable() {
    let err = Criu::with_binary("/nonexistent/criu")
        .version()
        .unwrap_err();
    assert!(matches!(err, Error::CriuNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/criu"), "{err}");
    // What to do is the binary's to say (its --criu flag, FERRY_CRIU):
    // the library names the version it needs.
    assert!(err.to_string().contains("CRIU >= 4.2"), "{err}");

    let err = Criu::with_binary("no-such-criu-binary")
        .version()
        .unwrap_err();
    assert!(matches!(err, Error::CriuNotFound { .. }), "{err:?}");

    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("criu");
    fs::write(&plain, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
    let err = Criu::with_binary(&plain).version().unwrap_err();
    assert!(matches!(err, Error::CriuNotExecutable { .. }), "{err:?}");
    assert!(err.to_string().contains("not executable"), "{err}");
}

fn run_tests() {
    let tests: &[(&str, fn())] = &[
        ("criu_exiting_mid_request", criu_exiting_mid_request),
        ("malformed_response", malformed_response),
        ("unexpected_notify", unexpected_notify),
        ("handler_error_aborts", handler_error_aborts),
        (
            "dead_criu_with_socket_held_open",
            dead_criu_with_socket_held_open,
        ),
        ("no_fd_leaks_into_criu", no_fd_leaks_into_criu),
        ("passed_fds_and_pts_master", passed_fds_and_pts_master),
        (
            "fds_passed_at_spawn_named_later",
            fds_passed_at_spawn_named_later,
        ),
        ("wrong_response_type", wrong_response_type),
        (
            "criu_missing_or_not_executable",
            criu_missing_or_not_executable,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = 0;
    let mut ran = 0;
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        ran += 1;
        match std::panic::catch_unwind(f) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("\nprotocol: {} passed; {failed} failed", ran - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
