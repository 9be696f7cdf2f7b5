//! How a failed command ends, for the scripts that run it: its exit code
//! (README, "Exit codes") and, with `--json` (`migrate`, `checkpoint`,
//! `restore`), one JSON object on stdout naming the error's kind, its
//! message, CRIU's part when CRIU failed (errno, message, log lines) and a
//! destination's pre-flight problems one by one. The message still goes to
//! stderr (and the log file), as runc reports failures.

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
