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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

static LOG_FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Sets logging up: `$FERRY_LOG` (an env-filter) if set, else debug with
/// `debug`, else `default` (runc's commands log warnings only; `ferry
/// serve` logs each move at info).
pub fn init(
    log: Option<&Path>,
    format: LogFormat,
    debug: bool,
    default: &str,
) -> anyhow::Result<()> {
    // netlink-packet-route (under rtnetlink 0.18, held for one nix) warns
    // on every link dump of a kernel whose IFLA_INET6_CONF has grown
    // fields it does not know (6.18: 240 bytes where it expects 236):
    // nothing Ferry reads, so only its errors are shown.
    let level = if debug { "debug" } else { default };
    let filter = EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},netlink_packet_route=error")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(Logrus {
            json: format == LogFormat::Json,
        });
    match log {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("opening log file {}: {e}", path.display()))?;
            *LOG_FILE.lock().unwrap() = Some(file.try_clone()?);
            builder.with_writer(Mutex::new(file)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// One log line as runc's logrus writes it, which go-runc, dockerd and
/// containerd parse (and runc's own tests grep): text
/// `time="..." level=debug msg="..."`, or json
/// `{"level":"debug","msg":"...","time":"..."}`. An event's fields other
/// than its message follow the message as `key=value` in text, and are
/// keys of their own in json, as logrus's `WithFields` writes them (a
/// field named like one of the three is `fields.NAME`, as in logrus).
struct Logrus {
    json: bool,
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, serde_json::Value)>,
}

impl Fields {
    fn field(&mut self, field: &tracing::field::Field, value: serde_json::Value) {
        match (field.name(), value) {
            ("message", serde_json::Value::String(m)) => self.message = m,
            ("message", v) => self.message = v.to_string(),
            (name, v) => self.rest.push((name, v)),
        }
    }

    /// The fields after the message, as logrus's text formatter writes
    /// them: ` key=value`, strings quoted.
    fn text(&self) -> String {
        self.rest.iter().map(|(k, v)| format!(" {k}={v}")).collect()
    }
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.field(field, format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.field(field, value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.field(field, value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.field(field, value.into());
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.field(field, value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.field(field, value.into());
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Logrus
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut f = Fields::default();
        event.record(&mut f);
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            tracing::Level::DEBUG => "debug",
            tracing::Level::TRACE => "trace",
        };
        if self.json {
            let mut line = serde_json::Map::new();
            for (k, v) in f.rest {
                let key = match k {
                    "level" | "msg" | "time" => format!("fields.{k}"),
                    _ => k.to_string(),
                };
                line.insert(key, v);
            }
            line.insert("level".into(), level.into());
            line.insert("msg".into(), f.message.into());
            line.insert("time".into(), humantime_now().into());
            writeln!(w, "{}", serde_json::Value::Object(line))
        } else {
            let msg = format!("{}{}", f.message, f.text());
            // Go's %q quoting, which logrus uses for values with spaces.
            writeln!(
                w,
                "time={:?} level={level} msg={}",
                humantime_now(),
                serde_json::Value::String(msg)
            )
        }
    }
}

/// Reports a command's failure where runc would: always on stderr, and also
/// in the log file so that dockerd/containerd can show it to the user.
pub fn report_error(err: &anyhow::Error, format: LogFormat) {
    let msg = crate::errors::message(err);
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
