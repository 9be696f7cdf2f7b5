//! linux.resources on cgroup v1, where runc's fs driver does what
//! libcgroups (0.7) does not:
//!
//! - devices: runc keeps a model of the devices cgroup (its devices
//!   emulator), reads the current rules from `devices.list` and writes only
//!   the minimal transition to the wanted rules, so that an update never
//!   opens a deny-all window in which the container's writes to /dev/null
//!   fail. libcgroups writes every rule as given (`c 1:11 rwa` is refused
//!   by the kernel) and re-applies its defaults on every call.
//! - cpu: runc retries a period the kernel refuses (EINVAL: the old quota
//!   over the new period exceeds the parent's limit) after writing the
//!   quota; libcgroups writes the period first and fails.
//! - blkio weights: runc writes `blkio.bfq.weight{,_device}` when the
//!   kernel has no `blkio.weight` (CFQ is gone since 5.0, BFQ's files are
//!   prefixed); libcgroups has no per-device BFQ weight.
//! - update: runc's `update` writes the memory, cpu, cpuset, pids and blkio
//!   weight values it was given and never touches devices.
//!
//! The writers are runc's libcontainer/cgroups/fs/{devices,cpu,blkio,
//! memory,pids,cpuset}.go, rewritten; the emulator is runc's
//! cgroups/devices/devices_emulator.go.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use crate::error::{Error, Result};

fn write(dir: &Path, file: &str, value: impl ToString) -> std::io::Result<()> {
    fs::write(dir.join(file), value.to_string())
}

fn failed(path: &Path, file: &str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.join(file);
    move |e| Error::Cgroup {
        op: "writing",
        path,
        source: e.into(),
    }
}

fn invalid(path: &Path, reason: String) -> Error {
    Error::Cgroup {
        op: "setting the devices of",
        path: path.to_path_buf(),
        source: reason.into(),
    }
}

// ---------------------------------------------------------------- devices

const R: u8 = 1;
const W: u8 = 2;
const M: u8 = 4;
const WILDCARD: i64 = -1;

/// Permissions as runc's devices.Permissions: unknown letters are ignored
/// (the spec allows `a`, which cgroup v1 does not know).
fn perms(s: &str) -> u8 {
    s.chars().fold(0, |p, c| match c {
        'r' => p | R,
        'w' => p | W,
        'm' => p | M,
        _ => p,
    })
}

fn perms_str(p: u8) -> String {
    [(R, 'r'), (W, 'w'), (M, 'm')]
        .iter()
        .filter(|(b, _)| p & b != 0)
        .map(|(_, c)| c)
        .collect()
}

/// A device node class: the key of a rule. Ordered as runc orders its
/// transition rules (major, minor, then type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Meta {
    major: i64,
    minor: i64,
    node: char,
}

/// One line for `devices.allow` or `devices.deny`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    /// 'a', 'b' or 'c'.
    pub node: char,
    pub major: i64,
    pub minor: i64,
    pub perms: u8,
    pub allow: bool,
}

impl DeviceRule {
    /// What the kernel reads, e.g. `c 1:3 rwm` or `a *:* rwm`.
    pub fn cgroup_string(&self) -> String {
        let n = |v: i64| {
            if v == WILDCARD {
                "*".to_string()
            } else {
                v.to_string()
            }
        };
        format!(
            "{} {}:{} {}",
            self.node,
            n(self.major),
            n(self.minor),
            perms_str(self.perms)
        )
    }
}

/// runc's model of a v1 devices cgroup: a default and its exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Emulator {
    default_allow: bool,
    rules: BTreeMap<Meta, u8>,
}

impl Emulator {
    /// The model of a `devices.list` (runc's EmulatorFromList).
    pub fn from_list(list: &str) -> std::result::Result<Emulator, String> {
        let mut e = Emulator::default();
        for line in list.lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split([' ', ':']).filter(|s| !s.is_empty()).collect();
            let [node, major, minor, p] = f[..] else {
                return Err(format!("malformed devices.list rule {line}"));
            };
            let num = |s: &str| -> std::result::Result<i64, String> {
                if s == "*" {
                    Ok(WILDCARD)
                } else {
                    s.parse::<u32>()
                        .map(i64::from)
                        .map_err(|e| format!("invalid number in {line:?}: {e}"))
                }
            };
            let node = match node {
                "a" => {
                    e.apply(&DeviceRule {
                        node: 'a',
                        major: WILDCARD,
                        minor: WILDCARD,
                        perms: R | W | M,
                        allow: true,
                    })?;
                    continue;
                }
                "b" => 'b',
                "c" => 'c',
                other => return Err(format!("unknown device type {other:?}")),
            };
            let bits = perms(p);
            if bits == 0 || perms_str(bits).len() != p.len() {
                return Err(format!(
                    "parse access mode: contained unknown modes or is empty: {p:?}"
                ));
            }
            e.apply(&DeviceRule {
                node,
                major: num(major)?,
                minor: num(minor)?,
                perms: bits,
                allow: true,
            })?;
        }
        Ok(e)
    }

    /// Whether everything not listed is allowed.
    pub fn is_blacklist(&self) -> bool {
        self.default_allow
    }

    /// Applies one rule as the kernel would (runc's Emulator.Apply).
    pub fn apply(&mut self, rule: &DeviceRule) -> std::result::Result<(), String> {
        if rule.node == 'a' {
            // A wildcard-type rule resets the cgroup to allow or deny all.
            *self = Emulator {
                default_allow: rule.allow,
                rules: BTreeMap::new(),
            };
            return Ok(());
        }
        let meta = Meta {
            major: rule.major,
            minor: rule.minor,
            node: rule.node,
        };
        // An allow in a blacklist or a deny in a whitelist removes an
        // exception; the other two add one.
        if rule.allow == self.default_allow {
            self.remove(meta, rule.perms)
        } else {
            *self.rules.entry(meta).or_insert(0) |= rule.perms;
            Ok(())
        }
    }

    fn remove(&mut self, meta: Meta, p: u8) -> std::result::Result<(), String> {
        // cgroup v1 silently ignores a removal from within a wildcard
        // exception; runc refuses it rather than give a false sense of
        // security, and so does Ferry.
        for partial in [
            Meta {
                major: WILDCARD,
                ..meta
            },
            Meta {
                minor: WILDCARD,
                ..meta
            },
            Meta {
                major: WILDCARD,
                minor: WILDCARD,
                ..meta
            },
        ] {
            if partial == meta {
                continue;
            }
            let pp = self.rules.get(&partial).copied().unwrap_or(0);
            if pp & p != 0 {
                return Err(format!(
                    "requested rule [{} {}:{} {}] not supported by devices cgroupv1 (cannot punch hole in existing wildcard rule [{} {}:{} {}])",
                    meta.node, meta.major, meta.minor, perms_str(p),
                    partial.node, partial.major, partial.minor, perms_str(pp)
                ));
            }
        }
        if let Some(old) = self.rules.get_mut(&meta) {
            *old &= !p;
            if *old == 0 {
                self.rules.remove(&meta);
            }
        }
        Ok(())
    }

    /// The fewest rules that turn `self` into `target` (runc's Transition):
    /// a reset only when the default changes or `self` is a blacklist, then
    /// the permissions lost, then those gained.
    pub fn transition(&self, target: &Emulator) -> Vec<DeviceRule> {
        let mut out = Vec::new();
        let empty = BTreeMap::new();
        let mut old = &self.rules;
        if self.default_allow || self.default_allow != target.default_allow {
            out.push(DeviceRule {
                node: 'a',
                major: WILDCARD,
                minor: WILDCARD,
                perms: R | W | M,
                allow: target.default_allow,
            });
            old = &empty;
        }
        for (meta, p) in old {
            let dropped = p & !target.rules.get(meta).copied().unwrap_or(0);
            if dropped != 0 {
                out.push(DeviceRule {
                    node: meta.node,
                    major: meta.major,
                    minor: meta.minor,
                    perms: dropped,
                    allow: target.default_allow,
                });
            }
        }
        for (meta, p) in &target.rules {
            let gained = p & !old.get(meta).copied().unwrap_or(0);
            if gained != 0 {
                out.push(DeviceRule {
                    node: meta.node,
                    major: meta.major,
                    minor: meta.minor,
                    perms: gained,
                    allow: !target.default_allow,
                });
            }
        }
        out
    }
}

/// The devices every runc container gets, appended after the spec's rules
/// (runc's specconv.AllowedDevices): mknod of anything, the standard
/// character devices, ptys and tun. A standard device that linux.devices
/// names by path is left to the spec, as runc dedupes it.
fn default_rules(spec_paths: &[PathBuf]) -> Vec<DeviceRule> {
    fn c(
        major: i64,
        minor: i64,
        p: &str,
        path: Option<&'static str>,
    ) -> (Option<&'static str>, DeviceRule) {
        (
            path,
            DeviceRule {
                node: 'c',
                major,
                minor,
                perms: perms(p),
                allow: true,
            },
        )
    }
    let mut b = c(WILDCARD, WILDCARD, "m", None);
    b.1.node = 'b';
    [
        c(WILDCARD, WILDCARD, "m", None),
        b,
        c(1, 3, "rwm", Some("/dev/null")),
        c(1, 8, "rwm", Some("/dev/random")),
        c(1, 7, "rwm", Some("/dev/full")),
        c(5, 0, "rwm", Some("/dev/tty")),
        c(1, 5, "rwm", Some("/dev/zero")),
        c(1, 9, "rwm", Some("/dev/urandom")),
        c(136, WILDCARD, "rwm", None),
        c(5, 2, "rwm", None),
        c(10, 200, "rwm", None),
    ]
    .into_iter()
    .filter(|(p, _)| p.is_none_or(|p| !spec_paths.iter().any(|s| s == Path::new(p))))
    .map(|(_, r)| r)
    .collect()
}

/// linux.resources.devices and runc's defaults, as runc's specconv builds
/// them, with its error texts.
pub fn device_rules(
    spec_rules: &[LinuxDeviceCgroup],
    spec_paths: &[PathBuf],
) -> std::result::Result<Vec<DeviceRule>, String> {
    let mut out = Vec::new();
    for (i, d) in spec_rules.iter().enumerate() {
        let node = match d.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => 'a',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::C => 'c',
            other => return Err(format!("invalid cgroup device type {:?}", other.as_str())),
        };
        let access = d.access().clone().unwrap_or_default();
        if access.is_empty() {
            return Err(format!("device access at {i} field cannot be empty"));
        }
        out.push(DeviceRule {
            node,
            major: d.major().unwrap_or(WILDCARD),
            minor: d.minor().unwrap_or(WILDCARD),
            perms: perms(&access),
            allow: d.allow(),
        });
    }
    out.extend(default_rules(spec_paths));
    Ok(out)
}

/// Brings the devices cgroup `dir` to `rules` with the minimal transition,
/// then checks that the kernel's list is what was asked (runc's
/// DevicesGroup.Set).
pub fn set_devices(dir: &Path, rules: &[DeviceRule]) -> Result<()> {
    let list_path = dir.join("devices.list");
    let read = || -> Result<Emulator> {
        let list = fs::read_to_string(&list_path).map_err(|e| Error::Cgroup {
            op: "reading",
            path: list_path.clone(),
            source: e.into(),
        })?;
        Emulator::from_list(&list).map_err(|r| invalid(dir, r))
    };
    let current = read()?;
    let mut target = Emulator::default();
    for r in rules {
        target.apply(r).map_err(|r| invalid(dir, r))?;
    }
    for r in current.transition(&target) {
        let file = if r.allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        write(dir, file, r.cgroup_string()).map_err(failed(dir, file))?;
    }
    let after = read()?;
    if !target.is_blacklist() && after != target {
        return Err(invalid(
            dir,
            "resulting devices cgroup doesn't precisely match target".into(),
        ));
    } else if target.is_blacklist() != after.is_blacklist() {
        return Err(invalid(
            dir,
            "resulting devices cgroup doesn't match target mode".into(),
        ));
    }
    Ok(())
}

// -------------------------------------------------------------------- cpu

/// runc's CpuGroup.Set: shares (checked by reading back), period and quota
/// (a refused period retried after the quota), then the realtime period
/// and runtime. Zero means "leave as is".
pub fn set_cpu(dir: &Path, r: &LinuxResources) -> Result<()> {
    let Some(cpu) = r.cpu() else { return Ok(()) };
    if let Some(shares) = cpu.shares().filter(|&s| s != 0) {
        write(dir, "cpu.shares", shares).map_err(failed(dir, "cpu.shares"))?;
        let read: u64 = fs::read_to_string(dir.join("cpu.shares"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(shares);
        let reason = if shares > read {
            Some(format!("the maximum allowed cpu-shares is {read}"))
        } else if shares < read {
            Some(format!("the minimum allowed cpu-shares is {read}"))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Error::Cgroup {
                op: "setting cpu.shares in",
                path: dir.to_path_buf(),
                source: reason.into(),
            });
        }
    }
    let quota = cpu.quota().filter(|&q| q != 0);
    let mut retry_period = None;
    if let Some(period) = cpu.period().filter(|&p| p != 0) {
        if let Err(e) = write(dir, "cpu.cfs_period_us", period) {
            // The kernel refuses a smaller period while the old quota
            // over it exceeds the parent's limit: runc retries it once
            // the new quota is in.
            if e.raw_os_error() != Some(libc::EINVAL) || quota.is_none() {
                return Err(failed(dir, "cpu.cfs_period_us")(e));
            }
            retry_period = Some(period);
        }
    }
    if let Some(q) = quota {
        write(dir, "cpu.cfs_quota_us", q).map_err(failed(dir, "cpu.cfs_quota_us"))?;
        if let Some(p) = retry_period {
            write(dir, "cpu.cfs_period_us", p).map_err(failed(dir, "cpu.cfs_period_us"))?;
        }
    }
    if let Some(p) = cpu.realtime_period().filter(|&p| p != 0) {
        write(dir, "cpu.rt_period_us", p).map_err(failed(dir, "cpu.rt_period_us"))?;
    }
    if let Some(rt) = cpu.realtime_runtime().filter(|&rt| rt != 0) {
        write(dir, "cpu.rt_runtime_us", rt).map_err(failed(dir, "cpu.rt_runtime_us"))?;
    }
    Ok(())
}

/// runc's CpusetGroup.Set for the two values `update` changes.
pub fn set_cpuset(dir: &Path, r: &LinuxResources) -> Result<()> {
    let Some(cpu) = r.cpu() else { return Ok(()) };
    for (file, v) in [("cpuset.cpus", cpu.cpus()), ("cpuset.mems", cpu.mems())] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            write(dir, file, v).map_err(failed(dir, file))?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ blkio

/// runc's BlkioGroup weights: `blkio.weight{,_device}` where the kernel has
/// them, BFQ's `blkio.bfq.weight{,_device}` otherwise.
pub fn set_blkio_weights(dir: &Path, r: &LinuxResources) -> Result<()> {
    let Some(b) = r.block_io() else {
        return Ok(());
    };
    let (weight, weight_device) = if dir.join("blkio.weight").exists() {
        ("blkio.weight", "blkio.weight_device")
    } else {
        ("blkio.bfq.weight", "blkio.bfq.weight_device")
    };
    if let Some(w) = b.weight().filter(|&w| w != 0) {
        write(dir, weight, w).map_err(failed(dir, weight))?;
    }
    if let Some(w) = b.leaf_weight().filter(|&w| w != 0) {
        write(dir, "blkio.leaf_weight", w).map_err(failed(dir, "blkio.leaf_weight"))?;
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight().filter(|&w| w != 0) {
            write(
                dir,
                weight_device,
                format!("{}:{} {w}", d.major(), d.minor()),
            )
            .map_err(failed(dir, weight_device))?;
        }
        if let Some(w) = d.leaf_weight().filter(|&w| w != 0) {
            write(
                dir,
                "blkio.leaf_weight_device",
                format!("{}:{} {w}", d.major(), d.minor()),
            )
            .map_err(failed(dir, "blkio.leaf_weight_device"))?;
        }
    }
    Ok(())
}

// ----------------------------------------------------------------- memory

fn read_u64(dir: &Path, file: &str) -> Result<u64> {
    let p = dir.join(file);
    let s = fs::read_to_string(&p).map_err(|e| Error::Cgroup {
        op: "reading",
        path: p.clone(),
        source: e.into(),
    })?;
    s.trim()
        .parse()
        .map_err(|e: std::num::ParseIntError| Error::Cgroup {
            op: "parsing",
            path: p,
            source: e.into(),
        })
}

/// runc's setMemoryAndSwap and the soft limit: limit -1 without a swap
/// value lifts the swap limit too; with both, the order of the writes is
/// the one the kernel accepts (memsw must stay >= the limit).
pub fn set_memory(dir: &Path, r: &LinuxResources) -> Result<()> {
    let Some(m) = r.memory() else { return Ok(()) };
    const LIMIT: &str = "memory.limit_in_bytes";
    const SWAP: &str = "memory.memsw.limit_in_bytes";
    let limit = m.limit().unwrap_or(0);
    let mut swap = m.swap().unwrap_or(0);
    if limit == -1 && swap == 0 && dir.join(SWAP).exists() {
        swap = -1;
    }
    // runc's setMemory: EBUSY means below the current usage, said so.
    let set_limit = || -> Result<()> {
        match write(dir, LIMIT, limit) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(Error::Cgroup {
                op: "setting the memory limit of",
                path: dir.to_path_buf(),
                source: format!(
                    "unable to set memory limit to {limit} (current usage: {}, peak usage: {})",
                    read_u64(dir, "memory.usage_in_bytes")?,
                    read_u64(dir, "memory.max_usage_in_bytes")?
                )
                .into(),
            }),
            r => r.map_err(failed(dir, LIMIT)),
        }
    };
    let mut done = false;
    if limit != 0 && swap != 0 {
        let cur = read_u64(dir, LIMIT)?;
        if swap == -1 || cur < swap as u64 {
            write(dir, SWAP, swap).map_err(failed(dir, SWAP))?;
            set_limit()?;
            done = true;
        }
    }
    if !done {
        if limit != 0 {
            set_limit()?;
        }
        if swap != 0 {
            write(dir, SWAP, swap).map_err(failed(dir, SWAP))?;
        }
    }
    if let Some(res) = m.reservation().filter(|&v| v != 0) {
        write(dir, "memory.soft_limit_in_bytes", res)
            .map_err(failed(dir, "memory.soft_limit_in_bytes"))?;
    }
    Ok(())
}

/// runc's PidsGroup.Set: a negative limit is "max".
pub fn set_pids(dir: &Path, r: &LinuxResources) -> Result<()> {
    let Some(limit) = r.pids().as_ref().map(|p| p.limit()).filter(|&l| l != 0) else {
        return Ok(());
    };
    let v = if limit > 0 {
        limit.to_string()
    } else {
        "max".into()
    };
    write(dir, "pids.max", v).map_err(failed(dir, "pids.max"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(node: char, major: i64, minor: i64, p: &str, allow: bool) -> DeviceRule {
        DeviceRule {
            node,
            major,
            minor,
            perms: perms(p),
            allow,
        }
    }

    fn target(rules: &[DeviceRule]) -> Emulator {
        let mut e = Emulator::default();
        for r in rules {
            e.apply(r).unwrap();
        }
        e
    }

    #[test]
    fn a_fresh_cgroup_gets_a_reset_then_the_allowed_devices() {
        let cur = Emulator::from_list("a *:* rwm\n").unwrap();
        assert!(cur.is_blacklist());
        let t = target(&[
            rule('a', -1, -1, "rwm", false),
            // `a` is not a v1 permission: ignored, as runc ignores it.
            rule('c', 1, 11, "rwa", false),
            rule('c', 1, 3, "rwm", true),
            rule('c', -1, -1, "m", true),
        ]);
        let lines: Vec<String> = cur
            .transition(&t)
            .iter()
            .map(|r| format!("{} {}", r.allow, r.cgroup_string()))
            .collect();
        assert_eq!(lines, ["false a *:* rwm", "true c *:* m", "true c 1:3 rwm"]);
    }

    #[test]
    fn the_same_rules_again_need_no_write() {
        let t = target(&[
            rule('a', -1, -1, "rwm", false),
            rule('c', 1, 3, "rwm", true),
            rule('c', 136, -1, "rwm", true),
        ]);
        let cur = Emulator::from_list("c 1:3 rwm\nc 136:* rwm\n").unwrap();
        assert_eq!(cur, t);
        assert!(cur.transition(&t).is_empty());
    }

    #[test]
    fn lost_permissions_are_denied_before_gained_ones_are_allowed() {
        let cur = Emulator::from_list("c 1:3 rwm\nc 1:5 r\n").unwrap();
        let t = target(&[rule('c', 1, 3, "r", true), rule('c', 1, 5, "rw", true)]);
        let lines: Vec<String> = cur
            .transition(&t)
            .iter()
            .map(|r| format!("{} {}", r.allow, r.cgroup_string()))
            .collect();
        assert_eq!(lines, ["false c 1:3 wm", "true c 1:5 w"]);
    }

    #[test]
    fn a_hole_in_a_wildcard_exception_is_refused() {
        let mut e = target(&[rule('c', 136, -1, "rwm", true)]);
        let err = e.apply(&rule('c', 136, 3, "r", false)).unwrap_err();
        assert!(err.contains("cannot punch hole"), "{err}");
    }

    #[test]
    fn devices_list_parse_errors() {
        assert!(Emulator::from_list("c 1:3\n").is_err());
        assert!(Emulator::from_list("x 1:3 rwm\n").is_err());
        assert!(Emulator::from_list("c 1:3 rwx\n").is_err());
    }

    #[test]
    fn spec_rules_then_runc_defaults_deduped_by_path() {
        let spec: Vec<LinuxDeviceCgroup> = serde_json::from_str(
            r#"[{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}]"#,
        )
        .unwrap();
        let rules = device_rules(&spec, &[PathBuf::from("/dev/null")]).unwrap();
        assert_eq!(rules[0], rule('a', -1, -1, "rwm", false));
        assert_eq!(rules[1], rule('c', 10, 229, "rw", true));
        assert!(!rules.iter().any(|r| r.major == 1 && r.minor == 3));
        assert!(rules.iter().any(|r| r.major == 10 && r.minor == 200));
        let empty: Vec<LinuxDeviceCgroup> =
            serde_json::from_str(r#"[{"allow": true, "access": ""}]"#).unwrap();
        assert_eq!(
            device_rules(&empty, &[]).unwrap_err(),
            "device access at 0 field cannot be empty"
        );
    }
}
