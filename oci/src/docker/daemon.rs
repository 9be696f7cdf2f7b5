//! Which dockerd serves a socket, and where its runtimes keep their state.
//!
//! dockerd 20.10 runs every runc-compatible runtime, `--add-runtime` ones
//! included, with `--root <exec-root>/runtime-runc/moby`: that is where
//! `ferry checkpoint` must look for the containers it runs. The Engine API
//! does not tell the exec-root (`/info` has the data-root only), so it is
//! read from dockerd itself: the peer of the socket gives its pid, its
//! command line or its daemon.json the flag.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::error::{io, Error, Result};

/// dockerd's `--exec-root` default on Linux.
pub const DEFAULT_EXEC_ROOT: &str = "/var/run/docker";
/// dockerd's `--config-file` default on Linux.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/docker/daemon.json";

/// `<exec-root>/runtime-runc/moby` of the dockerd listening on `socket`.
pub(super) fn runtime_root(socket: &Path, host: &str) -> Result<PathBuf> {
    let pid = dockerd_pid(socket, host)?;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let raw = std::fs::read(proc.join("cmdline")).map_err(io("reading", &proc.join("cmdline")))?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let exec_root = exec_root(&args, |path| match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading dockerd's config file", path)(e)),
    })?;
    // A relative flag is relative to where dockerd was started.
    let exec_root = if exec_root.is_relative() {
        let cwd = proc.join("cwd");
        std::fs::read_link(&cwd)
            .map_err(io("reading", &cwd))?
            .join(exec_root)
    } else {
        exec_root
    };
    Ok(exec_root.join("runtime-runc/moby"))
}

/// The pid of the dockerd behind `socket`. SO_PEERCRED names the process
/// that called listen(): dockerd itself, unless systemd's docker.socket
/// listens for it (Debian's `-H fd://`), and then the one dockerd there is.
fn dockerd_pid(socket: &Path, host: &str) -> Result<i32> {
    let s = UnixStream::connect(socket).map_err(io("connecting to", socket))?;
    let cred = nix::sys::socket::getsockopt(&s.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| io("reading the peer credentials of", socket)(e.into()))?;
    let peer = cred.pid();
    if peer > 0 && is_dockerd(peer) {
        return Ok(peer);
    }
    let all: Vec<i32> = std::fs::read_dir("/proc")
        .map_err(io("listing", Path::new("/proc")))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| is_dockerd(*pid))
        .collect();
    match all[..] {
        [pid] => Ok(pid),
        [] => Err(Error::DockerDaemon {
            host: host.to_string(),
            reason: format!(
                "its socket is held by pid {peer}, which is not dockerd, and no dockerd runs in this pid namespace"
            ),
        }),
        _ => Err(Error::DockerDaemon {
            host: host.to_string(),
            reason: format!(
                "its socket is held by pid {peer}, which is not dockerd, and several dockerds run ({all:?})"
            ),
        }),
    }
}

fn is_dockerd(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "dockerd")
}

/// The value of a Go (pflag) long flag: `--flag X` or `--flag=X`; the last
/// one wins, as with pflag.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let mut found = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == name {
            found = it.next().map(String::as_str).or(found);
        } else if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            found = Some(v);
        }
    }
    found
}

/// dockerd's exec-root from its command line (`args`, argv[0] first), else
/// from `exec-root` in its config file (read through `read`, `None` when
/// it does not exist), else the default: dockerd's own precedence.
pub(super) fn exec_root(
    args: &[String],
    read: impl FnOnce(&Path) -> Result<Option<Vec<u8>>>,
) -> Result<PathBuf> {
    if let Some(root) = flag(args, "--exec-root") {
        return Ok(PathBuf::from(root));
    }
    let config = PathBuf::from(flag(args, "--config-file").unwrap_or(DEFAULT_CONFIG_FILE));
    if let Some(bytes) = read(&config)? {
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                path: config.clone(),
                source,
            })?;
        if let Some(root) = v.get("exec-root").and_then(|r| r.as_str()) {
            return Ok(PathBuf::from(root));
        }
    }
    Ok(PathBuf::from(DEFAULT_EXEC_ROOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    fn no_file(_: &Path) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    #[test]
    fn the_command_line_comes_first() {
        let a = args("/usr/sbin/dockerd -H unix:///x.sock --exec-root /tmp/e --data-root /tmp/d");
        assert_eq!(exec_root(&a, no_file).unwrap(), Path::new("/tmp/e"));
        let a = args("dockerd --exec-root=/tmp/f");
        assert_eq!(
            exec_root(&a, |_| panic!("read the config")).unwrap(),
            Path::new("/tmp/f")
        );
    }

    #[test]
    fn then_the_config_file_then_the_default() {
        let a = args("dockerd --config-file /etc/x.json");
        let root = exec_root(&a, |p| {
            assert_eq!(p, Path::new("/etc/x.json"));
            Ok(Some(
                br#"{"exec-root": "/run/dx", "data-root": "/d"}"#.to_vec(),
            ))
        })
        .unwrap();
        assert_eq!(root, Path::new("/run/dx"));
        let root = exec_root(&args("dockerd -H fd://"), |p| {
            assert_eq!(p, Path::new(DEFAULT_CONFIG_FILE));
            Ok(Some(b"{}".to_vec()))
        })
        .unwrap();
        assert_eq!(root, Path::new(DEFAULT_EXEC_ROOT));
        assert_eq!(
            exec_root(&args("dockerd"), no_file).unwrap(),
            Path::new(DEFAULT_EXEC_ROOT)
        );
    }

    #[test]
    fn a_broken_config_file_is_named() {
        let e = exec_root(&args("dockerd --config-file=/etc/bad.json"), |_| {
            Ok(Some(b"{".to_vec()))
        })
        .unwrap_err();
        assert!(e.to_string().contains("/etc/bad.json"), "{e}");
    }
}
