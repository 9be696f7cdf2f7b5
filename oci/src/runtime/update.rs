//! `ferry update`: the resources runc's update.go takes, from its flags or
//! from a JSON document, as a LinuxResources of the values to write.
//!
//! runc starts from a resources value whose fields are all zero, decodes
//! the JSON (or the flags) over it, copies memory {limit, reservation,
//! swap}, cpu {shares, quota, period, realtimeRuntime, realtimePeriod,
//! cpus, mems}, blockIO.weight, pids.limit and unified into the container's
//! config, and sets it: its cgroup writers skip zeros. A value left out is
//! therefore left as it is; so here a zero becomes "not set".

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};
use serde_json::Value;

use crate::error::{Error, Result};

/// `update`'s flags, parsed as runc parses them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpdateFlags {
    pub blkio_weight: Option<u16>,
    pub cpu_period: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_share: Option<u64>,
    pub cpu_rt_period: Option<u64>,
    pub cpu_rt_runtime: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub memory: Option<i64>,
    pub memory_reservation: Option<i64>,
    pub memory_swap: Option<i64>,
    pub pids_limit: Option<i64>,
}

/// runc's words: `invalid value for <flag>: <reason>`.
fn flag_err(flag: &'static str, reason: String) -> Error {
    Error::InvalidArgument {
        what: format!("value for {flag}"),
        reason,
    }
}

/// runc's uint flags (strconv.ParseUint).
pub fn parse_uint(flag: &'static str, v: &str) -> Result<u64> {
    v.parse().map_err(|_| {
        flag_err(
            flag,
            format!("strconv.ParseUint: parsing {v:?}: invalid syntax"),
        )
    })
}

/// runc's int flags (strconv.ParseInt).
pub fn parse_int(flag: &'static str, v: &str) -> Result<i64> {
    v.parse().map_err(|_| {
        flag_err(
            flag,
            format!("strconv.ParseInt: parsing {v:?}: invalid syntax"),
        )
    })
}

/// runc's memory flags: `-1`, or a size as docker's units.RAMInBytes reads
/// it (`50M`, `1.5g`, `64mb`, `1024`: binary multiples, case-insensitive,
/// an optional `i` and `b`).
pub fn parse_memory(flag: &'static str, v: &str) -> Result<i64> {
    if v == "-1" {
        return Ok(-1);
    }
    ram_in_bytes(v).ok_or_else(|| flag_err(flag, format!("invalid size: '{v}'")))
}

fn ram_in_bytes(s: &str) -> Option<i64> {
    let n = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(n);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    let num: f64 = num.parse().ok()?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest).to_ascii_lowercase();
    let mut chars = rest.chars().peekable();
    let shift = match chars.peek() {
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        Some('p') => 50,
        _ => 0,
    };
    if shift != 0 {
        chars.next();
    }
    if chars.peek() == Some(&'i') {
        chars.next();
    }
    if chars.peek() == Some(&'b') {
        chars.next();
    }
    if chars.next().is_some() {
        return None;
    }
    Some((num * (1u64 << shift) as f64) as i64)
}

fn nonzero<T: PartialEq + Default>(v: Option<T>) -> Option<T> {
    v.filter(|v| *v != T::default())
}

impl UpdateFlags {
    /// The values to write, runc's way (zero = unchanged).
    pub fn resources(&self) -> LinuxResources {
        let mut r = LinuxResources::default();
        let mut m = LinuxMemory::default();
        m.set_limit(nonzero(self.memory));
        m.set_reservation(nonzero(self.memory_reservation));
        m.set_swap(nonzero(self.memory_swap));
        if m != LinuxMemory::default() {
            r.set_memory(Some(m));
        }
        let mut c = LinuxCpu::default();
        c.set_shares(nonzero(self.cpu_share));
        c.set_quota(nonzero(self.cpu_quota));
        c.set_period(nonzero(self.cpu_period));
        c.set_realtime_runtime(nonzero(self.cpu_rt_runtime));
        c.set_realtime_period(nonzero(self.cpu_rt_period));
        c.set_cpus(self.cpuset_cpus.clone().filter(|s| !s.is_empty()));
        c.set_mems(self.cpuset_mems.clone().filter(|s| !s.is_empty()));
        if c != LinuxCpu::default() {
            r.set_cpu(Some(c));
        }
        if let Some(w) = nonzero(self.blkio_weight) {
            let mut b = LinuxBlockIo::default();
            b.set_weight(Some(w));
            r.set_block_io(Some(b));
        }
        if let Some(l) = nonzero(self.pids_limit) {
            let mut p = LinuxPids::default();
            p.set_limit(l);
            r.set_pids(Some(p));
        }
        r
    }
}

/// Field names of linux.resources, as the runtime spec spells them.
const KEYS: &[&str] = &[
    "devices",
    "allow",
    "type",
    "major",
    "minor",
    "access",
    "memory",
    "limit",
    "reservation",
    "swap",
    "kernel",
    "kernelTCP",
    "swappiness",
    "disableOOMKiller",
    "useHierarchy",
    "checkBeforeUpdate",
    "cpu",
    "shares",
    "quota",
    "burst",
    "period",
    "realtimeRuntime",
    "realtimePeriod",
    "cpus",
    "mems",
    "idle",
    "pids",
    "blockIO",
    "weight",
    "leafWeight",
    "weightDevice",
    "throttleReadBpsDevice",
    "throttleWriteBpsDevice",
    "throttleReadIOPSDevice",
    "throttleWriteIOPSDevice",
    "rate",
    "hugepageLimits",
    "pageSize",
    "network",
    "classID",
    "priorities",
    "name",
    "priority",
    "rdma",
    "hcaHandles",
    "hcaObjects",
    "unified",
];

/// Go's encoding/json matches object keys to fields case-insensitively
/// (`{"CPU": {"Cpus": "1"}}` sets cpu.cpus for runc); serde does not. This
/// renames such keys to the spec's spelling. The keys of `unified` are
/// cgroup file names and stay as they are.
fn normalize_keys(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let old = std::mem::take(map);
            for (k, mut val) in old {
                let key = KEYS
                    .iter()
                    .find(|known| **known == k)
                    .or_else(|| KEYS.iter().find(|known| known.eq_ignore_ascii_case(&k)))
                    .map(|s| s.to_string())
                    .unwrap_or(k);
                if key != "unified" {
                    normalize_keys(&mut val);
                }
                map.insert(key, val);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_keys),
        _ => {}
    }
}

/// `update -r`: a linux.resources JSON document, reduced to what runc's
/// update takes (runc ignores the rest, devices included).
pub fn resources_from_json(text: &[u8]) -> std::result::Result<LinuxResources, serde_json::Error> {
    let mut v: Value = serde_json::from_slice(text)?;
    normalize_keys(&mut v);
    let full: LinuxResources = serde_json::from_value(v)?;
    let mut f = UpdateFlags::default();
    if let Some(m) = full.memory() {
        f.memory = m.limit();
        f.memory_reservation = m.reservation();
        f.memory_swap = m.swap();
    }
    if let Some(c) = full.cpu() {
        f.cpu_share = c.shares();
        f.cpu_quota = c.quota();
        f.cpu_period = c.period();
        f.cpu_rt_runtime = c.realtime_runtime();
        f.cpu_rt_period = c.realtime_period();
        f.cpuset_cpus = c.cpus().clone();
        f.cpuset_mems = c.mems().clone();
    }
    f.blkio_weight = full.block_io().as_ref().and_then(|b| b.weight());
    f.pids_limit = full.pids().as_ref().map(|p| p.limit());
    let mut r = f.resources();
    r.set_unified(full.unified().clone().filter(|u| !u.is_empty()));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_as_docker_units() {
        let p = |s| parse_memory("memory", s).ok();
        assert_eq!(p("50M"), Some(50 << 20));
        assert_eq!(p("67108864"), Some(67108864));
        assert_eq!(p("1.5g"), Some(3 << 29));
        assert_eq!(p("64mb"), Some(64 << 20));
        assert_eq!(p("64 MiB"), Some(64 << 20));
        assert_eq!(p("-1"), Some(-1));
        assert_eq!(p("10k"), Some(10240));
        assert_eq!(p("M"), None);
        assert_eq!(p("5x"), None);
        assert_eq!(p("-2"), None);
        let err = parse_memory("memory", "lots").unwrap_err().to_string();
        assert!(
            err.contains("invalid value for memory: invalid size: 'lots'"),
            "{err}"
        );
    }

    #[test]
    fn zeros_and_absent_flags_are_left_alone() {
        let r = UpdateFlags {
            cpu_period: Some(900000),
            pids_limit: Some(0),
            ..Default::default()
        }
        .resources();
        assert_eq!(r.cpu().as_ref().unwrap().period(), Some(900000));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), None);
        assert!(r.pids().is_none() && r.memory().is_none());
    }

    #[test]
    fn json_keys_match_case_insensitively_as_in_go() {
        let r = resources_from_json(
            br#"{"CPU": {"Cpus": "1", "realtimeruntime": 500001},
                 "memory": {"limit": 33554432, "swappiness": 10},
                 "devices": [{"allow": true, "access": "rwm"}],
                 "unified": {"cpu.MAX": "max"}}"#,
        )
        .unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(cpu.cpus().as_deref(), Some("1"));
        assert_eq!(cpu.realtime_runtime(), Some(500001));
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(33554432));
        assert_eq!(r.memory().as_ref().unwrap().swappiness(), None);
        assert!(r.devices().is_none());
        assert!(r.unified().as_ref().unwrap().contains_key("cpu.MAX"));
    }
}
