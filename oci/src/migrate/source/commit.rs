//! The commit: the point of no return of a move, and how its outcome is
//! found when its answer was lost (protocol 3's `Hello::Outcome`).

use std::time::{Duration, Instant};

use super::{connect, Plan};
use crate::error::{Error, Result};
use crate::migrate::channel::Channel;
use crate::migrate::protocol::{Decision, Hello, Reply, Step};
use crate::migrate::wire;
use crate::migrate::Progress;

/// What the commit came to.
pub(super) enum Committed {
    /// The destination runs the container.
    Running,
    /// The destination killed its copy (it never ran): the source resumes.
    Killed(Error),
    /// Nobody can tell: the source stays frozen.
    Unknown(Error),
}

/// Tells the destination to run its copy. An answer lost on the way is
/// asked for on new connections until the destination has decided: it
/// decides within its own silence bound (it kills a copy whose commit did
/// not come), so asking for twice that, plus a margin, outlasts it.
pub(super) fn commit(ctl: &mut Channel, token: &str, plan: &Plan<'_>) -> Committed {
    let answer = wire::send(ctl, &Step::Commit).and_then(|_| wire::recv::<_, Reply>(ctl));
    let lost = match answer {
        Ok(Reply::Running) => return Committed::Running,
        Ok(Reply::Failed { failure }) => {
            return Committed::Killed(Error::DestinationFailed {
                failure: Box::new(failure),
            })
        }
        Ok(_) => Error::Protocol {
            what: "an unexpected answer to the commit",
        },
        Err(e) => e,
    };
    (plan.progress)(Progress::Phase(
        "the commit's answer was lost: asking the destination what it did",
    ));
    let until = Instant::now() + 2 * plan.security.silence + Duration::from_secs(5);
    loop {
        match outcome(plan, token) {
            Ok(Decision::Running) => return Committed::Running,
            Ok(Decision::Killed) => return Committed::Killed(lost),
            Ok(Decision::Unknown) => return Committed::Unknown(lost),
            Ok(Decision::Deciding) | Err(_) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(500))
            }
            Ok(Decision::Deciding) | Err(_) => return Committed::Unknown(lost),
        }
    }
}

/// The destination's decision about move `token`.
fn outcome(plan: &Plan<'_>, token: &str) -> Result<Decision> {
    let mut c = connect(plan.to, plan.security)?;
    wire::send(
        &mut c,
        &Hello::Outcome {
            migration: token.to_string(),
        },
    )?;
    match wire::recv::<_, Reply>(&mut c)? {
        Reply::Outcome { decision } => Ok(decision),
        _ => Err(Error::Protocol {
            what: "an unexpected answer to the outcome question",
        }),
    }
}
