//! Pre-flight checks: everything that can be known before the source is
//! frozen is checked before it is frozen.
//!
//! The source describes what the move needs ([`Needs`]); the destination
//! describes itself ([`HostFacts`]) and judges ([`judge`]), a pure function
//! so that every rule is unit-tested. The CPU check is CRIU's own: the
//! source's `cpuinfo.img` (CPUINFO_DUMP) is checked on the destination with
//! CPUINFO_CHECK, which knows which CPU features restored code may rely on.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use criu_rpc::{Criu, ImageDirs, Version, MIN_VERSION};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a host is, as far as receiving a container goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostFacts {
    pub criu: Version,
    pub kernel: String,
    pub arch: String,
    /// Bytes free where the destination keeps images and rootfs diffs.
    pub disk_free: u64,
    /// MemAvailable from /proc/meminfo.
    pub mem_available: u64,
    pub lazy_pages: bool,
    /// The agent has a console socket to hand restored terminals to.
    #[serde(default)]
    pub console: bool,
    /// The addresses of Ferry's network taken by containers here, and by
    /// which.
    #[serde(default)]
    pub addresses: Vec<(IpAddr, String)>,
}

/// What moving one container needs from the destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Needs {
    pub container_id: String,
    /// Resident memory of the container (what its pages will take).
    pub memory: u64,
    /// Images plus rootfs diff, estimated.
    pub disk: u64,
    /// The lower layers the destination must already hold: path there and
    /// expected digest.
    pub lower_layers: Vec<LowerLayer>,
    pub arch: String,
    /// The source's kernel release (`uname -r`).
    #[serde(default)]
    pub kernel: String,
    pub postcopy: bool,
    /// Pre-copy: the source can send the pages into the restored tasks'
    /// memory through userfaultfd (its CRIU dumps lazily) instead of into
    /// images; the destination says whether it will
    /// (`Reply::Accepted::uffd`).
    #[serde(default)]
    pub precopy_uffd: bool,
    /// The container's process has a terminal (process.terminal): its
    /// restored console's master needs somewhere to go on the destination.
    #[serde(default)]
    pub terminal: bool,
    /// The container's address on Ferry's network, which it keeps.
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// A container of a dockerd, to recreate on the destination's.
    #[serde(default)]
    pub docker: Option<Box<super::docker::DockerNeeds>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LowerLayer {
    pub path: PathBuf,
    pub digest: String,
}

pub use super::outcome::Problem;

/// Headroom kept free on the destination, beyond what the move needs.
const DISK_MARGIN: u64 = 64 << 20;
const MEM_MARGIN: u64 = 128 << 20;

/// The destination's verdict: every problem, not just the first.
/// `id_taken` and `lower_digest` are the destination's own look-ups.
pub fn judge(
    facts: &HostFacts,
    needs: &Needs,
    id_taken: bool,
    lower_digest: impl Fn(&Path) -> Option<String>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    if facts.criu < MIN_VERSION {
        out.push(Problem::CriuTooOld {
            found: facts.criu.to_string(),
            need: MIN_VERSION.to_string(),
        });
    }
    if facts.arch != needs.arch {
        out.push(Problem::ArchMismatch {
            source: needs.arch.clone(),
            destination: facts.arch.clone(),
        });
    }
    if facts.disk_free < needs.disk + DISK_MARGIN {
        out.push(Problem::NotEnoughDisk {
            need: needs.disk + DISK_MARGIN,
            free: facts.disk_free,
        });
    }
    if facts.mem_available < needs.memory + MEM_MARGIN {
        out.push(Problem::NotEnoughMemory {
            need: needs.memory + MEM_MARGIN,
            available: facts.mem_available,
        });
    }
    if let (Some(src), Some(dst)) = (kernel_version(&needs.kernel), kernel_version(&facts.kernel)) {
        if dst < src {
            out.push(Problem::KernelOlder {
                source: needs.kernel.clone(),
                destination: facts.kernel.clone(),
            });
        }
    }
    if needs.postcopy && !facts.lazy_pages {
        out.push(Problem::NoLazyPages);
    }
    if needs.terminal && !facts.console {
        out.push(Problem::NoConsole);
    }
    if let Some((address, id)) = facts
        .addresses
        .iter()
        .find(|(a, _)| Some(*a) == needs.address)
    {
        out.push(Problem::AddressInUse {
            address: *address,
            id: id.clone(),
        });
    }
    if id_taken {
        out.push(Problem::IdInUse {
            id: needs.container_id.clone(),
        });
    }
    for l in &needs.lower_layers {
        match lower_digest(&l.path) {
            None => out.push(Problem::LowerLayerMissing {
                path: l.path.clone(),
            }),
            Some(d) if d != l.digest => out.push(Problem::LowerLayerDiffers {
                path: l.path.clone(),
                expected: l.digest.clone(),
                found: d,
            }),
            Some(_) => {}
        }
    }
    out
}

/// (major, minor) of a kernel release such as "6.18.0-1-amd64".
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn meminfo_available(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

impl HostFacts {
    /// This host's facts; `state_dir` is where incoming containers land.
    pub fn gather(criu: &Criu, state_dir: &Path) -> Result<HostFacts> {
        let uts = nix::sys::utsname::uname().map_err(|e| Error::Io {
            op: "uname",
            path: PathBuf::new(),
            source: e.into(),
        })?;
        let st = nix::sys::statvfs::statvfs(state_dir).map_err(|e| Error::Io {
            op: "statvfs",
            path: state_dir.to_path_buf(),
            source: e.into(),
        })?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|source| Error::Io {
            op: "reading",
            path: "/proc/meminfo".into(),
            source,
        })?;
        let features = criu.features()?;
        Ok(HostFacts {
            criu: criu.version()?,
            kernel: uts.release().to_string_lossy().into_owned(),
            arch: uts.machine().to_string_lossy().into_owned(),
            disk_free: st.blocks_available() as u64 * st.fragment_size() as u64,
            mem_available: meminfo_available(&meminfo).unwrap_or(0),
            lazy_pages: features.lazy_pages,
            console: false,
            addresses: crate::runtime::container::list(state_dir)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(s, _)| Some((s.net?.address.addr, s.id)))
                .collect(),
        })
    }
}

/// This CPU's description, as CRIU writes it (cpuinfo.img), to send to the
/// destination. `scratch` is an empty directory.
pub fn cpuinfo(criu: &Criu, scratch: &Path) -> Result<Vec<u8>> {
    criu.cpuinfo_dump(&ImageDirs::open(scratch)?.log_file("cpuinfo-dump.log"))?;
    let p = scratch.join("cpuinfo.img");
    std::fs::read(&p).map_err(|source| Error::Io {
        op: "reading",
        path: p,
        source,
    })
}

/// Whether this CPU can run tasks dumped on the CPU `image` describes.
/// `scratch` is an empty directory.
pub fn check_cpuinfo(criu: &Criu, image: &[u8], scratch: &Path) -> Result<Option<Problem>> {
    let p = scratch.join("cpuinfo.img");
    std::fs::write(&p, image).map_err(|source| Error::Io {
        op: "writing",
        path: p,
        source,
    })?;
    match criu.cpuinfo_check(&ImageDirs::open(scratch)?.log_file("cpuinfo-check.log")) {
        Ok(()) => Ok(None),
        Err(criu_rpc::Error::Failed { criu, log, .. }) => Ok(Some(Problem::CpuIncompatible {
            detail: log
                .as_ref()
                .and_then(|l| l.cause().map(str::to_string))
                .unwrap_or_else(|| criu.to_string()),
        })),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            criu: Version {
                major: 4,
                minor: 2,
                sublevel: 1,
                gitid: None,
            },
            kernel: "6.18.0".into(),
            arch: "x86_64".into(),
            disk_free: 10 << 30,
            mem_available: 8 << 30,
            lazy_pages: true,
            console: false,
            addresses: vec![],
        }
    }

    fn needs() -> Needs {
        Needs {
            container_id: "c1".into(),
            memory: 1 << 30,
            disk: 1 << 30,
            lower_layers: vec![LowerLayer {
                path: "/var/lib/ferry/layers/busybox".into(),
                digest: "sha256:aa".into(),
            }],
            arch: "x86_64".into(),
            kernel: "6.18.0".into(),
            postcopy: false,
            precopy_uffd: false,
            terminal: false,
            address: None,
            docker: None,
        }
    }

    #[test]
    fn an_address_taken_on_the_destination_is_named() {
        let facts = HostFacts {
            addresses: vec![("10.66.0.50".parse().unwrap(), "web".into())],
            ..facts()
        };
        let digest = |_: &Path| Some("sha256:aa".to_string());
        let mut n = needs();
        assert!(judge(&facts, &n, false, digest).is_empty());
        n.address = Some("10.66.0.50".parse().unwrap());
        let problems = judge(&facts, &n, false, digest);
        assert_eq!(
            problems,
            [Problem::AddressInUse {
                address: "10.66.0.50".parse().unwrap(),
                id: "web".into()
            }]
        );
        assert!(problems[0].to_string().contains("container web"));
    }

    #[test]
    fn a_terminal_needs_an_agent_with_a_console_socket() {
        let mut n = needs();
        n.terminal = true;
        let digest = |_: &Path| Some("sha256:aa".to_string());
        assert_eq!(judge(&facts(), &n, false, digest), [Problem::NoConsole]);
        let with_console = HostFacts {
            console: true,
            ..facts()
        };
        assert!(judge(&with_console, &n, false, digest).is_empty());
        assert!(Problem::NoConsole.to_string().contains("--console-socket"));
    }

    #[test]
    fn an_older_destination_kernel_is_refused() {
        let mut f = facts();
        f.kernel = "6.1.0-28-amd64".into();
        let got = judge(&f, &needs(), false, same);
        assert!(matches!(got[..], [Problem::KernelOlder { .. }]), "{got:?}");
        f.kernel = "6.19.2".into();
        assert!(judge(&f, &needs(), false, same).is_empty());
        assert_eq!(kernel_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(kernel_version("garbage"), None);
    }

    fn same(_: &Path) -> Option<String> {
        Some("sha256:aa".into())
    }

    #[test]
    fn a_fitting_destination_has_no_problem() {
        assert!(judge(&facts(), &needs(), false, same).is_empty());
    }

    #[test]
    fn every_problem_is_reported() {
        let mut f = facts();
        f.criu.minor = 1;
        f.arch = "aarch64".into();
        f.disk_free = 1 << 20;
        f.mem_available = 1 << 20;
        f.lazy_pages = false;
        let mut n = needs();
        n.postcopy = true;
        f.kernel = "5.10.0".into();
        let got = judge(&f, &n, true, |_| None);
        assert_eq!(got.len(), 8, "{got:?}");
        let text: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert!(text[0].contains("older than 4.2"));
        assert!(text.iter().any(|t| t.contains("already exists")));
        assert!(text.iter().any(|t| t.contains("--mode precopy")));
        assert!(text.iter().any(|t| t.contains("busybox is missing")));
    }

    #[test]
    fn a_different_lower_layer_is_named() {
        let got = judge(&facts(), &needs(), false, |_| Some("sha256:bb".into()));
        assert_eq!(
            got,
            [Problem::LowerLayerDiffers {
                path: "/var/lib/ferry/layers/busybox".into(),
                expected: "sha256:aa".into(),
                found: "sha256:bb".into()
            }]
        );
    }

    #[test]
    fn meminfo_parsing() {
        let t = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(meminfo_available(t), Some(2048 * 1024));
        assert_eq!(meminfo_available("nothing"), None);
    }
}
