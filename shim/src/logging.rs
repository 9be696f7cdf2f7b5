//! Logging set-up with runc's conventions: `--log FILE` and
//! `--log-format text|json`. dockerd and containerd read the log file after a
//! failed command and, in json mode, parse one object per line with `level`,
//! `msg` and `time` keys (runc's logrus output), so error reports follow that
//! shape.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

static LOG_FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

pub fn init(log: Option<&Path>, format: LogFormat, debug: bool) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| {
        EnvFilter::new(if debug {
            "debug"
        } else {
            "warn,libcgroups=error"
        })
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("opening log file {}: {e}", path.display()))?;
            *LOG_FILE.lock().unwrap() = Some(file.try_clone()?);
            let writer = Mutex::new(file);
            match format {
                LogFormat::Json => builder
                    .json()
                    .flatten_event(true)
                    .with_writer(writer)
                    .init(),
                LogFormat::Text => builder.with_ansi(false).with_writer(writer).init(),
            }
        }
        None => match format {
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr)
                .init(),
            LogFormat::Text => builder.with_writer(std::io::stderr).init(),
        },
    }
    Ok(())
}

/// Reports a command's failure where runc would: always on stderr, and also
/// in the log file so that dockerd/containerd can show it to the user.
pub fn report_error(err: &anyhow::Error, format: LogFormat) {
    let msg = format!("{err:#}");
    eprintln!("ferry: {msg}");
    if let Some(file) = LOG_FILE.lock().unwrap().as_mut() {
        let line = match format {
            LogFormat::Json => serde_json::json!({
                "level": "error",
                "msg": msg,
                "time": humantime_now(),
            })
            .to_string(),
            LogFormat::Text => format!("level=error msg={msg:?}"),
        };
        let _ = writeln!(file, "{line}");
    }
}

/// RFC 3339, which go-runc parses the "time" of runtime log lines as.
fn humantime_now() -> String {
    ferry_oci::runtime::container::now_rfc3339()
}
