//! OCI hooks: run with the container's state on stdin, as the runtime spec
//! says, with their timeout.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks, Spec};
use serde::Serialize;

use crate::error::{Error, Result};

/// The state document hooks and `ferry state` show (runtime-spec state).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub status: String,
    pub pid: i32,
    pub bundle: String,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The hooks of one point of the spec (`|h| h.poststart().clone()`).
pub fn of(spec: &Spec, point: impl Fn(&Hooks) -> Option<Vec<Hook>>) -> Vec<Hook> {
    spec.hooks().as_ref().and_then(point).unwrap_or_default()
}

/// What runs once the namespaces exist, in the runtime's namespace: the
/// deprecated prestart hooks, then createRuntime (as runc runs them).
pub fn create_runtime(spec: &Spec) -> Vec<Hook> {
    let mut pre = of(spec, |h| {
        #[allow(deprecated)]
        h.prestart().clone()
    });
    pre.extend(of(spec, |h| h.create_runtime().clone()));
    pre
}

/// Runs `hooks` in order; the first failure stops them (`which` names the
/// hook point in the error).
pub fn run(which: &'static str, hooks: &[Hook], state: &OciState) -> Result<()> {
    let input = serde_json::to_vec(state).unwrap_or_default();
    for h in hooks {
        let args = h
            .args()
            .clone()
            .unwrap_or_else(|| vec![h.path().to_string_lossy().into_owned()]);
        let mut cmd = Command::new(h.path());
        if args.len() > 1 {
            cmd.args(&args[1..]);
        }
        if let Some(a0) = args.first() {
            use std::os::unix::process::CommandExt;
            cmd.arg0(a0);
        }
        cmd.env_clear();
        for e in h.env().clone().unwrap_or_default() {
            if let Some((k, v)) = e.split_once('=') {
                cmd.env(k, v);
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let fail = |reason: String| Error::Hook {
            which,
            path: h.path().clone(),
            reason,
        };
        let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input);
        }
        let timeout = h.timeout().map(|t| Duration::from_secs(t.max(1) as u64));
        let start = Instant::now();
        let status = loop {
            match child.try_wait().map_err(|e| fail(e.to_string()))? {
                Some(st) => break st,
                None => {
                    if timeout.is_some_and(|t| start.elapsed() > t) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(fail(format!("timed out after {:?}", timeout.unwrap())));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Err(fail(format!("{}: {}", status_text(&status), err.trim())));
        }
    }
    Ok(())
}

/// An exit status as Go's os/exec prints it (`exit status 1`, `signal:
/// bad system call`), the words runc's hook errors carry.
fn status_text(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(sig) => {
            // SAFETY: strsignal returns a static (or thread-local) string.
            let text = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(sig)) }
                .to_string_lossy()
                .into_owned();
            format!("signal: {}", crate::error::go_spelling(&text))
        }
        None => status.to_string(),
    }
}
