//! How a failed command ends, for the scripts that run it: its exit code
//! (README, "Exit codes") and, with `--json` (`migrate`, `checkpoint`,
//! `restore`), one JSON object on stdout naming the error's kind, its
//! message, CRIU's part when CRIU failed (errno, message, log lines) and a
//! destination's pre-flight problems one by one. The message still goes to
//! stderr (and the log file), as runc reports failures.
//!
//! The fix an error's message suggests, when it is this command line's
//! (a command to run, a flag, an environment variable), is added here
//! ([`hint`]): the libraries' messages name the thing and the problem only,
//! because the containerd shim and the migration agent report the same
//! errors to callers that have no `ferry` command line to type into.

use ferry_oci::migrate::protocol::CriuFailure;
use ferry_oci::Error;

/// The command failed; whatever it was acting on is as it was (a move's
/// source runs on).
pub const FAILED: u8 = 1;
/// The destination refused the container in pre-flight: nothing was
/// frozen.
pub const REFUSED: u8 = 4;
/// The source committed and the destination's answer was lost: the
/// container is left frozen here (`ferry resume --force` once the
/// destination is known not to run it).
pub const OUTCOME_UNKNOWN: u8 = 5;
/// The move failed and resuming its source failed too.
pub const RESUME_FAILED: u8 = 6;

/// The first ferry-oci error in `e`'s chain (below the command's context).
fn oci_error(e: &anyhow::Error) -> Option<&Error> {
    e.chain().find_map(|c| c.downcast_ref::<Error>())
}

/// The exit code for `e` (runc's 1 for any failure, Ferry's own codes for
/// a move's outcomes a script must tell apart; a move interrupted by a
/// signal exits as the shell reports a death by it, 128 + its number).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match oci_error(e) {
        Some(Error::Refused { .. }) => REFUSED,
        Some(Error::OutcomeUnknown { .. }) => OUTCOME_UNKNOWN,
        Some(Error::ResumeFailed { .. }) => RESUME_FAILED,
        Some(Error::Interrupted { why, .. }) => match why.as_str() {
            "SIGHUP" => 128 + 1,
            "SIGTERM" => 128 + 15,
            _ => 128 + 2,
        },
        _ => FAILED,
    }
}

/// The command-line fix for the first error in `e`'s chain that has one.
pub fn hint(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|c| {
        if let Some(o) = c.downcast_ref::<Error>() {
            oci_hint(o)
        } else {
            c.downcast_ref::<criu_rpc::Error>().and_then(criu_hint)
        }
    })
}

/// `e`'s message, then its hint (`{e:#}: hint`), as it is printed.
pub fn message(e: &anyhow::Error) -> String {
    match hint(e) {
        Some(h) => format!("{e:#}: {h}"),
        None => format!("{e:#}"),
    }
}

const CRIU_PATH: &str = "--criu or FERRY_CRIU";
const DOCKER_HOST: &str = "set --docker-host or DOCKER_HOST";

fn oci_hint(e: &Error) -> Option<String> {
    Some(match e {
        Error::ContainerExists { id } => format!("pick another id or `ferry delete {id}`"),
        Error::NotAnImageDir { .. } => image_path_hint(),
        Error::NoConfig { .. } => "`ferry spec` writes one".into(),
        Error::ImportDestNotEmpty { .. } => "give another --bundle".into(),
        Error::OutcomeUnknown { id, to, .. } => {
            format!("if {to} does not run it, `ferry resume --force {id}` brings it back here")
        }
        Error::MoveCommitted { id, to, .. } => format!(
            "check {to}, then remove this copy with `ferry delete --force {id}`, or resume it \
             anyway with `ferry resume --force {id}`"
        ),
        Error::DockerHost { .. } => format!("{DOCKER_HOST} to unix:///path/docker.sock"),
        Error::DockerConnect { .. } => format!("is dockerd running? {DOCKER_HOST}"),
        // Transparent: the criu-rpc error is not in the chain of its own.
        Error::Criu(c) | Error::CorruptImage(c) => return criu_hint(c),
        Error::ResumeFailed { failed, .. } => return oci_hint(failed),
        Error::Interrupted { source, .. } => return oci_hint(source),
        _ => return None,
    })
}

fn criu_hint(e: &criu_rpc::Error) -> Option<String> {
    Some(match e {
        criu_rpc::Error::CriuNotFound { .. } => {
            format!("install it (hack/setup builds it) or give its path ({CRIU_PATH})")
        }
        criu_rpc::Error::CriuNotExecutable { .. } => {
            format!("fix its mode or give another path ({CRIU_PATH})")
        }
        criu_rpc::Error::NotAnImageDir { .. } => image_path_hint(),
        _ => return None,
    })
}

fn image_path_hint() -> String {
    "give the --image-path that `ferry checkpoint` wrote".into()
}

#[derive(serde::Serialize)]
struct Problem {
    kind: &'static str,
    message: String,
}

/// `{"error": {...}}` for `e`.
pub fn json(e: &anyhow::Error) -> serde_json::Value {
    let oci = oci_error(e);
    let kind = match oci {
        Some(o) => o.kind(),
        None if e.chain().any(|c| c.is::<criu_rpc::Error>()) => "criu",
        None => "other",
    };
    let mut error = serde_json::json!({
        "kind": kind,
        "message": format!("{e:#}"),
    });
    if let Some(h) = hint(e) {
        error["hint"] = h.into();
    }
    // What CRIU said: on the destination when the move failed there, here
    // otherwise.
    let destination = oci.and_then(Error::destination_failure);
    let criu = match destination {
        Some(d) => {
            error["stage"] = serde_json::to_value(d.stage).unwrap_or_default();
            error["destination"] = d.message.clone().into();
            d.criu.clone()
        }
        None => ferry_oci::migrate::protocol::criu_error(e.as_ref()).map(CriuFailure::from),
    };
    if let Some(c) = criu {
        error["criu"] = serde_json::to_value(c).unwrap_or_default();
    }
    if let Some(Error::Init {
        step,
        errno: Some(n),
        ..
    }) = oci
    {
        error["step"] = step.clone().into();
        error["errno"] = (*n as i32).into();
        error["errno_name"] = format!("{n:?}").into();
    }
    if let Some(Error::Refused { problems }) = oci {
        let problems: Vec<Problem> = problems
            .iter()
            .map(|p| Problem {
                kind: p.kind(),
                message: p.to_string(),
            })
            .collect();
        error["problems"] = serde_json::to_value(problems).unwrap_or_default();
    }
    serde_json::json!({ "error": error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_command_line_fix_follows_the_librarys_message() {
        let e =
            anyhow::Error::from(Error::ContainerExists { id: "c1".into() }).context("creating c1");
        assert_eq!(
            message(&e),
            "creating c1: container `c1` already exists: pick another id or `ferry delete c1`"
        );
        assert_eq!(
            json(&e)["error"]["hint"],
            "pick another id or `ferry delete c1`"
        );
    }

    #[test]
    fn criu_errors_get_their_hint_through_the_transparent_variant() {
        let missing = criu_rpc::Error::CriuNotFound {
            path: PathBuf::from("/nonexistent/criu"),
        };
        let e = anyhow::Error::from(Error::Criu(missing));
        let m = message(&e);
        assert!(
            m.starts_with("criu binary `/nonexistent/criu` not found"),
            "{m}"
        );
        assert!(m.ends_with("(--criu or FERRY_CRIU)"), "{m}");
        // Bare, as a command that calls criu-rpc directly reports it.
        let bare = anyhow::Error::from(criu_rpc::Error::NotAnImageDir {
            path: PathBuf::from("/x"),
        });
        assert_eq!(
            hint(&bare).as_deref(),
            Some("give the --image-path that `ferry checkpoint` wrote")
        );
    }

    #[test]
    fn errors_without_a_command_line_fix_are_printed_as_they_are() {
        let e = anyhow::Error::from(Error::InvalidId { id: "a/b".into() });
        assert_eq!(hint(&e), None);
        assert_eq!(message(&e), format!("{e:#}"));
    }
}
