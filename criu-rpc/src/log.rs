//! Quoting CRIU's log file in errors.
//!
//! Like runc's `logCriuErrors`, we show the lines that matter rather than
//! pointing at a file: every `Error (` line (CRIU's pr_err format), with a
//! few lines of context before the first one, capped so that a runaway log
//! does not flood the terminal.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// Error lines of one CRIU log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogExcerpt {
    /// The log file, for the user to read in full.
    pub path: PathBuf,
    /// The quoted lines, in file order.
    pub lines: Vec<String>,
}

/// Lines of context before the first error.
const CONTEXT: usize = 4;
/// At most this many lines are quoted.
const MAX_LINES: usize = 24;
/// Only the end of a huge log is read: errors are near the end.
const MAX_READ: u64 = 4 << 20;

impl LogExcerpt {
    /// Reads the error lines of the log at `path`; `None` when the file
    /// cannot be read or has no error line.
    pub fn read(path: PathBuf, file: &mut std::fs::File) -> Option<LogExcerpt> {
        let len = file.metadata().ok()?.len();
        if len > MAX_READ {
            file.seek(SeekFrom::Start(len - MAX_READ)).ok()?;
        }
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf);
        let lines = select(&text);
        (!lines.is_empty()).then_some(LogExcerpt { path, lines })
    }
}

/// The error lines of a CRIU log and a little context before the first.
pub(crate) fn select(text: &str) -> Vec<String> {
    let all: Vec<&str> = text.lines().collect();
    let is_err = |l: &str| l.contains("Error (") || l.contains("BUG at ");
    let Some(first) = all.iter().position(|l| is_err(l)) else {
        return Vec::new();
    };
    let mut out: Vec<String> = all[first.saturating_sub(CONTEXT)..first]
        .iter()
        .map(|l| l.to_string())
        .collect();
    for l in &all[first..] {
        if is_err(l) {
            if out.len() == MAX_LINES {
                out.push("...".to_string());
                break;
            }
            out.push(l.to_string());
        }
    }
    out
}

impl LogExcerpt {
    /// The most telling error: CRIU's errors cascade (a socket that cannot
    /// be restored, then the fd it was for, then the task, then "Restoring
    /// FAILED.", then the clean-up's own complaints), so it is the first
    /// one before the closing FAILED line that is not harmless noise (the
    /// `rlimit: Can't setup RLIMIT_NOFILE` of every unprivileged-resource
    /// host, which is also CRIU's own `cr_errmsg`), without the timestamp
    /// and source location.
    pub fn cause(&self) -> Option<&str> {
        let msgs: Vec<&str> = self
            .lines
            .iter()
            .filter_map(|l| {
                let at = l.find("Error (").or_else(|| l.find("BUG at "))?;
                let msg = &l[at..];
                let msg = msg.find("): ").map(|i| &msg[i + 3..]).unwrap_or(msg);
                Some(msg.trim())
            })
            .collect();
        let end = msgs
            .iter()
            .rposition(|m| m.ends_with("FAILED."))
            .unwrap_or(msgs.len());
        msgs[..end]
            .iter()
            .find(|m| !m.is_empty() && !m.starts_with("rlimit: Can't setup RLIMIT_NOFILE"))
            .or_else(|| {
                msgs.iter()
                    .rev()
                    .find(|m| !m.ends_with("FAILED.") && !m.is_empty())
            })
            .copied()
    }
}

impl fmt::Display for LogExcerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\ncriu log {}:", self.path.display())?;
        for l in &self.lines {
            write!(f, "\n  {l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_errors_with_context() {
        let log = "\
(00.000001) Version: 4.2.1
(00.000002) a
(00.000003) b
(00.000004) c
(00.000005) d
(00.000006) e
(00.000007) Error (criu/cr-dump.c:1): first
(00.000008) f
(00.000009) Error (criu/cr-dump.c:2): second
";
        let got = select(log);
        assert_eq!(
            got,
            [
                "(00.000003) b",
                "(00.000004) c",
                "(00.000005) d",
                "(00.000006) e",
                "(00.000007) Error (criu/cr-dump.c:1): first",
                "(00.000009) Error (criu/cr-dump.c:2): second",
            ]
        );
    }

    #[test]
    fn cause_is_the_last_real_error() {
        let e = LogExcerpt {
            path: PathBuf::from("x"),
            lines: select(
                "(00.1) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE\n\
                 (00.2) Error (criu/cr-restore.c:1237): Can't fork for 11996: File exists\n\
                 (00.3) Error (criu/cr-restore.c:2331): Restoring FAILED.\n",
            ),
        };
        assert_eq!(e.cause(), Some("Can't fork for 11996: File exists"));
    }

    #[test]
    fn cause_is_the_root_of_a_cascade_not_the_clean_up() {
        let e = LogExcerpt {
            path: PathBuf::from("x"),
            lines: select(
                "(00.1) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self\n\
                 (00.2) 2: Error (soccr/soccr.c:819): Can't restore not-sent send queue data: Broken pipe\n\
                 (00.3) 2: Error (criu/files.c:1221): Unable to open fd=324 id=0x183\n\
                 (00.4) 1: Error (criu/cr-restore.c:1265): 2 exited, status=1\n\
                 (00.5) Error (criu/cr-restore.c:2331): Restoring FAILED.\n\
                 (00.6) Error (criu/cgroup.c:2055): cg: cgroupd: recv req error: No such file or directory\n",
            ),
        };
        assert_eq!(
            e.cause(),
            Some("Can't restore not-sent send queue data: Broken pipe")
        );
    }

    #[test]
    fn no_errors_no_excerpt() {
        assert!(select("(00.1) Warn (x): y\n(00.2) fine\n").is_empty());
    }

    #[test]
    fn caps_the_quote() {
        let log: String = (0..100).map(|i| format!("Error (x.c:{i}): e\n")).collect();
        let got = select(&log);
        assert_eq!(got.len(), MAX_LINES + 1);
        assert_eq!(got.last().unwrap(), "...");
    }
}
