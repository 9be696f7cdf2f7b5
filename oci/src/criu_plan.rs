//! What CRIU must be told about a container, derived from its spec: the
//! pure half of checkpoint and restore.
//!
//! CRIU dumps what it can see inside the container and must be told about
//! everything that comes from outside it. These rules follow runc
//! (libcontainer/criu_linux.go) so that images are interchangeable in
//! spirit and reviewers find what they expect:
//! - bind mounts are external mounts, named by their destination on dump
//!   (`addCriuDumpMount`) and bound again from their source on restore
//!   (`addCriuRestoreMount`); the name is the destination resolved inside
//!   the rootfs (runc's securejoin), since a destination through a symlink
//!   is mounted, and appears in mountinfo, where the symlink leads;
//! - masked paths that are files are /dev/null bind mounts: external, named
//!   "/dev/null" (`addMaskPaths`); masked directories are read-only empty
//!   tmpfs mounts, which runc lets CRIU dump itself (a tar process per
//!   mount on dump and another on restore, inside the downtime: tens of
//!   milliseconds for nothing). Ferry names them external too,
//!   [`MASKED_DIR_KEY`], and binds an empty directory of the restoring
//!   host there, read-only as dumped: empty and read-only as before, at
//!   no cost in the downtime. An image whose masked directories CRIU
//!   dumped (runc's) restores as before: the key is then unused;
//! - device nodes are named by their path both ways;
//! - a network or pid namespace given by path in the spec is external:
//!   `net[INODE]:extRootNetNS` on dump, the namespace's fd handed to the
//!   restore under the key `extRootNetNS` (`criuNsToKey`); other namespaces
//!   given by path are joined on restore (`join_ns`); a cgroup namespace by
//!   path cannot be restored;
//! - cgroup mounts need nothing when the container has a cgroup namespace
//!   (they are real mounts CRIU dumps); without one (docker's default on
//!   cgroup v1), each hierarchy is a bind of the container's cgroup dir and
//!   is external, bound on restore to the new container's dir in the same
//!   hierarchy (runc's getCgroupMounts). Ferry finds them in the running
//!   container's mountinfo rather than guessing from the spec. The tmpfs
//!   they are mounted on (the `cgroup` mount itself on a v1 host) holds
//!   only their mountpoints: external too ([`CgroupTmpfs`]), made anew on
//!   restore, where runc lets CRIU tar and untar it;
//! - the tmpfs mounts the runtime made (the spec's `tmpfs` mounts, when
//!   each is a whole private tmpfs: /dev, /dev/shm) are external too
//!   ([`own_tmpfs_mounts`]) when the caller freezes the container itself:
//!   Ferry copies their content while CRIU dumps and makes them anew on
//!   restore ([`crate::tmpfs_copy`]), where runc lets CRIU tar and gzip
//!   each inside the downtime;
//!
//! - CRIU's configuration file: the `org.criu.config` annotation names it
//!   (an empty value means none), and without the annotation it is
//!   /etc/criu/runc.conf (runc's handleCriuConfigurationFile): a site
//!   configures CRIU for runc and Ferry alike.
//!
//! Nothing here touches the system: callers pass what must be looked up
//! (which masked paths are files, namespace inodes).

use std::path::{Path, PathBuf};

use criu_rpc::{ExtMount, JoinNamespace};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::error::{Error, Result};

/// The annotation that names a container's own CRIU configuration file.
pub const CRIU_CONFIG_ANNOTATION: &str = "org.criu.config";
/// The CRIU configuration file runc (and so Ferry) passes by default.
pub const DEFAULT_CRIU_CONFIG: &str = "/etc/criu/runc.conf";

/// The external name of every masked directory's mount (see the module).
pub const MASKED_DIR_KEY: &str = "ferry-masked-dir";

/// The prefix of the external name of a `cgroup` mount's tmpfs (see
/// [`cgroup_tmpfs_mounts`]); its container path follows.
pub const CGROUP_TMPFS_KEY: &str = "ferry-cgroup-tmpfs";

/// The CRIU configuration file for this container's dumps and restores
/// (its settings override the RPC options; CRIU ignores a missing file).
pub fn criu_config_file(spec: &Spec) -> Option<PathBuf> {
    match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(CRIU_CONFIG_ANNOTATION))
    {
        Some(f) if f.is_empty() => None,
        Some(f) => Some(PathBuf::from(f)),
        None => Some(PathBuf::from(DEFAULT_CRIU_CONFIG)),
    }
}

/// CRIU's key for an external network namespace, as runc names it.
pub const NET_NS_KEY: &str = "extRootNetNS";

/// CRIU's key for an external namespace of this type, as runc names it.
pub fn external_ns_key(ty: LinuxNamespaceType) -> Option<&'static str> {
    match ty {
        LinuxNamespaceType::Network => Some(NET_NS_KEY),
        LinuxNamespaceType::Pid => Some("extRootPidNS"),
        _ => None,
    }
}

fn ns_name(ty: LinuxNamespaceType) -> &'static str {
    match ty {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// A bind mount: type "bind", or "bind"/"rbind" among its options (docker
/// writes `"type": "bind"`, some tools only the option).
pub fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

fn dest_key(p: &Path) -> String {
    // Mount destinations are container paths; CRIU keys are absolute.
    let s = p.to_string_lossy();
    if s.starts_with('/') {
        s.into_owned()
    } else {
        format!("/{s}")
    }
}

fn mounts(spec: &Spec) -> &[Mount] {
    spec.mounts().as_deref().unwrap_or_default()
}

fn masked(spec: &Spec) -> &[String] {
    spec.linux()
        .as_ref()
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or_default()
}

fn device_paths(spec: &Spec) -> Vec<String> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .map(|d| d.iter().map(|d| dest_key(d.path())).collect())
        .unwrap_or_default()
}

/// Whether the spec gives the container a network namespace of its own
/// (one without a path: not joined, not the host's).
pub fn own_netns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none())
        })
}

/// The namespaces the spec gives by path.
pub fn namespaces_by_path(spec: &Spec) -> Vec<(LinuxNamespaceType, PathBuf)> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(|ns| {
            ns.iter()
                .filter_map(|n| n.path().as_ref().map(|p| (n.typ(), p.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// How a caller names a mount destination to CRIU: the container path it
/// resolves to inside the rootfs ([`crate::runtime::securejoin`]), or
/// [`plain_key`] where nothing is to be resolved.
pub type MountKey<'a> = &'a dyn Fn(&Path) -> String;

/// A destination as it is written, made absolute.
pub fn plain_key(p: &Path) -> String {
    dest_key(p)
}

/// External mounts for a dump. `is_file(p)` says whether the masked path
/// `p` is a file inside the running container (runc stats
/// /proc/PID/root/p); `key` names bind and device destinations.
pub fn dump_ext_mounts(
    spec: &Spec,
    is_file: impl Fn(&str) -> bool,
    key: MountKey<'_>,
) -> Vec<ExtMount> {
    let mut out: Vec<ExtMount> = mounts(spec)
        .iter()
        .filter(|m| is_bind(m))
        .map(|m| {
            let k = key(m.destination());
            ExtMount {
                key: k.clone(),
                value: k,
            }
        })
        .collect();
    out.extend(
        masked(spec)
            .iter()
            .filter(|p| is_file(p))
            .map(|p| ExtMount {
                key: p.clone(),
                value: "/dev/null".into(),
            }),
    );
    out.extend(device_paths(spec).into_iter().map(|p| {
        let k = key(Path::new(&p));
        ExtMount {
            key: k.clone(),
            value: k,
        }
    }));
    out
}

/// External mounts for a dump: the mounts on masked directories, found in
/// the running container's mountinfo (a masked path that does not exist
/// is not masked, as in runc, and has no mount). `is_file` as for
/// [`dump_ext_mounts`]: masked files are /dev/null's.
pub fn masked_dir_mounts(
    spec: &Spec,
    container_mountinfo: &str,
    is_file: impl Fn(&str) -> bool,
) -> Vec<ExtMount> {
    let dirs: Vec<&String> = masked(spec).iter().filter(|p| !is_file(p)).collect();
    parse_mountinfo(container_mountinfo)
        .into_iter()
        .filter(|m| {
            dirs.iter()
                .any(|p| Path::new(p) == Path::new(&m.mountpoint))
        })
        .map(|m| ExtMount {
            key: m.mountpoint,
            value: MASKED_DIR_KEY.into(),
        })
        .collect()
}

/// The tmpfs a `cgroup` mount is, on a cgroup v1 host, in a container
/// without a cgroup namespace: the init mounts it with a directory per
/// hierarchy and binds the container's cgroup dir of each on those
/// ([`crate::runtime::init`], as runc does). Its content is only those
/// mountpoints, yet CRIU would tar it on dump and untar it on restore, in
/// a mount namespace of its own since mounts cover it (~15 ms of a frozen
/// busybox here). Ferry names it external and mounts a tmpfs with the same
/// directories on restore ([`CgroupTmpfs`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupTmpfs {
    /// Its container path.
    pub mountpoint: String,
    /// The directories it holds, each a cgroup bind's mountpoint.
    pub dirs: Vec<String>,
}

impl CgroupTmpfs {
    /// How the init mounts it, and so the restore too.
    pub const FLAGS: nix::mount::MsFlags = nix::mount::MsFlags::MS_NOSUID
        .union(nix::mount::MsFlags::MS_NODEV)
        .union(nix::mount::MsFlags::MS_NOEXEC);
    pub const DATA: &'static str = "mode=755";

    /// The external name it is dumped and restored under.
    pub fn key(&self) -> String {
        format!("{CGROUP_TMPFS_KEY}{}", self.mountpoint)
    }
}

/// The `cgroup` mounts of `spec` that are such a tmpfs in the running
/// container (`container_mountinfo`), with exactly the directories its
/// cgroup binds are mounted on: `entries(mountpoint)` lists the tmpfs's
/// own entries (name, is a directory), None if unreadable. A tmpfs holding
/// anything else (a file a process made there) is left to CRIU, which
/// keeps its content.
pub fn cgroup_tmpfs_mounts(
    spec: &Spec,
    container_mountinfo: &str,
    entries: impl Fn(&str) -> Option<Vec<(String, bool)>>,
) -> Vec<CgroupTmpfs> {
    let binds = cgroup_binds(container_mountinfo);
    let info = parse_mountinfo(container_mountinfo);
    mounts(spec)
        .iter()
        .filter(|m| m.typ().as_deref() == Some("cgroup"))
        .filter_map(|m| {
            let mp = m.destination().to_string_lossy().into_owned();
            // The top mount there (the last in mountinfo) is the tmpfs.
            let top = info.iter().rev().find(|i| i.mountpoint == mp)?;
            if top.fstype != "tmpfs" {
                return None;
            }
            let mut dirs = Vec::new();
            for (name, is_dir) in entries(&mp)? {
                let under = Path::new(&mp).join(&name);
                if !is_dir || !binds.iter().any(|b| Path::new(&b.mountpoint) == under) {
                    return None;
                }
                dirs.push(name);
            }
            dirs.sort();
            Some(CgroupTmpfs {
                mountpoint: mp,
                dirs,
            })
        })
        .collect()
}

/// The prefix of the external name of a tmpfs Ferry copies itself
/// ([`own_tmpfs_mounts`]); its container path follows.
pub const OWN_TMPFS_KEY: &str = "ferry-tmpfs";

/// A tmpfs the runtime mounted for the container (the spec's `tmpfs`
/// mounts: /dev, /dev/shm, a `--tmpfs` of docker's), which CRIU would dump
/// with a `tar --gzip` process and restore with another, each inside the
/// downtime (~5-7 ms apiece for a busybox's /dev here). Ferry names it
/// external and copies its content itself while CRIU dumps
/// ([`crate::tmpfs_copy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnTmpfs {
    /// Its container path.
    pub mountpoint: String,
    /// Its superblock, "major:minor" (the copy checks it is that one).
    pub dev: String,
    /// mountinfo's source ("tmpfs", "shm").
    pub source: String,
    /// Its superblock's options as mountinfo shows them ("rw,size=65536k").
    pub super_options: String,
}

impl OwnTmpfs {
    /// The external name it is dumped and restored under.
    pub fn key(&self) -> String {
        own_tmpfs_key(&self.mountpoint)
    }
}

/// The external name of the tmpfs Ferry copies at `mountpoint`.
pub fn own_tmpfs_key(mountpoint: &str) -> String {
    format!("{OWN_TMPFS_KEY}{mountpoint}")
}

/// The spec's `tmpfs` mounts that Ferry can copy itself in the running
/// container (`container_mountinfo`): the top mount at their destination
/// is a whole tmpfs (root "/"), private (a peer or slave would need CRIU
/// to keep its sharing), and no other mount of the container shows its
/// superblock but those already external (`external`: a masked file is a
/// bind of /dev's null, named external "/dev/null"). Anything else is left
/// to CRIU.
pub fn own_tmpfs_mounts(
    spec: &Spec,
    container_mountinfo: &str,
    external: &[ExtMount],
) -> Vec<OwnTmpfs> {
    let info = parse_mountinfo(container_mountinfo);
    let is_external = |mp: &str| external.iter().any(|e| e.key == mp);
    let mut out: Vec<OwnTmpfs> = Vec::new();
    for m in mounts(spec) {
        if m.typ().as_deref() != Some("tmpfs") || is_bind(m) {
            continue;
        }
        let mp = dest_key(m.destination());
        // The top mount there (the last in mountinfo) is what CRIU sees.
        let Some(top) = info.iter().rev().find(|i| i.mountpoint == mp) else {
            continue;
        };
        let whole_private_tmpfs =
            top.fstype == "tmpfs" && top.root == "/" && top.optional.is_empty();
        let shown_elsewhere = info
            .iter()
            .filter(|i| i.dev == top.dev && !std::ptr::eq(*i, top))
            .any(|i| !is_external(&i.mountpoint));
        if whole_private_tmpfs
            && !shown_elsewhere
            && !is_external(&mp)
            && !out.iter().any(|o| o.mountpoint == mp)
        {
            out.push(OwnTmpfs {
                mountpoint: mp,
                dev: top.dev.clone(),
                source: top.source.clone(),
                super_options: top.super_options.clone(),
            });
        }
    }
    out
}

/// External mounts for a restore: each name recorded at dump time (`key`,
/// as for the dump), bound to where it comes from on this host;
/// `empty_dir` is the empty directory masked directories are bound from.
pub fn restore_ext_mounts(spec: &Spec, key: MountKey<'_>, empty_dir: &Path) -> Vec<ExtMount> {
    let mut out: Vec<ExtMount> = mounts(spec)
        .iter()
        .filter(|m| is_bind(m))
        .map(|m| ExtMount {
            key: key(m.destination()),
            value: m
                .source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        })
        .collect();
    if !masked(spec).is_empty() {
        out.push(ExtMount {
            key: "/dev/null".into(),
            value: "/dev/null".into(),
        });
        out.push(ExtMount {
            key: MASKED_DIR_KEY.into(),
            value: empty_dir.to_string_lossy().into_owned(),
        });
    }
    out.extend(device_paths(spec).into_iter().map(|p| ExtMount {
        key: key(Path::new(&p)),
        value: p,
    }));
    out
}

/// `external` entries for a dump: namespaces given by path.
/// `inode(path)` is the namespace file's inode.
pub fn dump_external_namespaces(
    spec: &Spec,
    inode: impl Fn(&Path) -> Result<u64>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (ty, path) in namespaces_by_path(spec) {
        if let Some(key) = external_ns_key(ty) {
            out.push(format!("{}[{}]:{key}", ns_name(ty), inode(&path)?));
        }
    }
    Ok(out)
}

/// How a restore gets the namespaces the spec gives by path.
#[derive(Debug, Default)]
pub struct RestoreNamespaces {
    /// External ones (net, pid): (key, path) to open and hand in with
    /// `inherit_fd`.
    pub inherit: Vec<(&'static str, PathBuf)>,
    /// The others, joined with `join_ns`.
    pub join: Vec<JoinNamespace>,
}

pub fn restore_namespaces(spec: &Spec) -> Result<RestoreNamespaces> {
    let mut inherit = Vec::new();
    let mut join = Vec::new();
    for (ty, path) in namespaces_by_path(spec) {
        if let Some(key) = external_ns_key(ty) {
            inherit.push((key, path));
        } else if ty == LinuxNamespaceType::Cgroup {
            // runc: "CRIU has no code to handle NEWCGROUP".
            return Err(Error::Unsupported {
                what: "restoring into a cgroup namespace given by path",
                hint: "drop linux.namespaces[cgroup].path from config.json: Ferry creates the cgroup namespace",
            });
        } else {
            join.push(JoinNamespace {
                ns: ns_name(ty).to_string(),
                file: path,
                extra: None,
            });
        }
    }
    Ok(RestoreNamespaces { inherit, join })
}

/// Whether a checkpoint's cgroups (its cgroup.img, decoded) are those of
/// a container whose tasks all sit in its own cgroup: one cgroup set for
/// every task, no cgroup namespace, no cgroup below the container's in any
/// hierarchy. Restoring such a checkpoint with CRIU's cgroup mode `soft`
/// (runc's default) makes CRIU move the root task into the very cgroups
/// criu was moved into before the request (cgroup.c `restore_task_cgroup`:
/// its set differs from the dumping criu's), and that first attach waits
/// an RCU grace period inside the downtime; `ignore` leaves the tasks
/// where criu is, which is the same place, and restores nothing else that
/// `soft` would (soft sets no property on cgroups that exist). Anything
/// else, or an image that does not say, keeps `soft`.
pub fn cgroups_flat(cgroup_img: &serde_json::Value) -> bool {
    let Some([entry]) = cgroup_img["entries"].as_array().map(Vec::as_slice) else {
        return false;
    };
    let one_set = match entry["sets"].as_array().map(Vec::as_slice) {
        Some([set]) => set["ctls"].as_array().is_some_and(|ctls| {
            ctls.iter()
                .all(|c| c["cgns_prefix"].as_u64().unwrap_or(0) == 0)
        }),
        _ => false,
    };
    let no_sub_cgroups = entry["controllers"].as_array().is_some_and(|cs| {
        cs.iter()
            .all(|c| match c["dirs"].as_array().map(Vec::as_slice) {
                Some([dir]) => dir["children"].as_array().is_none_or(Vec::is_empty),
                Some([]) | None => true,
                _ => false,
            })
    });
    one_set && no_sub_cgroups
}

/// One line of /proc/PID/mountinfo, the fields Ferry uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The superblock's device, "major:minor".
    pub dev: String,
    pub root: String,
    pub mountpoint: String,
    /// The optional fields: propagation ("shared:N", "master:N", ...).
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

/// Parses /proc/PID/mountinfo (proc(5)).
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some(MountInfo {
                dev: pre.get(2)?.to_string(),
                root: unescape(pre.get(3)?),
                mountpoint: unescape(pre.get(4)?),
                optional: pre.iter().skip(6).map(|o| o.to_string()).collect(),
                fstype: post.first()?.to_string(),
                source: unescape(post.get(1).unwrap_or(&"")),
                super_options: post.get(2).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup hierarchy: its controllers as mounted ("cpu,cpuacct",
/// "name=systemd"), or "" for cgroup2.
pub fn hierarchy_of(m: &MountInfo) -> Option<String> {
    match m.fstype.as_str() {
        "cgroup2" => Some(String::new()),
        "cgroup" => {
            let mut ctrls: Vec<&str> = m
                .super_options
                .split(',')
                .filter(|o| {
                    !matches!(*o, "rw" | "ro" | "xattr" | "clone_children" | "noprefix")
                        && !o.starts_with("release_agent=")
                })
                .collect();
            ctrls.sort_unstable();
            Some(ctrls.join(","))
        }
        _ => None,
    }
}

/// A cgroup yard for CRIU ([`criu_rpc::TreeOptions::cgroup_yard`]): for
/// each hierarchy this process is in (`own_cgroup`, its /proc/self/cgroup;
/// CRIU's swrk child is in the same), CRIU's name for it and the mountpoint
/// of that hierarchy's root in `host_mountinfo`. CRIU names a hierarchy by
/// its /proc/self/cgroup field as written, `name=` dropped, `unified` for
/// cgroup2 (cgroup.c: collect_cgroups, ctrl_dir_and_opt). None when a
/// hierarchy has no mount of its root here (a cgroup namespace, an
/// unmounted v1 hierarchy): CRIU then mounts each one itself, as without a
/// yard.
pub fn cgroup_yard_entries(
    host_mountinfo: &str,
    own_cgroup: &str,
) -> Option<Vec<(String, PathBuf)>> {
    let roots = hierarchy_root_mounts(host_mountinfo);
    own_cgroup
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let field = l.split(':').nth(1)?;
            let mut sorted: Vec<&str> = field.split(',').filter(|c| !c.is_empty()).collect();
            sorted.sort_unstable();
            let hierarchy = sorted.join(",");
            let (_, mountpoint) = roots.iter().find(|(h, _)| *h == hierarchy)?;
            let name = if field.is_empty() {
                "unified".to_string()
            } else {
                field
                    .split(',')
                    .map(|c| c.strip_prefix("name=").unwrap_or(c))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            Some((name, PathBuf::from(mountpoint)))
        })
        .collect()
}

/// The mounts of cgroup hierarchies' roots in `host_mountinfo`: (the
/// hierarchy as [`hierarchy_of`] names it, its mountpoint), in mountinfo's
/// order, so that a search finds a hierarchy's first mount (the system's;
/// later ones, a bind or a CRIU yard left mounted, show the same cgroups).
pub fn hierarchy_root_mounts(host_mountinfo: &str) -> Vec<(String, String)> {
    parse_mountinfo(host_mountinfo)
        .into_iter()
        .filter(|m| m.root == "/")
        .filter_map(|m| Some((hierarchy_of(&m)?, m.mountpoint)))
        .collect()
}

/// A cgroup hierarchy bind-mounted into a container without a cgroup
/// namespace: external to CRIU.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupBind {
    pub mountpoint: String,
    pub hierarchy: String,
}

/// The cgroup binds in a container's mountinfo: cgroup mounts whose root is
/// not the hierarchy's root.
pub fn cgroup_binds(container_mountinfo: &str) -> Vec<CgroupBind> {
    parse_mountinfo(container_mountinfo)
        .into_iter()
        .filter(|m| m.root != "/")
        .filter_map(|m| {
            Some(CgroupBind {
                hierarchy: hierarchy_of(&m)?,
                mountpoint: m.mountpoint,
            })
        })
        .collect()
}

/// Where each hierarchy's cgroup of a process is, from /proc/PID/cgroup:
/// hierarchy (as [`hierarchy_of`] names it) -> path in the hierarchy.
pub fn parse_proc_cgroup(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            let mut ctrls: Vec<&str> = f.next()?.split(',').filter(|c| !c.is_empty()).collect();
            ctrls.sort_unstable();
            Some((ctrls.join(","), f.next()?.to_string()))
        })
        .collect()
}

/// For a restore: each cgroup bind's name mapped to the new container's
/// dir in that hierarchy on this host. `host_mountinfo` locates the
/// hierarchies, `cgroup` is /proc/PID/cgroup of a process already placed in
/// the new container's cgroups (criu, as runc does).
pub fn restore_cgroup_binds(
    binds: &[CgroupBind],
    host_mountinfo: &str,
    cgroup: &str,
) -> Result<Vec<ExtMount>> {
    let hierarchies = hierarchy_root_mounts(host_mountinfo);
    let placed = parse_proc_cgroup(cgroup);
    binds
        .iter()
        .map(|b| {
            let missing = || Error::CgroupHierarchyMissing {
                hierarchy: b.hierarchy.clone(),
            };
            let (_, host) = hierarchies
                .iter()
                .find(|(h, _)| *h == b.hierarchy)
                .ok_or_else(missing)?;
            let (_, rel) = placed
                .iter()
                .find(|(h, _)| *h == b.hierarchy)
                .ok_or_else(missing)?;
            Ok(ExtMount {
                key: b.mountpoint.clone(),
                value: format!("{host}{}", if rel == "/" { "" } else { rel }),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const DOCKERISH: &str = r#"{
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/docker/c/hosts", "options": ["rbind", "rprivate"]},
            {"destination": "/data", "source": "/srv/data", "options": ["rbind", "ro"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "mount"}, {"type": "cgroup"},
                {"type": "network", "path": "/var/run/netns/c1"},
                {"type": "uts", "path": "/proc/42/ns/uts"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/acpi"],
            "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
        }
    }"#;

    #[test]
    fn bind_mounts_by_type_or_option() {
        let s = spec(DOCKERISH);
        let binds: Vec<bool> = mounts(&s).iter().map(is_bind).collect();
        assert_eq!(binds, [false, true, true, false]);
    }

    #[test]
    fn dump_names_binds_masked_files_and_devices() {
        let s = spec(DOCKERISH);
        let got = dump_ext_mounts(&s, |p| p == "/proc/kcore", &plain_key);
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("/etc/hosts", "/etc/hosts"),
                ("/data", "/data"),
                ("/proc/kcore", "/dev/null"),
                ("/dev/fuse", "/dev/fuse"),
            ]
        );
    }

    #[test]
    fn restore_binds_names_to_sources() {
        let s = spec(DOCKERISH);
        let pairs: Vec<(String, String)> = restore_ext_mounts(&s, &plain_key, Path::new("/e"))
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        assert_eq!(
            pairs,
            [
                ("/etc/hosts".into(), "/var/lib/docker/c/hosts".into()),
                ("/data".into(), "/srv/data".into()),
                ("/dev/null".into(), "/dev/null".into()),
                (MASKED_DIR_KEY.into(), "/e".into()),
                ("/dev/fuse".into(), "/dev/fuse".into()),
            ]
        );
    }

    #[test]
    fn masked_directories_are_external_by_their_mountpoint() {
        let s = spec(DOCKERISH);
        // /proc/acpi is masked (a tmpfs, or after a restore a bind of
        // the empty dir); /proc/kcore is a masked file (/dev/null's, named
        // by dump_ext_mounts); /dev/shm is a tmpfs that is not masked:
        // CRIU dumps its content.
        let mountinfo = "\
100 90 0:50 / /proc rw - proc proc rw
101 100 0:51 / /proc/acpi ro,relatime - tmpfs tmpfs ro,size=0k
102 90 0:52 / /dev/shm rw - tmpfs shm rw
103 100 0:5 /null /proc/kcore rw - devtmpfs udev rw
";
        let m: Vec<(String, String)> = masked_dir_mounts(&s, mountinfo, |p| p == "/proc/kcore")
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        assert_eq!(m, [("/proc/acpi".into(), MASKED_DIR_KEY.into())]);
        let restored = mountinfo.replace(
            "0:51 / /proc/acpi ro,relatime - tmpfs tmpfs ro,size=0k",
            "254:1 /run/ferry/c1/masked-empty /proc/acpi ro - ext4 /dev/vda rw",
        );
        assert_eq!(
            masked_dir_mounts(&s, &restored, |p| p == "/proc/kcore").len(),
            1,
            "a restored container's masked dir is external again"
        );
    }

    #[test]
    fn network_namespace_by_path_is_external() {
        let s = spec(DOCKERISH);
        let ext = dump_external_namespaces(&s, |p| {
            assert_eq!(p, Path::new("/var/run/netns/c1"));
            Ok(4026532000)
        })
        .unwrap();
        assert_eq!(ext, ["net[4026532000]:extRootNetNS"]);
        let RestoreNamespaces { inherit, join } = restore_namespaces(&s).unwrap();
        assert_eq!(
            inherit,
            [("extRootNetNS", PathBuf::from("/var/run/netns/c1"))]
        );
        assert_eq!(join.len(), 1);
        assert_eq!(
            (join[0].ns.as_str(), join[0].file.as_path()),
            ("uts", Path::new("/proc/42/ns/uts"))
        );
    }

    #[test]
    fn cgroup_namespace_by_path_cannot_be_restored() {
        let s = spec(
            r#"{"ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "cgroup", "path": "/proc/1/ns/cgroup"}]}}"#,
        );
        let err = restore_namespaces(&s).unwrap_err();
        assert!(err.to_string().contains("cgroup namespace"), "{err}");
    }

    const RUNC_MOUNTINFO: &str = "\
74 73 0:45 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
75 74 0:29 /c1 /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpuacct,cpu
78 74 0:32 /nested/c1 /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
83 74 0:37 /c1 /sys/fs/cgroup/systemd ro,nosuid - cgroup cgroup rw,xattr,name=systemd
90 73 0:50 / /data\\040dir rw - ext4 /dev/vda rw
";

    #[test]
    fn cgroup_yard_names_each_hierarchy_as_criu_does() {
        // A hybrid host (Debian's): v1 controllers, name=systemd, cgroup2;
        // a container's bind of a hierarchy (root not /) is no yard entry.
        let mi = "\
24 30 0:20 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
25 24 0:21 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
26 24 0:22 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
27 24 0:23 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
28 24 0:24 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
90 80 0:24 /ferry/c1 /run/c1/rootfs/sys/fs/cgroup/pids ro - cgroup cgroup rw,pids
";
        let own =
            "4:pids:/user.slice\n3:cpu,cpuacct:/\n1:name=systemd:/init.scope\n0::/init.scope\n";
        let e = cgroup_yard_entries(mi, own).unwrap();
        let e: Vec<(&str, &str)> = e
            .iter()
            .map(|(n, p)| (n.as_str(), p.to_str().unwrap()))
            .collect();
        assert_eq!(
            e,
            [
                ("pids", "/sys/fs/cgroup/pids"),
                ("cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct"),
                ("systemd", "/sys/fs/cgroup/systemd"),
                ("unified", "/sys/fs/cgroup/unified"),
            ]
        );
        // cgroup2 only.
        let v2 = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let e = cgroup_yard_entries(v2, "0::/user.slice\n").unwrap();
        assert_eq!(
            e,
            [("unified".to_string(), PathBuf::from("/sys/fs/cgroup"))]
        );
        // A hierarchy whose root is mounted nowhere here: no yard at all.
        assert_eq!(cgroup_yard_entries(v2, "5:memory:/\n0::/\n"), None);
        let ns = "30 1 0:26 /sub /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup_yard_entries(ns, "0::/\n"), None);
    }

    #[test]
    fn mountinfo_lines_and_escapes() {
        let m = parse_mountinfo(RUNC_MOUNTINFO);
        assert_eq!(m.len(), 5);
        assert_eq!(m[1].root, "/c1");
        assert_eq!(m[4].mountpoint, "/data dir");
        assert_eq!(hierarchy_of(&m[1]).as_deref(), Some("cpu,cpuacct"));
        assert_eq!(hierarchy_of(&m[3]).as_deref(), Some("name=systemd"));
        assert_eq!(hierarchy_of(&m[0]), None);
    }

    #[test]
    fn cgroup_binds_map_to_the_new_containers_dirs() {
        let binds = cgroup_binds(RUNC_MOUNTINFO);
        assert_eq!(binds.len(), 3);
        let host = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
33 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
";
        let placed =
            "9:name=systemd:/ferry/c2\n4:memory:/nested/ferry/c2\n2:cpu,cpuacct:/ferry/c2\n0::/\n";
        let got = restore_cgroup_binds(&binds, host, placed).unwrap();
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                (
                    "/sys/fs/cgroup/cpu,cpuacct",
                    "/sys/fs/cgroup/cpu,cpuacct/ferry/c2"
                ),
                (
                    "/sys/fs/cgroup/memory",
                    "/sys/fs/cgroup/memory/nested/ferry/c2"
                ),
                ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/systemd/ferry/c2"),
            ]
        );
        let err = restore_cgroup_binds(&binds, "", placed).unwrap_err();
        assert!(err.to_string().contains("cpu,cpuacct"), "{err}");
    }

    #[test]
    fn a_cgroup_mounts_tmpfs_of_mountpoints_only_is_external() {
        let s = spec(
            r#"{"ociVersion": "1.0.2", "mounts": [
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
                {"destination": "/data dir", "type": "bind", "source": "/srv"}]}"#,
        );
        let dirs = |names: &[&str]| {
            names
                .iter()
                .map(|n| (n.to_string(), true))
                .collect::<Vec<_>>()
        };
        let listed = dirs(&["systemd", "memory", "cpu,cpuacct"]);
        let got = cgroup_tmpfs_mounts(&s, RUNC_MOUNTINFO, |mp| {
            assert_eq!(mp, "/sys/fs/cgroup");
            Some(listed.clone())
        });
        assert_eq!(
            got,
            [CgroupTmpfs {
                mountpoint: "/sys/fs/cgroup".into(),
                dirs: vec!["cpu,cpuacct".into(), "memory".into(), "systemd".into()],
            }]
        );
        assert_eq!(got[0].key(), "ferry-cgroup-tmpfs/sys/fs/cgroup");
        // Something a process left there, a directory no bind covers, an
        // unreadable tmpfs: CRIU dumps it, content and all.
        let mut file = listed.clone();
        file.push(("notes".into(), false));
        assert!(cgroup_tmpfs_mounts(&s, RUNC_MOUNTINFO, |_| Some(file.clone())).is_empty());
        let extra = dirs(&["systemd", "memory", "cpu,cpuacct", "pids"]);
        assert!(cgroup_tmpfs_mounts(&s, RUNC_MOUNTINFO, |_| Some(extra.clone())).is_empty());
        assert!(cgroup_tmpfs_mounts(&s, RUNC_MOUNTINFO, |_| None).is_empty());
        // A cgroup namespace's (or cgroup2's) real cgroup mount is CRIU's.
        let v2 = "74 73 0:45 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert!(cgroup_tmpfs_mounts(&s, v2, |_| Some(Vec::new())).is_empty());
    }

    /// A Ferry container's mountinfo (runc's default spec): /proc/keys is
    /// a masked file, bound from /dev's null.
    const OWN_TMPFS_MOUNTINFO: &str = "\
69 44 254:0 /b/rootfs / rw,relatime - ext4 /dev/vda rw
70 69 0:42 / /proc rw,relatime - proc proc rw
71 69 0:43 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
72 71 0:44 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
73 71 0:45 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
74 71 0:40 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
76 69 0:47 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
49 70 0:48 / /proc/acpi ro,relatime - tmpfs tmpfs ro
50 70 0:43 /null /proc/keys rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
";

    #[test]
    fn the_runtimes_own_private_tmpfs_mounts_are_copied_by_ferry() {
        let s = spec(
            r#"{"ociVersion": "1.0.2", "mounts": [
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
                {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs"}],
              "linux": {"maskedPaths": ["/proc/keys", "/proc/acpi"]}}"#,
        );
        let null = |mp: &str| ExtMount {
            key: mp.into(),
            value: "/dev/null".into(),
        };
        let got = own_tmpfs_mounts(&s, OWN_TMPFS_MOUNTINFO, &[null("/proc/keys")]);
        let points: Vec<(&str, &str, &str)> = got
            .iter()
            .map(|t| (t.mountpoint.as_str(), t.source.as_str(), t.dev.as_str()))
            .collect();
        // /scratch is in the spec but not mounted (a failed look): CRIU's.
        assert_eq!(
            points,
            [("/dev", "tmpfs", "0:43"), ("/dev/shm", "shm", "0:45")]
        );
        assert_eq!(got[0].super_options, "rw,size=65536k,mode=755");
        assert_eq!(got[1].key(), "ferry-tmpfs/dev/shm");
        // /dev's superblock also shows at a mount CRIU would dump as a
        // bind of it: /dev stays CRIU's, so that the bind finds it.
        let got = own_tmpfs_mounts(&s, OWN_TMPFS_MOUNTINFO, &[]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].mountpoint, "/dev/shm");
        // Shared with the host (a peer), a subtree of a tmpfs, or covered
        // by something else: CRIU's.
        for line in [
            "73 71 0:45 / /dev/shm rw shared:7 - tmpfs shm rw",
            "73 71 0:45 /sub /dev/shm rw - tmpfs shm rw",
            "73 71 0:45 / /dev/shm rw - tmpfs shm rw\n99 73 0:50 / /dev/shm rw - ramfs none rw",
        ] {
            let mi = format!("71 69 0:43 / /dev rw - ext4 x rw\n{line}\n");
            assert!(own_tmpfs_mounts(&s, &mi, &[]).is_empty(), "{line}");
        }
    }

    #[test]
    fn flat_cgroups_are_those_of_one_set_without_a_namespace_or_sub_cgroup() {
        let img = |sets: serde_json::Value, children: serde_json::Value| {
            serde_json::json!({"magic": "CGROUP", "entries": [{
                "sets": sets,
                "controllers": [
                    {"cnames": ["pids"], "dirs": [{"dir_name": "p1/c9", "children": children}]},
                    {"cnames": ["memory"], "dirs": [{"dir_name": "p1/c9"}]}
                ]
            }]})
        };
        let set = |id: u32, cgns: u32| {
            serde_json::json!({"id": id, "ctls": [
                {"name": "pids", "path": "/p1/c9", "cgns_prefix": cgns},
                {"name": "memory", "path": "/p1/c9"}
            ]})
        };
        let none = serde_json::json!([]);
        assert!(cgroups_flat(&img(
            serde_json::json!([set(2, 0)]),
            none.clone()
        )));
        // Tasks in two sets, a cgroup namespace, a sub-cgroup: soft.
        assert!(!cgroups_flat(&img(
            serde_json::json!([set(2, 0), set(3, 0)]),
            none.clone()
        )));
        assert!(!cgroups_flat(&img(serde_json::json!([set(2, 5)]), none)));
        let sub = serde_json::json!([{"dir_name": "worker"}]);
        assert!(!cgroups_flat(&img(serde_json::json!([set(2, 0)]), sub)));
        assert!(!cgroups_flat(&serde_json::json!({"entries": []})));
    }

    #[test]
    fn criu_config_file_from_the_annotation_or_runcs_default() {
        let s = spec(r#"{"ociVersion": "1.0.2"}"#);
        assert_eq!(
            criu_config_file(&s).as_deref(),
            Some(Path::new("/etc/criu/runc.conf"))
        );
        let s =
            spec(r#"{"ociVersion": "1.0.2", "annotations": {"org.criu.config": "/tmp/c.conf"}}"#);
        assert_eq!(
            criu_config_file(&s).as_deref(),
            Some(Path::new("/tmp/c.conf"))
        );
        // Set but empty: no configuration file at all.
        let s = spec(r#"{"ociVersion": "1.0.2", "annotations": {"org.criu.config": ""}}"#);
        assert_eq!(criu_config_file(&s), None);
    }

    #[test]
    fn binds_and_devices_are_named_as_the_key_resolves_them() {
        let s = spec(DOCKERISH);
        // As if /data and /dev/fuse were symlinks inside the rootfs.
        let key = |p: &Path| match p.to_str() {
            Some("/data") => "/real/data".to_string(),
            Some("/dev/fuse") => "/dev/misc/fuse".to_string(),
            _ => plain_key(p),
        };
        let dump: Vec<(String, String)> = dump_ext_mounts(&s, |_| false, &key)
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        assert_eq!(
            dump,
            [
                ("/etc/hosts".into(), "/etc/hosts".into()),
                ("/real/data".into(), "/real/data".into()),
                ("/dev/misc/fuse".into(), "/dev/misc/fuse".into()),
            ]
        );
        let restore: Vec<(String, String)> = restore_ext_mounts(&s, &key, Path::new("/e"))
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        assert_eq!(
            restore,
            [
                ("/etc/hosts".into(), "/var/lib/docker/c/hosts".into()),
                ("/real/data".into(), "/srv/data".into()),
                ("/dev/null".into(), "/dev/null".into()),
                (MASKED_DIR_KEY.into(), "/e".into()),
                ("/dev/misc/fuse".into(), "/dev/fuse".into()),
            ]
        );
    }

    #[test]
    fn nothing_external_in_a_plain_spec() {
        let s = spec(r#"{"ociVersion": "1.0.2"}"#);
        assert!(dump_ext_mounts(&s, |_| true, &plain_key).is_empty());
        assert!(restore_ext_mounts(&s, &plain_key, Path::new("/e")).is_empty());
        assert!(dump_external_namespaces(&s, |_| unreachable!())
            .unwrap()
            .is_empty());
    }
}
