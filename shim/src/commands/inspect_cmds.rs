//! Commands that look at a container or the runtime: ps, update, events,
//! features, spec.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_oci::runtime::events::{Event, OomWait, OomWatch};
use ferry_oci::runtime::{spec::default_spec_text, Container, Status};
use oci_spec::runtime::LinuxResources;

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    pub id: String,
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Options passed to ps (default -ef).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

pub fn ps(cli: &Cli, a: &PsArgs) -> anyhow::Result<ExitCode> {
    let c = Container::load(&cli.root, &a.id)?;
    let pids: Vec<i32> = c.pids()?.into_iter().map(|p| p.as_raw()).collect();
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            // runc runs ps and keeps the header and the container's lines.
            let args = if a.ps_args.is_empty() {
                vec!["-ef".to_string()]
            } else {
                a.ps_args.clone()
            };
            let out = Command::new("ps")
                .args(&args)
                .output()
                .context("running ps")?;
            anyhow::ensure!(
                out.status.success(),
                "ps {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or("");
            let col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .context("ps output has no PID column")?;
            println!("{header}");
            for l in lines {
                if l.split_whitespace()
                    .nth(col)
                    .and_then(|p| p.parse::<i32>().ok())
                    .is_some_and(|p| pids.contains(&p))
                {
                    println!("{l}");
                }
            }
        }
        f => anyhow::bail!("invalid format `{f}`: use table or json"),
    }
    Ok(ExitCode::SUCCESS)
}

/// runc's update flags: values are strings parsed as runc parses them
/// (so that `-1` and `50M` are values, and errors use runc's words).
#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct UpdateArgs {
    pub id: String,
    /// Path to a file with the resources to update (linux.resources JSON),
    /// or `-` for stdin; the other flags are then ignored.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Per cgroup weight, 10 to 1000.
    #[arg(long = "blkio-weight")]
    pub blkio_weight: Option<String>,
    /// CPU CFS period (in usecs). 0 to use system default.
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<String>,
    /// CPU CFS hardcap limit (in usecs). Allowed cpu time in a given period.
    #[arg(long = "cpu-quota")]
    pub cpu_quota: Option<String>,
    /// CPU shares (relative weight vs. other containers).
    #[arg(long = "cpu-share")]
    pub cpu_share: Option<String>,
    /// CPU realtime period (in usecs). 0 to use system default.
    #[arg(long = "cpu-rt-period")]
    pub cpu_rt_period: Option<String>,
    /// CPU realtime hardcap limit (in usecs).
    #[arg(long = "cpu-rt-runtime")]
    pub cpu_rt_runtime: Option<String>,
    /// CPU(s) to use.
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    /// Memory node(s) to use.
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    /// Obsolete; ignored with a warning, as by runc.
    #[arg(long = "kernel-memory", hide = true)]
    pub kernel_memory: Option<String>,
    /// Obsolete; ignored with a warning, as by runc.
    #[arg(long = "kernel-memory-tcp", hide = true)]
    pub kernel_memory_tcp: Option<String>,
    /// Memory limit (in bytes; k, m, g suffixes).
    #[arg(long)]
    pub memory: Option<String>,
    /// Memory reservation or soft_limit (in bytes).
    #[arg(long = "memory-reservation")]
    pub memory_reservation: Option<String>,
    /// Total memory usage (memory + swap); -1 for unlimited swap.
    #[arg(long = "memory-swap")]
    pub memory_swap: Option<String>,
    /// Maximum number of pids allowed in the container.
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<String>,
    /// Intel RDT/CAT L3 cache schema (not supported by Ferry).
    #[arg(long = "l3-cache-schema")]
    pub l3_cache_schema: Option<String>,
    /// Intel RDT/MBA memory bandwidth schema (not supported by Ferry).
    #[arg(long = "mem-bw-schema")]
    pub mem_bw_schema: Option<String>,
}

pub fn update(cli: &Cli, a: &UpdateArgs) -> anyhow::Result<ExitCode> {
    use ferry_oci::runtime::update as up;
    let c = Container::load(&cli.root, &a.id)?;
    let r: LinuxResources = match &a.resources {
        Some(p) => {
            let text = if p.as_os_str() == "-" {
                let mut s = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read(p).with_context(|| format!("open {}", p.display()))?
            };
            up::resources_from_json(&text).context("decoding the resources JSON")?
        }
        None => {
            // runc ignores empty strings, as unset flags.
            fn s(v: &Option<String>) -> Option<&str> {
                v.as_deref().filter(|v| !v.is_empty())
            }
            let mut f = up::UpdateFlags::default();
            if let Some(v) = s(&a.blkio_weight) {
                f.blkio_weight = Some(up::parse_int("blkio-weight", v)? as u16);
            }
            f.cpuset_cpus = s(&a.cpuset_cpus).map(str::to_string);
            f.cpuset_mems = s(&a.cpuset_mems).map(str::to_string);
            f.cpu_period = s(&a.cpu_period)
                .map(|v| up::parse_uint("cpu-period", v))
                .transpose()?;
            f.cpu_rt_period = s(&a.cpu_rt_period)
                .map(|v| up::parse_uint("cpu-rt-period", v))
                .transpose()?;
            f.cpu_share = s(&a.cpu_share)
                .map(|v| up::parse_uint("cpu-share", v))
                .transpose()?;
            f.cpu_quota = s(&a.cpu_quota)
                .map(|v| up::parse_int("cpu-quota", v))
                .transpose()?;
            f.cpu_rt_runtime = s(&a.cpu_rt_runtime)
                .map(|v| up::parse_int("cpu-rt-runtime", v))
                .transpose()?;
            f.memory = s(&a.memory)
                .map(|v| up::parse_memory("memory", v))
                .transpose()?;
            f.memory_swap = s(&a.memory_swap)
                .map(|v| up::parse_memory("memory-swap", v))
                .transpose()?;
            f.memory_reservation = s(&a.memory_reservation)
                .map(|v| up::parse_memory("memory-reservation", v))
                .transpose()?;
            let kernel = s(&a.kernel_memory)
                .map(|v| up::parse_memory("kernel-memory", v))
                .transpose()?;
            let kernel_tcp = s(&a.kernel_memory_tcp)
                .map(|v| up::parse_memory("kernel-memory-tcp", v))
                .transpose()?;
            if kernel.unwrap_or(0) != 0 || kernel_tcp.unwrap_or(0) != 0 {
                tracing::warn!("Kernel memory settings are ignored and will be removed");
            }
            f.pids_limit = s(&a.pids_limit)
                .map(|v| up::parse_int("pids-limit", v))
                .transpose()?;
            f.resources()
        }
    };
    // runc's words; Ferry has no Intel RDT support at all.
    anyhow::ensure!(
        a.l3_cache_schema.as_deref().unwrap_or("").is_empty(),
        "Intel RDT/CAT: l3 cache schema is not enabled"
    );
    anyhow::ensure!(
        a.mem_bw_schema.as_deref().unwrap_or("").is_empty(),
        "Intel RDT/MBA: memory bandwidth schema is not enabled"
    );
    c.update(&r)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    pub id: String,
    /// Print the statistics once and exit.
    #[arg(long)]
    pub stats: bool,
    /// Interval between statistics.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
}

/// Go's time.ParseDuration, which runc's `--interval` takes: a sequence of
/// decimal numbers with units (ns, us, µs, ms, s, m, h), such as `1m30s`
/// or `100ms`; a bare `0` is allowed.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration \"{s}\"");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(bad());
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let num: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[u..];
        total += num * nanos;
    }
    Ok(Duration::from_nanos(total as u64))
}

pub fn events(cli: &Cli, a: &EventsArgs) -> anyhow::Result<ExitCode> {
    // runc's events.go, step by step, with its words.
    let c = Container::load(&cli.root, &a.id)?;
    anyhow::ensure!(
        !a.interval.is_zero(),
        "duration interval must be greater than 0"
    );
    anyhow::ensure!(
        c.status() != Status::Stopped,
        "container with id {} is not running",
        a.id
    );
    let id = c.state.id.clone();
    let cgroup = c.state.cgroup.clone();
    // The container's lock is not held while watching: `delete` must be
    // able to take it, and is what ends the watch.
    drop(c);
    let print = |e: &Event| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, e)?;
        writeln!(out)?;
        out.flush()?;
        Ok(())
    };
    if a.stats {
        print(&Event::stats(&id, &cgroup.stats()?))?;
        return Ok(ExitCode::SUCCESS);
    }
    // runc's NotifyOOM fails without a memory controller; on a v2-only
    // host (no v1 memory hierarchy) the cgroup directory's presence is
    // what ends the watch instead.
    let watch = match cgroup.memory_v1_path() {
        Some(dir) => Some(OomWatch::new(&dir)?),
        None => None,
    };
    // Statistics every interval, the first after one interval (Go's
    // time.Tick); OOM events as they come; the end when the cgroup goes.
    let mut next = Instant::now() + a.interval;
    loop {
        let now = Instant::now();
        if now >= next {
            match cgroup.stats() {
                Ok(s) => print(&Event::stats(&id, &s))?,
                // runc logs a failed read and goes on.
                Err(e) => tracing::error!("{e}"),
            }
            next += a.interval;
            if next < now {
                next = now + a.interval;
            }
            continue;
        }
        match &watch {
            Some(w) => match w.wait(next - now)? {
                OomWait::Oom => print(&Event::oom(&id))?,
                OomWait::Gone => return Ok(ExitCode::SUCCESS),
                OomWait::Timeout => {}
            },
            None => {
                std::thread::sleep((next - now).min(Duration::from_millis(100)));
                if !cgroup.freezer_path().exists() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
}

pub fn features(_cli: &Cli) -> anyhow::Result<ExitCode> {
    let v = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async", "dirsync",
            "remount", "mand", "nomand", "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime",
            "strictatime", "bind", "rbind", "private", "rprivate", "shared", "rshared", "slave", "rslave",
            "unbindable", "runbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
                "knownFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
                "supportedFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {
            "org.opencontainers.runc.checkpoint.enabled": "true",
            "io.github.ferry.criu.version": criu_rpc::Criu::new().version().map(|v| v.to_string()).unwrap_or_default(),
        },
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct SpecArgs {
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// A spec for a rootless container (a user namespace mapping the
    /// caller to root), as runc's.
    #[arg(long)]
    pub rootless: bool,
}

pub fn spec(_cli: &Cli, a: &SpecArgs) -> anyhow::Result<ExitCode> {
    // runc writes config.json into the bundle directory, refusing to
    // overwrite one (runc's spec.go, same message).
    let p = a.bundle.join("config.json");
    anyhow::ensure!(!p.exists(), "File config.json exists. Remove it first");
    let rootless = a.rootless.then(|| {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    });
    std::fs::write(&p, default_spec_text(rootless))
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_does() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
