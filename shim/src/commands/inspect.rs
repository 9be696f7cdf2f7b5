//! `ferry inspect`: read and debug CRIU dumps. A summary of a checkpoint
//! (an image directory, or an archive of `ferry checkpoint --export`), or
//! one view of it (`ps`, `fds`, `mem`, `sockets`, `mounts`, `stats`);
//! `decode FILE` prints one image as JSON (as `crit decode` does); `diff
//! A B` shows what differs between two checkpoints. `--json` everywhere.
//! The decoding and the model are `criu_rpc::image`'s; this file only
//! prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use criu_rpc::image::model::{Checkpoint, Process};
use criu_rpc::image::{decode_file, diff};
use serde_json::json;

use crate::Cli;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  ferry inspect ./checkpoint               summary of an image directory
  ferry inspect ctr.tar.zst ps             process tree of an exported checkpoint
  ferry inspect ./checkpoint fds --json    open files as JSON
  ferry inspect decode ./checkpoint/core-1.img
  ferry inspect diff ./before ./after")]
pub struct InspectArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// A checkpoint (image directory or export archive), or `decode`, or `diff`.
    pub target: PathBuf,
    /// A view (ps, fds, mem, sockets, mounts, stats); decode's FILE; diff's two checkpoints.
    pub args: Vec<PathBuf>,
}

/// A checkpoint opened for reading: an image directory as it is, an
/// archive extracted (images only) into a temporary directory.
struct Opened {
    checkpoint: Checkpoint,
    _tmp: Option<tempfile::TempDir>,
}

fn open(p: &Path) -> anyhow::Result<Opened> {
    if ferry_oci::export::is_archive(p) {
        let tmp = tempfile::Builder::new()
            .prefix("ferry-inspect-")
            .tempdir()
            .context("creating a temporary directory for the archive's images")?;
        let images = ferry_oci::export::extract_images(p, tmp.path())?;
        let mut checkpoint = Checkpoint::read(&images)
            .with_context(|| format!("reading the images of {}", p.display()))?;
        checkpoint.dir = p.to_path_buf();
        Ok(Opened {
            checkpoint,
            _tmp: Some(tmp),
        })
    } else {
        Ok(Opened {
            checkpoint: Checkpoint::read(p)
                .with_context(|| format!("reading the checkpoint in {}", p.display()))?,
            _tmp: None,
        })
    }
}

/// Appends a line to the output.
macro_rules! out {
    ($o:expr) => {
        $o.push('\n')
    };
    ($o:expr, $($t:tt)*) => {{
        let _ = writeln!($o, $($t)*);
    }};
}

/// Appends text to the output.
macro_rules! put {
    ($o:expr, $($t:tt)*) => {{
        let _ = write!($o, $($t)*);
    }};
}

/// Writes the output; a reader that went away (`| head`) is not an error.
fn emit(o: &str) -> anyhow::Result<ExitCode> {
    let mut w = std::io::stdout().lock();
    let r = w.write_all(o.as_bytes()).and_then(|()| {
        if o.ends_with('\n') {
            Ok(())
        } else {
            w.write_all(b"\n")
        }
    });
    match r.and_then(|()| w.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        r => {
            r.context("writing to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(v)?)
}

pub fn inspect(_cli: &Cli, a: &InspectArgs) -> anyhow::Result<ExitCode> {
    let arg = |i: usize, what: &str| -> anyhow::Result<&PathBuf> {
        a.args
            .get(i)
            .with_context(|| format!("`ferry inspect {}` needs {what}", a.target.display()))
    };
    match a.target.to_str() {
        Some("decode") => {
            anyhow::ensure!(a.args.len() == 1, "usage: ferry inspect decode FILE");
            let v = decode_file(arg(0, "an image FILE")?)?;
            // decode is JSON either way, as crit's.
            return emit(&serde_json::to_string_pretty(&v)?);
        }
        Some("diff") => {
            anyhow::ensure!(a.args.len() == 2, "usage: ferry inspect diff DIR1 DIR2");
            let x = open(arg(0, "two checkpoints")?)?;
            let y = open(arg(1, "two checkpoints")?)?;
            let changes = diff::diff(&x.checkpoint, &y.checkpoint);
            let mut o = String::new();
            if a.json {
                o = serde_json::to_string_pretty(&changes)?;
            } else if changes.is_empty() {
                out!(o, "no differences");
            } else {
                for c in &changes {
                    out!(o, "{c}");
                }
            }
            return emit(&o);
        }
        _ => {}
    }
    anyhow::ensure!(
        a.args.len() <= 1,
        "usage: ferry inspect CHECKPOINT [ps|fds|mem|sockets|mounts|stats]"
    );
    let view = a
        .args
        .first()
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    const VIEWS: [&str; 7] = ["", "ps", "fds", "mem", "sockets", "mounts", "stats"];
    anyhow::ensure!(
        VIEWS.contains(&view.as_str()),
        "unknown view `{view}`: use ps, fds, mem, sockets, mounts or stats"
    );
    let opened = open(&a.target)?;
    let c = &opened.checkpoint;
    let mut o = String::new();
    match (view.as_str(), a.json) {
        ("", true) => o = json(c)?,
        ("", false) => summary(&mut o, c),
        ("ps", true) => o = json(&ps_json(c))?,
        ("ps", false) => ps(&mut o, c),
        ("fds", true) => o = json(&fds_json(c))?,
        ("fds", false) => fds(&mut o, c),
        ("mem", true) => o = json(&mem_json(c))?,
        ("mem", false) => mem(&mut o, c, true),
        ("sockets", true) => o = json(&c.sockets)?,
        ("sockets", false) => sockets(&mut o, c),
        ("mounts", true) => o = json(&c.mounts)?,
        ("mounts", false) => mounts(&mut o, c),
        ("stats", true) => o = json(&c.stats)?,
        ("stats", false) => stats(&mut o, c),
        (v, _) => anyhow::bail!("unknown view `{v}`"),
    }
    emit(&o)
}

fn ps_json(c: &Checkpoint) -> serde_json::Value {
    c.processes
        .iter()
        .map(|p| {
            json!({
                "pid": p.pid, "ppid": p.ppid, "pgid": p.pgid, "sid": p.sid,
                "comm": p.comm, "state": p.state, "exe": p.exe, "cmdline": p.cmdline,
                "threads": p.threads,
            })
        })
        .collect()
}

fn fds_json(c: &Checkpoint) -> serde_json::Value {
    c.processes
        .iter()
        .map(|p| json!({ "pid": p.pid, "fds": p.fds, "cwd": p.cwd, "root": p.root }))
        .collect()
}

fn mem_json(c: &Checkpoint) -> serde_json::Value {
    c.processes
        .iter()
        .map(|p| json!({ "pid": p.pid, "comm": p.comm, "memory": p.memory }))
        .collect()
}

fn size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn command(p: &Process) -> String {
    match &p.cmdline {
        Some(a) if !a.is_empty() => a.join(" "),
        _ => format!("[{}]", p.comm),
    }
}

/// The processes in tree order, with their depth.
fn tree(c: &Checkpoint) -> Vec<(usize, &Process)> {
    let mut kids: BTreeMap<u32, Vec<&Process>> = BTreeMap::new();
    for p in &c.processes {
        kids.entry(p.ppid).or_default().push(p);
    }
    let pids: std::collections::HashSet<u32> = c.processes.iter().map(|p| p.pid).collect();
    let mut out = Vec::new();
    fn walk<'a>(
        p: &'a Process,
        d: usize,
        kids: &BTreeMap<u32, Vec<&'a Process>>,
        out: &mut Vec<(usize, &'a Process)>,
    ) {
        out.push((d, p));
        for k in kids.get(&p.pid).into_iter().flatten() {
            if k.pid != p.pid {
                walk(k, d + 1, kids, out);
            }
        }
    }
    // Roots: tasks whose parent is not in the tree.
    for p in c.processes.iter().filter(|p| !pids.contains(&p.ppid)) {
        walk(p, 0, &kids, &mut out);
    }
    out
}

fn summary(o: &mut String, c: &Checkpoint) {
    out!(o, "checkpoint {}", c.dir.display());
    out!(
        o,
        "  CRIU {}, images v{}{}",
        c.criu
            .version
            .as_deref()
            .unwrap_or("(version unknown: no dump.log)"),
        c.criu.image_version,
        if c.criu.tcp_close { ", TCP closed" } else { "" }
    );
    out!(
        o,
        "  {} image files, {} ({} of memory pages)",
        c.images.files,
        size(c.images.bytes),
        size(c.images.pages_bytes)
    );
    if let Some(d) = &c.stats.dump {
        out!(o,
            "  dump: frozen {:.1} ms, memory dump {:.1} ms, memory write {:.1} ms, {} pages written of {} scanned",
            d.frozen_time.as_secs_f64() * 1e3,
            d.memdump_time.as_secs_f64() * 1e3,
            d.memwrite_time.as_secs_f64() * 1e3,
            d.pages_written,
            d.pages_scanned
        );
    }
    out!(o);
    ps(o, c);
    out!(o);
    mem(o, c, false);
    out!(o);
    fds(o, c);
    if !c.sockets.is_empty() {
        out!(o);
        sockets(o, c);
    }
    out!(o);
    mounts(o, c);
    if c.network.iter().any(|n| !n.devices.is_empty()) {
        out!(o);
        network(o, c);
    }
    if !c.ttys.is_empty() {
        out!(o);
        out!(o, "ttys:");
        for t in &c.ttys {
            out!(
                o,
                "  {} {}{} sid {} pgrp {}",
                t.id,
                t.kind,
                t.index.map(|i| format!(" {i}")).unwrap_or_default(),
                t.sid,
                t.pgrp
            );
        }
    }
    if !c.cgroups.is_empty() {
        out!(o);
        out!(o, "cgroups:");
        for s in &c.cgroups {
            let paths: std::collections::BTreeSet<&str> =
                s.paths.values().map(String::as_str).collect();
            out!(
                o,
                "  set {}: {} controllers at {}",
                s.id,
                s.paths.len(),
                paths.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
}

fn ps(o: &mut String, c: &Checkpoint) {
    out!(
        o,
        "{:>7} {:>7} {:>7} {:>7} {:>4}  {:<8} COMMAND",
        "PID",
        "PPID",
        "PGID",
        "SID",
        "THR",
        "STATE"
    );
    for (depth, p) in tree(c) {
        out!(
            o,
            "{:>7} {:>7} {:>7} {:>7} {:>4}  {:<8} {}{}",
            p.pid,
            p.ppid,
            p.pgid,
            p.sid,
            p.threads.len(),
            p.state,
            "  ".repeat(depth),
            command(p)
        );
        if p.threads.len() > 1 {
            for t in &p.threads {
                out!(
                    o,
                    "{:>46}{}  thread {} {} ({}, nice {})",
                    "",
                    "  ".repeat(depth),
                    t.tid,
                    t.comm,
                    t.sched_policy,
                    t.nice
                );
            }
        }
    }
}

fn fds(o: &mut String, c: &Checkpoint) {
    out!(o, "open files:");
    for p in &c.processes {
        out!(o, "  {} {}:", p.pid, p.comm);
        for f in &p.fds {
            out!(o, "    {:>5}: {:<10} {}", f.fd, f.kind, f.description);
        }
        if let Some(cwd) = &p.cwd {
            out!(o, "    {:>5}: {cwd}", "cwd");
        }
        if let Some(root) = &p.root {
            out!(o, "    {:>5}: {root}", "root");
        }
    }
}

fn mem(o: &mut String, c: &Checkpoint, vmas: bool) {
    let kinds: std::collections::BTreeSet<&String> = c
        .processes
        .iter()
        .flat_map(|p| p.memory.by_kind.keys())
        .collect();
    put!(o, "{:>7} {:>10} {:>10}", "PID", "MAPPED", "DUMPED");
    for k in &kinds {
        put!(o, " {:>12}", k);
    }
    out!(o, "  COMM");
    for p in &c.processes {
        let m = &p.memory;
        put!(
            o,
            "{:>7} {:>10} {:>10}",
            p.pid,
            size(m.mapped),
            size(m.pages_dumped.saturating_mul(4096))
        );
        for k in &kinds {
            put!(o, " {:>12}", size(m.by_kind.get(*k).copied().unwrap_or(0)));
        }
        out!(o, "  {}", p.comm);
        if vmas {
            for v in &m.vmas {
                out!(
                    o,
                    "        {:012x}-{:012x} {} {:<12} {}",
                    v.start,
                    v.end,
                    v.prot,
                    v.kind,
                    v.file.as_deref().unwrap_or("")
                );
            }
        }
    }
}

fn sockets(o: &mut String, c: &Checkpoint) {
    out!(o, "sockets:");
    out!(
        o,
        "  {:<7} {:<9} {:<8} {:<12} {:<28} {:<28} INODE",
        "FAMILY",
        "TYPE",
        "PROTO",
        "STATE",
        "LOCAL",
        "REMOTE/PEER"
    );
    for s in &c.sockets {
        let remote = s
            .remote
            .clone()
            .or(s.peer.map(|p| format!("unix:[{p}]")))
            .unwrap_or_default();
        out!(
            o,
            "  {:<7} {:<9} {:<8} {:<12} {:<28} {:<28} {}",
            s.family,
            s.kind,
            s.protocol,
            s.state,
            s.local.as_deref().unwrap_or(""),
            remote,
            s.ino.map(|i| i.to_string()).unwrap_or_default()
        );
    }
}

fn mounts(o: &mut String, c: &Checkpoint) {
    out!(o, "mounts:");
    for m in &c.mounts {
        out!(
            o,
            "  {:>5} {:>5} {:<28} {:<10} {}{}",
            m.mnt_id,
            m.parent,
            m.mountpoint,
            m.fstype,
            m.source,
            m.external
                .as_ref()
                .map(|e| format!(" (external: {e})"))
                .unwrap_or_default()
        );
    }
}

fn network(o: &mut String, c: &Checkpoint) {
    out!(o, "network:");
    for n in &c.network {
        for d in &n.devices {
            let addrs: Vec<String> = n
                .addresses
                .iter()
                .filter(|a| a.ifindex == d.ifindex)
                .filter_map(|a| {
                    a.local
                        .or(a.address)
                        .map(|x| format!("{x}/{}", a.prefix_len))
                })
                .collect();
            out!(
                o,
                "  {:<12} {:<8} mtu {:<6} {:<4} {}",
                d.name,
                d.kind,
                d.mtu,
                if d.up { "up" } else { "down" },
                addrs.join(" ")
            );
        }
        for r in &n.routes {
            out!(
                o,
                "  route {}{}{}",
                r.destination,
                r.gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
                r.oif.map(|o| format!(" dev #{o}")).unwrap_or_default()
            );
        }
    }
}

fn stats(o: &mut String, c: &Checkpoint) {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    match &c.stats.dump {
        Some(d) => {
            out!(o, "dump:");
            out!(o, "  freezing time   {:>10.1} ms", ms(d.freezing_time));
            out!(o, "  frozen time     {:>10.1} ms", ms(d.frozen_time));
            out!(o, "  memdump time    {:>10.1} ms", ms(d.memdump_time));
            out!(o, "  memwrite time   {:>10.1} ms", ms(d.memwrite_time));
            out!(o, "  pages scanned   {:>10}", d.pages_scanned);
            out!(
                o,
                "  pages skipped   {:>10} (in parent)",
                d.pages_skipped_parent
            );
            out!(o, "  pages written   {:>10}", d.pages_written);
            out!(o, "  pages lazy      {:>10}", d.pages_lazy);
        }
        None => out!(o, "dump: no stats-dump in the images"),
    }
    if let Some(r) = &c.stats.restore {
        out!(o, "restore:");
        out!(o, "  forking time    {:>10.1} ms", ms(r.forking_time));
        out!(o, "  restore time    {:>10.1} ms", ms(r.restore_time));
        out!(o, "  pages compared  {:>10}", r.pages_compared);
        out!(o, "  pages restored  {:>10}", r.pages_restored);
    }
}
