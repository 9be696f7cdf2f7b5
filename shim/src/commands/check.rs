//! `ferry check`: is this machine able to checkpoint, restore and migrate?
//!
//! Reports CRIU's version (Ferry needs >= 4.2: 4.1 cannot dump TCP sockets
//! on kernels >= 6.16), CRIU's own kernel check, and the features Ferry's
//! modes rely on: userfaultfd for post-copy (lazy pages), soft-dirty tracking
//! for pre-dumps, pidfd_store, a network lock backend, time namespaces. Fails
//! (non-zero exit) only when CRIU is missing, too old, or its check fails;
//! a missing optional feature is reported with what it disables.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use criu_rpc::{CheckOptions, Criu, Features, Version, MIN_VERSION};
use serde::Serialize;

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    criu: CriuReport,
    features: FeatureReport,
    /// fs.pipe-max-size: lazy pages need at least 4 MiB.
    pipe_max_size: Option<u64>,
    downtime: DowntimeReport,
}

/// Host settings that lengthen every move's downtime, whatever the
/// container (README, Benchmarks): reported, never changed by Ferry.
#[derive(Debug, Serialize)]
struct DowntimeReport {
    /// net.netfilter.nf_conntrack_buckets: CRIU walks the whole conntrack
    /// hash table twice for each network namespace it dumps, external or
    /// not (net.c `dump_nf_ct`, once for connections and once more for
    /// expectations, which it asks of the same table), ~9 ms per 262,144
    /// buckets each on this project's VMs.
    nf_conntrack_buckets: Option<u64>,
    /// /sys/kernel/rcu_expedited: the restore's first cgroup attach (criu
    /// placed in the container's cgroups, as runc does) waits an RCU grace
    /// period for cgroup_threadgroup_rwsem (~10 ms here) unless grace
    /// periods are expedited...
    rcu_expedited: Option<bool>,
    /// ...or a cgroup hierarchy is mounted with `favordynmods`, which keeps
    /// that lock on its slow path for good.
    cgroup_favordynmods: bool,
}

/// The conntrack table size under which its walks cost little (~0.6 ms).
const FEW_CONNTRACK_BUCKETS: u64 = 16384;

fn read_sysctl(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn cgroup_favordynmods() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|mi| {
            mi.lines().any(|l| {
                l.split_once(" - ").is_some_and(|(_, post)| {
                    let mut f = post.split(' ');
                    matches!(f.next(), Some("cgroup" | "cgroup2"))
                        && f.nth(1)
                            .is_some_and(|o| o.split(',').any(|o| o == "favordynmods"))
                })
            })
        })
        .unwrap_or(false)
}

#[derive(Debug, Serialize)]
struct CriuReport {
    path: PathBuf,
    version: Version,
    minimum: String,
    /// CRIU's own `check` of the kernel.
    check_ok: bool,
    check_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct FeatureReport {
    /// userfaultfd with non-cooperative events: post-copy migration.
    lazy_pages: bool,
    /// Soft-dirty memory tracking: pre-dump, iterative migration.
    mem_dirty_track: bool,
    pidfd_store: bool,
    /// `iptables-restore` for CRIU's default network lock.
    network_lock_iptables: Option<PathBuf>,
    /// nf_tables in the kernel for `network_lock = NFTABLES`.
    network_lock_nftables: bool,
    /// Time namespaces (CLONE_NEWTIME).
    timens: bool,
}

pub fn run(cli: &Cli, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let criu = cli.criu.as_ref().map(Criu::with_binary).unwrap_or_default();
    let path = criu.resolve()?;
    let version = criu
        .version()
        .with_context(|| format!("asking {} for its version", path.display()))?;
    if version < MIN_VERSION {
        bail!(
            "CRIU {version} at {} is older than {MIN_VERSION}, which Ferry needs (CRIU 4.1 cannot dump \
             TCP sockets on kernels >= 6.16): run hack/setup to build CRIU 4.2, or give a newer one \
             with --criu or FERRY_CRIU",
            path.display()
        );
    }
    let features: Features = criu.features().context("asking CRIU for its features")?;
    let check = run_criu_check(&criu);
    let report = Report {
        criu: CriuReport {
            path,
            version,
            minimum: MIN_VERSION.to_string(),
            check_ok: check.is_ok(),
            check_error: check.as_ref().err().map(|e| format!("{e:#}")),
        },
        features: FeatureReport {
            lazy_pages: features.lazy_pages,
            mem_dirty_track: features.mem_track,
            pidfd_store: features.pidfd_store,
            network_lock_iptables: find_in_path("iptables-restore"),
            network_lock_nftables: kernel_has_nf_tables(),
            timens: Path::new("/proc/self/ns/time").exists(),
        },
        pipe_max_size: read_sysctl("/proc/sys/fs/pipe-max-size"),
        downtime: DowntimeReport {
            nf_conntrack_buckets: read_sysctl("/proc/sys/net/netfilter/nf_conntrack_buckets"),
            rcu_expedited: read_sysctl("/sys/kernel/rcu_expedited").map(|v| v != 0),
            cgroup_favordynmods: cgroup_favordynmods(),
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    if let Err(e) = check {
        return Err(e.context("CRIU's kernel check failed"));
    }
    Ok(ExitCode::SUCCESS)
}

/// CRIU's CHECK request, logging into a scratch dir that is removed after.
fn run_criu_check(criu: &Criu) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ferry-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = (|| {
        let work =
            std::fs::File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
        let opts = CheckOptions {
            work_dir: Some(work.into()),
            log_file: Some("check.log".into()),
            log_level: None,
        };
        criu.check(&opts)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// nf_tables as a module (/sys/module) or built in (its symbols in
/// /proc/kallsyms, which lists names even when addresses are hidden).
fn kernel_has_nf_tables() -> bool {
    if Path::new("/sys/module/nf_tables").exists() {
        return true;
    }
    std::fs::read_to_string("/proc/kallsyms")
        .map(|k| k.contains(" nf_tables_"))
        .unwrap_or(false)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn print_text(r: &Report) {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    println!(
        "{:<26} {} ({}), needs >= {}: ok",
        "CRIU",
        r.criu.version,
        r.criu.path.display(),
        r.criu.minimum
    );
    match &r.criu.check_error {
        None => println!("{:<26} ok", "criu check"),
        Some(e) => println!("{:<26} FAILED: {e}", "criu check"),
    }
    let f = &r.features;
    let line = |name: &str, ok: bool, without: &str| {
        if ok {
            println!("{name:<26} yes");
        } else {
            println!("{name:<26} no: {without}");
        }
    };
    line(
        "lazy pages (userfaultfd)",
        f.lazy_pages,
        "post-copy migration (--mode postcopy, --lazy-pages) is unavailable",
    );
    line(
        "soft-dirty tracking",
        f.mem_dirty_track,
        "pre-dump and --track-mem are unavailable; checkpoints are full dumps",
    );
    line(
        "pidfd_store",
        f.pidfd_store,
        "pid reuse across pre-dumps is not detected",
    );
    match &f.network_lock_iptables {
        Some(p) => println!("{:<26} iptables ({})", "network lock", p.display()),
        None => println!(
            "{:<26} no iptables-restore: install iptables, or use the nftables lock",
            "network lock"
        ),
    }
    println!(
        "{:<26} {}",
        "nftables (kernel)",
        yes_no(f.network_lock_nftables)
    );
    line(
        "time namespaces",
        f.timens,
        "containers with a time namespace cannot be restored",
    );
    if let Some(size) = r.pipe_max_size {
        if size >= 4 << 20 {
            println!("{:<26} {size}", "fs.pipe-max-size");
        } else {
            println!(
                "{:<26} {size}: lazy pages need >= 4194304 (sysctl fs.pipe-max-size=4194304)",
                "fs.pipe-max-size"
            );
        }
    }
    let d = &r.downtime;
    match d.nf_conntrack_buckets {
        Some(n) if n > FEW_CONNTRACK_BUCKETS => println!(
            "{:<26} {n}: CRIU walks it twice per dump (~{:.0} ms); a host tracking few \
             connections can lower it (sysctl net.netfilter.nf_conntrack_buckets={FEW_CONNTRACK_BUCKETS})",
            "conntrack buckets",
            // ~9 ms per 262,144 buckets per walk, measured (README).
            2.0 * 9.0 * n as f64 / 262_144.0
        ),
        Some(n) => println!("{:<26} {n}", "conntrack buckets"),
        None => println!("{:<26} no conntrack", "conntrack buckets"),
    }
    if d.rcu_expedited == Some(true) || d.cgroup_favordynmods {
        println!("{:<26} fast", "cgroup attach");
    } else {
        println!(
            "{:<26} waits an RCU grace period (~10 ms) in each restore (a move: before the freeze): \
             echo 1 > /sys/kernel/rcu_expedited, or mount cgroup2 with favordynmods",
            "cgroup attach"
        );
    }
}
