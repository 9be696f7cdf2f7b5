//! The serving shim's log: containerd's `log` fifo in the bundle.
//!
//! containerd opens the reading end of `<bundle>/log` before it runs
//! `start` (runtime/v2's `openShimLog`) and copies each line into its own
//! log, so the shim writes the lines logrus writes (containerd's shims log
//! through logrus's text formatter): `time="RFC 3339" level=info msg="..."`.
//! A containerd that restarts reopens the fifo; a line written while no
//! one reads is lost (EPIPE, never SIGPIPE: Rust ignores the signal), as
//! with containerd's own shims.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The `log` crate's logger on the fifo.
struct FifoLogger {
    fifo: Mutex<File>,
}

/// Logs to `fifo` from now on: debug and up with containerd's `-debug`,
/// info and up otherwise (containerd's shims: logrus at info unless
/// `-debug`).
pub fn init(fifo: &Path, debug: bool) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open(fifo)?;
    let level = if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    log::set_boxed_logger(Box::new(FifoLogger {
        fifo: Mutex::new(file),
    }))
    .map_err(std::io::Error::other)?;
    log::set_max_level(level);
    Ok(())
}

impl log::Log for FifoLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(
            SystemTime::now(),
            record.level(),
            &record.args().to_string(),
        );
        let mut fifo = self.fifo.lock().unwrap_or_else(|p| p.into_inner());
        // No one to tell when containerd is not reading.
        let _ = fifo.write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// One logrus text line (with its newline).
fn format_line(now: SystemTime, level: log::Level, msg: &str) -> String {
    let level = match level {
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    };
    let mut line = format!("time=\"{}\" level={level} msg=\"", rfc3339(now));
    // logrus quotes with Go's %q: backslashes, quotes and control
    // characters escaped, so one record stays one line.
    for c in msg.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\t' => line.push_str("\\t"),
            '\r' => line.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push_str("\"\n");
    line
}

/// `t` in RFC 3339, UTC, with nanoseconds (logrus's default timestamp
/// format, `time.RFC3339Nano`).
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (the proleptic Gregorian
    // calendar, in 400-year eras of 146,097 days).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        // 2024-02-29T12:34:56.5Z (a leap day): `date -u -d @1709210096`.
        let t = UNIX_EPOCH + Duration::new(1_709_210_096, 500_000_000);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.500000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn one_record_one_line() {
        let line = format_line(UNIX_EPOCH, log::Level::Warn, "a \"b\"\nc\\");
        assert_eq!(
            line,
            "time=\"1970-01-01T00:00:00.000000000Z\" level=warning msg=\"a \\\"b\\\"\\nc\\\\\"\n"
        );
    }
}
