//! Where an exec'd process goes in the cgroup hierarchies: the container's
//! own cgroups, or sub-cgroups of them named by runc's `exec --cgroup`
//! (`[controller[,controller]:]path`, repeatable; runc's exec.go
//! getSubCgroupPaths and process_linux.go addIntoCgroupV1).
//!
//! A sub-cgroup must exist (runc never creates it) and must stay below the
//! container's cgroup: `..` is refused before anything is written.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use nix::unistd::Pid;

use super::cgroup::ContainerCgroup;
use crate::error::{Error, Result};

/// Where one process is placed.
#[derive(Debug, Clone)]
pub enum Placement {
    /// The container's cgroups (and its hybrid extras), as at create.
    Container(ContainerCgroup),
    /// One cgroup directory per hierarchy.
    Dirs(Vec<PathBuf>),
}

/// `--cgroup` arguments as runc reads them: controller -> sub path, with
/// `""` for a path given without controllers (only alone).
fn parse(args: &[String]) -> Result<BTreeMap<String, String>> {
    let invalid = |a: &str, why: &str| Error::InvalidArgument {
        what: format!("--cgroup {a}"),
        reason: why.to_string(),
    };
    let mut out = BTreeMap::new();
    for a in args {
        let parts: Vec<&str> = a.splitn(3, ':').collect();
        match parts.as_slice() {
            [path] => {
                if args.len() != 1 {
                    return Err(invalid(a, "missing <controller>: prefix"));
                }
                out.insert(String::new(), path.to_string());
            }
            [ctrls, path] => {
                for c in ctrls.split(',') {
                    if c.is_empty() {
                        return Err(invalid(a, "empty <controller> prefix"));
                    }
                    if out.insert(c.to_string(), path.to_string()).is_some() {
                        return Err(invalid(a, "a controller is given more than once"));
                    }
                }
            }
            _ => return Err(invalid(a, "expected [controller:]path")),
        }
    }
    Ok(out)
}

/// `base` joined with `sub`, lexically, refusing a result outside `base`.
fn below(base: &Path, sub: &str) -> Result<PathBuf> {
    let mut out = base.to_path_buf();
    for c in Path::new(sub).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                if out == base || !out.pop() || !out.starts_with(base) {
                    return Err(Error::NotSubCgroup {
                        sub: sub.to_string(),
                    });
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// The placement of an exec'd process given runc's `--cgroup` arguments.
pub fn placement(cg: &ContainerCgroup, args: &[String]) -> Result<Placement> {
    if args.is_empty() {
        return Ok(Placement::Container(cg.clone()));
    }
    let subs = parse(args)?;
    let hierarchies = cg.paths();
    for ctrl in subs.keys().filter(|c| !c.is_empty()) {
        if !hierarchies
            .keys()
            .any(|h| h.split(',').any(|c| c == ctrl) || h == ctrl)
        {
            return Err(Error::UnknownController {
                controller: ctrl.clone(),
            });
        }
    }
    let mut dirs = Vec::new();
    for (h, dir) in &hierarchies {
        let sub = h
            .split(',')
            .find_map(|c| subs.get(c))
            .or_else(|| subs.get(h.as_str()))
            .or_else(|| subs.get(""));
        dirs.push(match sub {
            Some(s) => below(dir, s)?,
            None => dir.clone(),
        });
    }
    Ok(Placement::Dirs(dirs))
}

impl Placement {
    /// Moves `pid` in.
    pub fn add(&self, pid: Pid) -> Result<()> {
        match self {
            Placement::Container(cg) => cg.add(pid),
            Placement::Dirs(dirs) => {
                for d in dirs {
                    let procs = d.join("cgroup.procs");
                    // Opened without O_CREAT: a cgroup that does not exist
                    // is an error, as with runc.
                    let r = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&procs)
                        .and_then(|mut f| {
                            std::io::Write::write_all(&mut f, pid.as_raw().to_string().as_bytes())
                        });
                    if let Err(source) = r {
                        return Err(Error::CgroupJoin {
                            pid: pid.as_raw(),
                            path: procs,
                            source,
                        });
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_as_runcs() {
        let a = |v: &[&str]| parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let m = a(&["memory:submem", "cpu,cpuacct:subcpu"]).unwrap();
        assert_eq!(m["memory"], "submem");
        assert_eq!(m["cpu"], "subcpu");
        assert_eq!(m["cpuacct"], "subcpu");
        assert_eq!(a(&["/"]).unwrap()[""], "/");
        assert!(a(&["x", "memory:y"]).is_err());
        assert!(a(&[":x"]).is_err());
        assert!(a(&["memory:a", "memory:b"]).is_err());
        assert!(a(&["a:b:c"]).is_err());
    }

    #[test]
    fn sub_paths_stay_below_the_container() {
        let base = Path::new("/sys/fs/cgroup/memory/ct");
        assert_eq!(below(base, "sub").unwrap(), base.join("sub"));
        assert_eq!(below(base, "/").unwrap(), base);
        assert_eq!(below(base, "a/../b").unwrap(), base.join("b"));
        let err = below(base, "..").unwrap_err();
        assert_eq!(err.to_string(), ".. is not a sub cgroup path");
        assert!(below(base, "a/../../x").is_err());
    }

    #[test]
    fn errnos_read_as_go_prints_them() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(crate::error::errno_text(&e), "no such file or directory");
    }
}
