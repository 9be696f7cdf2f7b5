//! The container's seccomp filter (`linux.seccomp`), built with libseccomp
//! the way runc builds it (libcontainer/seccomp/seccomp_linux.go):
//!
//! - the filter is built in `ferry create` (or `exec`) before anything is
//!   forked, so a profile libseccomp refuses is an error of the command, and
//!   the child only loads it;
//! - libseccomp would set no_new_privs when loading: runc turns that off and
//!   leaves no_new_privs to `process.noNewPrivileges`, so does Ferry;
//! - syscall names this libseccomp does not know are skipped (a profile
//!   written for a newer kernel still loads), as are rules whose action is
//!   the default one (libseccomp refuses those);
//! - conditions on distinct arguments are ANDed in one rule; several
//!   conditions on the same argument make one rule each (runc's reading of
//!   the spec: there is no other way to say "arg0 is 1 or 2");
//! - SCMP_ACT_NOTIFY (a seccomp agent on `listenerPath`) is refused, after
//!   runc's own checks (see `check_notify`).
//!
//! Where the filter is loaded is [`super::process::confine`]'s business.
//! CRIU dumps and restores loaded filters itself (PTRACE_SECCOMP_GET_FILTER),
//! so a checkpoint needs nothing from here.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use crate::error::{Error, Result};

/// A filter ready to load: libseccomp's, behind runc's ENOSYS stub when
/// the profile's default action is not to allow (see
/// [`super::seccomp_enosys`]).
pub struct Filter {
    ctx: ScmpFilterContext,
    patched: Option<super::seccomp_enosys::Program>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("patched", &self.patched)
            .finish_non_exhaustive()
    }
}

impl Filter {
    /// Loads the filter into the calling thread (with TSYNC, every thread).
    pub fn load(&self) -> std::io::Result<()> {
        match &self.patched {
            Some(p) => p.load(),
            None => self.ctx.load().map_err(std::io::Error::other),
        }
    }
}

/// The version of the libseccomp Ferry runs with, as `major.minor.micro`
/// (what `runc --version` prints on its `libseccomp:` line).
pub fn library_version() -> Option<String> {
    libseccomp::ScmpVersion::current()
        .ok()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
}

fn seccomp_err(what: String) -> impl FnOnce(libseccomp::error::SeccompError) -> Error {
    move |source| Error::Seccomp { what, source }
}

/// The libseccomp action of an OCI action; `errno` is the rule's (or the
/// profile's default) errnoRet, EPERM when none is given, as with runc.
fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction> {
    let errno = errno.unwrap_or(libc::EPERM as u32);
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno as i32),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno as u16),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Unsupported {
                what: "seccomp SCMP_ACT_NOTIFY (a seccomp agent)",
                hint: "use another action in linux.seccomp, or run this container with runc",
            })
        }
    })
}

fn condition(a: &LinuxSeccompArg) -> ScmpArgCompare {
    let op = match a.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // The spec's value is the mask, valueTwo the value to compare.
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(a.value()),
    };
    let datum = match a.op() {
        LinuxSeccompOperator::ScmpCmpMaskedEq => a.value_two().unwrap_or(0),
        _ => a.value(),
    };
    ScmpArgCompare::new(a.index() as u32, op, datum)
}

/// The rules' condition sets: all conditions in one set when each names
/// another argument, else one set per condition (runc).
fn condition_sets(args: &[LinuxSeccompArg]) -> Vec<Vec<ScmpArgCompare>> {
    let mut indices: Vec<usize> = args.iter().map(|a| a.index()).collect();
    indices.sort_unstable();
    indices.dedup();
    if indices.len() == args.len() {
        vec![args.iter().map(condition).collect()]
    } else {
        args.iter().map(|a| vec![condition(a)]).collect()
    }
}

/// The filter of a spec's `linux.seccomp`, if it has one.
pub fn of_spec(spec: &oci_spec::runtime::Spec) -> Result<Option<Filter>> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .map(build)
        .transpose()
}

/// What runc checks of SCMP_ACT_NOTIFY before its agent would come in:
/// a listenerPath without any notify rule is ignored (runc only talks to
/// an agent its filter needs); notifying `write` is refused with runc's
/// words (the runtime itself writes); an agent that cannot be reached is
/// named as runc names it. Past those, a seccomp agent is refused: Ferry
/// does not hand filters to one.
fn check_notify(s: &LinuxSeccomp) -> Result<()> {
    let notify = |a: LinuxSeccompAction| a == LinuxSeccompAction::ScmpActNotify;
    let rules = s.syscalls().iter().flatten();
    let mut notifying = rules.clone().filter(|r| notify(r.action()));
    if !notify(s.default_action()) && notifying.clone().next().is_none() {
        return Ok(());
    }
    if notify(s.default_action()) || notifying.any(|r| r.names().iter().any(|n| n == "write")) {
        return Err(Error::SeccompNotify {
            reason: "SCMP_ACT_NOTIFY cannot be used for the write syscall".into(),
        });
    }
    let path = s.listener_path().clone().unwrap_or_default();
    if path.as_os_str().is_empty() {
        return Err(Error::SeccompNotify {
            reason: "SCMP_ACT_NOTIFY rules need a seccomp agent, and linux.seccomp.listenerPath is empty".into(),
        });
    }
    if let Err(e) = std::os::unix::net::UnixStream::connect(&path) {
        return Err(Error::SeccompNotify {
            reason: format!(
                "failed to connect with seccomp agent specified in the seccomp profile ({}): {e}",
                path.display()
            ),
        });
    }
    Err(Error::Unsupported {
        what: "a seccomp agent (SCMP_ACT_NOTIFY with linux.seccomp.listenerPath)",
        hint: "use another action than SCMP_ACT_NOTIFY in linux.seccomp",
    })
}

/// Builds the filter `s` describes.
pub fn build(s: &LinuxSeccomp) -> Result<Filter> {
    check_notify(s)?;
    let default = action(s.default_action(), s.default_errno_ret())?;
    let mut f = ScmpFilterContext::new(default)
        .map_err(seccomp_err("creating the seccomp filter".into()))?;
    f.set_ctl_nnp(false)
        .map_err(seccomp_err("leaving no_new_privs to the spec".into()))?;
    for arch in s.architectures().iter().flatten() {
        let name = arch.to_string();
        let a: ScmpArch = name
            .parse()
            .map_err(seccomp_err(format!("seccomp architecture {name}")))?;
        f.add_arch(a)
            .map_err(seccomp_err(format!("adding seccomp architecture {name}")))?;
    }
    // The same flags as seccomp(2) takes them, for a program loaded
    // without libseccomp (the ENOSYS-patched one below).
    let mut kernel_flags: libc::c_ulong = 0;
    for flag in s.flags().iter().flatten() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {
                kernel_flags |= libc::SECCOMP_FILTER_FLAG_TSYNC;
                f.set_ctl_tsync(true)
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => {
                kernel_flags |= libc::SECCOMP_FILTER_FLAG_LOG;
                f.set_ctl_log(true)
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                kernel_flags |= libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW;
                f.set_ctl_ssb(true)
            }
            // Only meaningful for a seccomp agent, which is refused above
            // anyway for SCMP_ACT_NOTIFY.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(Error::Unsupported {
                    what:
                        "seccomp flag SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (for seccomp agents)",
                    hint: "remove it from linux.seccomp.flags",
                })
            }
        }
        .map_err(seccomp_err(format!("seccomp flag {flag}")))?;
    }
    for rule in s.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let sets = condition_sets(rule.args().as_deref().unwrap_or(&[]));
        for name in rule.names() {
            // runc skips what this libseccomp cannot name.
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            for conds in &sets {
                f.add_rule_conditional(act, sc, conds)
                    .map_err(seccomp_err(format!("the seccomp rule for {name}")))?;
            }
        }
    }
    // runc's patchbpf: syscalls newer than the profile get ENOSYS rather
    // than the default action, unless that action already lets them run.
    let names = s
        .syscalls()
        .iter()
        .flatten()
        .flat_map(|r| r.names().iter().map(String::as_str));
    let max = super::seccomp_enosys::max_native_syscall(names);
    let patched = match (default, max) {
        (ScmpAction::Allow, _) | (_, None) => None,
        (_, Some(max)) => Some(super::seccomp_enosys::patch(&f, max, kernel_flags).map_err(
            |source| Error::SeccompPatch {
                what: "adding the ENOSYS stub to the seccomp filter",
                source,
            },
        )?),
    };
    Ok(Filter { ctx: f, patched })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(index: usize, value: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
        serde_json::from_value(serde_json::json!({
            "index": index, "value": value, "op": op
        }))
        .unwrap()
    }

    #[test]
    fn errno_defaults_to_eperm_and_notify_is_refused() {
        assert_eq!(
            action(LinuxSeccompAction::ScmpActErrno, None).unwrap(),
            ScmpAction::Errno(libc::EPERM)
        );
        assert_eq!(
            action(LinuxSeccompAction::ScmpActErrno, Some(38)).unwrap(),
            ScmpAction::Errno(38)
        );
        assert!(matches!(
            action(LinuxSeccompAction::ScmpActNotify, None),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn conditions_on_one_argument_make_one_rule_each() {
        use LinuxSeccompOperator::*;
        let and = [arg(0, 1, ScmpCmpEq), arg(1, 2, ScmpCmpEq)];
        assert_eq!(condition_sets(&and).len(), 1);
        assert_eq!(condition_sets(&and)[0].len(), 2);
        let or = [arg(0, 1, ScmpCmpEq), arg(0, 2, ScmpCmpEq)];
        assert_eq!(condition_sets(&or).len(), 2);
        assert_eq!(condition_sets(&[]), vec![Vec::<ScmpArgCompare>::new()]);
    }

    #[test]
    fn a_docker_like_profile_builds() {
        let s: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["read", "write", "no_such_syscall_here"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 1, "value": 511, "valueTwo": 511, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
            ]
        }))
        .unwrap();
        build(&s).unwrap();
    }

    #[test]
    fn seccomp_agents_are_checked_as_runc_checks_them() {
        let profile = |rules: serde_json::Value| -> LinuxSeccomp {
            serde_json::from_value(serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "listenerPath": "/nonexistent/agent.sock",
                "syscalls": rules,
            }))
            .unwrap()
        };
        // A listener without any notify rule is ignored, as by runc.
        build(&profile(serde_json::json!([]))).unwrap();
        let write = build(&profile(serde_json::json!(
            [{"names": ["write"], "action": "SCMP_ACT_NOTIFY"}]
        )))
        .unwrap_err();
        assert!(
            write
                .to_string()
                .contains("SCMP_ACT_NOTIFY cannot be used for the write syscall"),
            "{write}"
        );
        let unreachable = build(&profile(serde_json::json!(
            [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        )))
        .unwrap_err();
        assert!(
            unreachable
                .to_string()
                .contains("failed to connect with seccomp agent"),
            "{unreachable}"
        );
    }
}
