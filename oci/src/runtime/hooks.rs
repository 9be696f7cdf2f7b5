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
        let io = |op: &'static str| {
            let path = h.path().clone();
            move |source| Error::HookIo {
                which,
                op,
                path,
                source,
            }
        };
        let mut child = cmd.spawn().map_err(io("starting"))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input);
        }
        let timeout = h.timeout().map(|t| Duration::from_secs(t.max(1) as u64));
        let start = Instant::now();
        let status = loop {
            match child.try_wait().map_err(io("waiting for"))? {
                Some(st) => break st,
                None => {
                    if let Some(after) = timeout.filter(|t| start.elapsed() > *t) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(Error::HookTimedOut {
                            which,
                            path: h.path().clone(),
                            after,
                        });
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
            return Err(Error::Hook {
                which,
                path: h.path().clone(),
                status: status_text(&status),
                stderr: err.trim().to_string(),
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;

    fn state() -> OciState {
        OciState {
            oci_version: "1.0.2".into(),
            id: "c1".into(),
            status: "creating".into(),
            pid: 1,
            bundle: "/b".into(),
            annotations: Default::default(),
        }
    }

    fn sh(script: &str, timeout: Option<i64>) -> Hook {
        let mut b = HookBuilder::default().path("/bin/sh").args(vec![
            "sh".into(),
            "-c".into(),
            script.into(),
        ]);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    }

    #[test]
    fn the_state_reaches_the_hook_and_a_failure_says_how_it_failed() {
        // The state on stdin: the hook fails only if it is not there.
        let ok = sh(
            r#"grep -q '"id":"c1"' && grep -qv x </dev/null; exit 0"#,
            None,
        );
        run("createRuntime", &[ok], &state()).unwrap();

        let failing = sh("echo broken >&2; exit 3", None);
        let e = run("poststart", &[failing], &state()).unwrap_err();
        assert!(
            matches!(&e, Error::Hook { which: "poststart", status, stderr, .. }
                if status == "exit status 3" && stderr == "broken"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "error running hook /bin/sh (poststart): exit status 3: broken"
        );

        let slow = sh("sleep 5", Some(1));
        let e = run("prestart", &[slow], &state()).unwrap_err();
        assert!(matches!(e, Error::HookTimedOut { .. }), "{e:?}");

        let missing = HookBuilder::default()
            .path("/nonexistent/hook")
            .build()
            .unwrap();
        let e = run("poststop", &[missing], &state()).unwrap_err();
        match &e {
            Error::HookIo { op, source, .. } => {
                assert_eq!(*op, "starting");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
    }
}
