//! `ferry events`: a container's statistics in runc's JSON shape, and its
//! out-of-memory notifications.
//!
//! runc prints one JSON object per line, `{"type":"stats","id":...,"data":
//! {...}}` (runc's types.Event and types.Stats, whose field order and
//! `omitempty` rules tools that drive runc parse), and `{"type":"oom","id":
//! ...}` on each OOM kill. The structs here mirror runc's types/events.go.
//!
//! The OOM watch is runc's notifyOnOOM (libcontainer/notify_linux.go) on a
//! v1 memory controller: an eventfd registered on `memory.oom_control`
//! through `cgroup.event_control`. The kernel also signals it once when the
//! cgroup is removed, which is how runc's `events` learns that the container
//! is gone and exits.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::error::{io, Result};

/// One line of `events` output (runc's types.Event).
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Stats>,
}

impl<'a> Event<'a> {
    pub fn stats(id: &'a str, stats: &libcgroups::stats::Stats) -> Self {
        Event {
            kind: "stats",
            id,
            data: Some(Stats::from(stats)),
        }
    }

    pub fn oom(id: &'a str) -> Self {
        Event {
            kind: "oom",
            id,
            data: None,
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// runc's types.Stats, field for field (intel_rdt stays empty: Ferry has no
/// RDT support; network_interfaces is null as with runc's fs driver).
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub cpu: Cpu,
    pub cpuset: CpuSet,
    pub memory: Memory,
    pub pids: Pids,
    pub blkio: Blkio,
    pub hugetlb: BTreeMap<String, Hugetlb>,
    pub intel_rdt: IntelRdt,
    pub network_interfaces: Option<Vec<()>>,
}

#[derive(Debug, Default, Serialize)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

#[derive(Debug, Default, Serialize)]
pub struct CpuUsage {
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_kernel: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_user: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttling {
    #[serde(skip_serializing_if = "is_zero")]
    pub periods: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

/// runc reports the cpuset files only with its cgroup v2 driver or when it
/// reads them (runc >= 1.1 on v1 too); libcgroups does not, so these stay
/// at their zero values, which is what runc prints for an unset field.
#[derive(Debug, Default, Serialize)]
pub struct CpuSet {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<u16>,
    pub cpu_exclusive: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mems: Vec<u16>,
    pub mem_hardwall: u64,
    pub mem_exclusive: u64,
    pub memory_migrate: u64,
    pub memory_spread_page: u64,
    pub memory_spread_slab: u64,
    pub memory_pressure: u64,
    pub sched_load_balance: u64,
    pub sched_relax_domain_level: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct MemoryEntry {
    pub limit: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

impl From<&libcgroups::stats::MemoryData> for MemoryEntry {
    fn from(m: &libcgroups::stats::MemoryData) -> Self {
        MemoryEntry {
            limit: m.limit,
            usage: m.usage,
            max: m.max_usage,
            failcnt: m.fail_count,
        }
    }
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    #[serde(skip_serializing_if = "is_zero")]
    pub cache: u64,
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    pub kernel: MemoryEntry,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Pids {
    #[serde(skip_serializing_if = "is_zero")]
    pub current: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct BlkioEntry {
    #[serde(skip_serializing_if = "is_zero")]
    pub major: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub minor: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub op: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub value: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Blkio {
    #[serde(
        rename = "ioServiceBytesRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_bytes: Vec<BlkioEntry>,
    #[serde(rename = "ioServicedRecursive", skip_serializing_if = "Vec::is_empty")]
    pub serviced: Vec<BlkioEntry>,
    // runc's json tag really is "ioQueueRecursive".
    #[serde(rename = "ioQueueRecursive", skip_serializing_if = "Vec::is_empty")]
    pub queued: Vec<BlkioEntry>,
    #[serde(
        rename = "ioServiceTimeRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_time: Vec<BlkioEntry>,
    #[serde(rename = "ioWaitTimeRecursive", skip_serializing_if = "Vec::is_empty")]
    pub wait_time: Vec<BlkioEntry>,
    #[serde(rename = "ioMergedRecursive", skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<BlkioEntry>,
    #[serde(rename = "ioTimeRecursive", skip_serializing_if = "Vec::is_empty")]
    pub time: Vec<BlkioEntry>,
    #[serde(rename = "sectorsRecursive", skip_serializing_if = "Vec::is_empty")]
    pub sectors: Vec<BlkioEntry>,
}

#[derive(Debug, Default, Serialize)]
pub struct Hugetlb {
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

/// Always empty (runc prints `{}` without RDT).
#[derive(Debug, Default, Serialize)]
pub struct IntelRdt {}

fn blkio_entries(v: &[libcgroups::stats::BlkioDeviceStat]) -> Vec<BlkioEntry> {
    v.iter()
        .map(|e| BlkioEntry {
            major: e.major,
            minor: e.minor,
            op: e.op_type.clone().unwrap_or_default(),
            value: e.value,
        })
        .collect()
}

fn sorted<V: Clone>(m: &HashMap<String, V>) -> BTreeMap<String, V> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl From<&libcgroups::stats::Stats> for Stats {
    /// runc's convertLibcontainerStats.
    fn from(s: &libcgroups::stats::Stats) -> Self {
        let u = &s.cpu.usage;
        let m = &s.memory;
        let b = &s.blkio;
        Stats {
            cpu: Cpu {
                usage: CpuUsage {
                    total: u.usage_total,
                    percpu: u.per_core_usage_total.clone(),
                    percpu_kernel: u.per_core_usage_kernel.clone(),
                    percpu_user: u.per_core_usage_user.clone(),
                    kernel: u.usage_kernel,
                    user: u.usage_user,
                },
                throttling: Throttling {
                    periods: s.cpu.throttling.periods,
                    throttled_periods: s.cpu.throttling.throttled_periods,
                    throttled_time: s.cpu.throttling.throttled_time,
                },
            },
            cpuset: CpuSet::default(),
            memory: Memory {
                cache: m.cache,
                usage: (&m.memory).into(),
                swap: (&m.memswap).into(),
                kernel: (&m.kernel).into(),
                kernel_tcp: (&m.kernel_tcp).into(),
                raw: sorted(&m.stats),
            },
            pids: Pids {
                current: s.pids.current,
                limit: s.pids.limit,
            },
            blkio: Blkio {
                service_bytes: blkio_entries(&b.service_bytes),
                serviced: blkio_entries(&b.serviced),
                queued: blkio_entries(&b.queued),
                service_time: blkio_entries(&b.service_time),
                wait_time: blkio_entries(&b.wait_time),
                merged: blkio_entries(&b.merged),
                time: blkio_entries(&b.time),
                sectors: blkio_entries(&b.sectors),
            },
            hugetlb: s
                .hugetlb
                .iter()
                .map(|(k, h)| {
                    (
                        k.clone(),
                        Hugetlb {
                            usage: h.usage,
                            max: h.max_usage,
                            failcnt: h.fail_count,
                        },
                    )
                })
                .collect(),
            intel_rdt: IntelRdt {},
            network_interfaces: None,
        }
    }
}

/// What [`OomWatch::wait`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum OomWait {
    /// A task of the cgroup was killed for lack of memory.
    Oom,
    /// The cgroup was removed: the container is gone.
    Gone,
    /// Nothing happened within the timeout.
    Timeout,
}

/// An eventfd registered on a v1 memory cgroup's `memory.oom_control`.
#[derive(Debug)]
pub struct OomWatch {
    dir: PathBuf,
    event: OwnedFd,
    // The registration lasts as long as both fds are open.
    _control: File,
}

impl OomWatch {
    /// Registers on the v1 memory cgroup `dir`, as runc's registerMemoryEvent.
    pub fn new(dir: &Path) -> Result<OomWatch> {
        let control_path = dir.join("memory.oom_control");
        let control = File::open(&control_path).map_err(io("opening", &control_path))?;
        // SAFETY: eventfd returns a new fd or -1; nothing else owns it.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io("creating an eventfd for", &control_path)(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is the fresh eventfd checked above.
        let event = unsafe { OwnedFd::from_raw_fd(raw) };
        let register = dir.join("cgroup.event_control");
        std::fs::write(
            &register,
            format!("{} {}", event.as_raw_fd(), control.as_raw_fd()),
        )
        .map_err(io("registering an OOM eventfd in", &register))?;
        Ok(OomWatch {
            dir: dir.to_path_buf(),
            event,
            _control: control,
        })
    }

    /// Waits up to `timeout` for an OOM kill or the cgroup's removal.
    pub fn wait(&self, timeout: Duration) -> Result<OomWait> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.event.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => return Ok(OomWait::Timeout),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(OomWait::Timeout),
            Err(e) => return Err(io("waiting for OOM events of", &self.dir)(e.into())),
        }
        let mut count = [0u8; 8];
        nix::unistd::read(self.event.as_raw_fd(), &mut count)
            .map_err(|e| io("reading the OOM eventfd of", &self.dir)(e.into()))?;
        // The kernel signals the eventfd when the cgroup is destroyed too:
        // runc checks that cgroup.event_control still exists.
        if !self.dir.join("cgroup.event_control").exists() {
            return Ok(OomWait::Gone);
        }
        Ok(OomWait::Oom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_event_has_runcs_field_order_and_omissions() {
        let mut s = libcgroups::stats::Stats::default();
        s.cpu.usage.usage_total = 10;
        s.cpu.usage.per_core_usage_total = vec![4, 6];
        s.memory.memory.limit = 100;
        s.pids.current = 3;
        let line = serde_json::to_string(&Event::stats("c1", &s)).unwrap();
        assert!(
            line.starts_with(r#"{"type":"stats","id":"c1","data":{"cpu":{"usage":{"total":10,"percpu":[4,6],"kernel":0,"user":0},"throttling":{}},"cpuset":{"cpu_exclusive":0,"#),
            "{line}"
        );
        assert!(
            line.contains(
                r#""memory":{"usage":{"limit":100,"failcnt":0},"swap":{"limit":0,"failcnt":0},"#
            ),
            "{line}"
        );
        assert!(
            line.ends_with(r#""pids":{"current":3},"blkio":{},"hugetlb":{},"intel_rdt":{},"network_interfaces":null}}"#),
            "{line}"
        );
    }

    #[test]
    fn oom_event_has_no_data() {
        assert_eq!(
            serde_json::to_string(&Event::oom("c1")).unwrap(),
            r#"{"type":"oom","id":"c1"}"#
        );
    }
}
