//! containerd's checkpoint and restore requests as Ferry's options: pure
//! conversions, unit-tested without CRIU.
//!
//! Checkpoint options arrive as a `containerd.runc.v1.CheckpointOptions`
//! Any, whatever the runtime (containerd's client sends runc's type); the
//! image path is the request's `path` (containerd's temp dir, or the
//! `image_path` option). A create with `checkpoint` set restores from that
//! directory at Start, with the runtime options' `criu_work_path`, as
//! runc-shim's `createdCheckpointState` does.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::CheckpointOptions as ContainerdCheckpointOptions;
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use criu_rpc::CgroupMode;
use ferry_oci::checkpoint::CheckpointOptions;
use nix::sched::CloneFlags;

use super::error::{Error, Result};

/// A checkpoint a created task restores from at Start.
#[derive(Debug)]
pub struct PendingRestore {
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
}

/// containerd's `containerd.runc.v1.CheckpointOptions` as Ferry's options
/// (runc-shim's `Init.Checkpoint`: no `exit` means leave running).
pub fn checkpoint_options(
    path: &str,
    any: Option<&Any>,
    bundle: &Path,
) -> Result<(CheckpointOptions, bool)> {
    let o = match any {
        Some(a) if !a.value.is_empty() || !a.type_url.is_empty() => {
            if !a.type_url.ends_with("containerd.runc.v1.CheckpointOptions") {
                return Err(Error::InvalidArgument(format!(
                    "checkpoint options of type {}: the ferry shim takes containerd.runc.v1.CheckpointOptions",
                    a.type_url
                )));
            }
            ContainerdCheckpointOptions::parse_from_bytes(&a.value).map_err(|source| {
                Error::Protobuf {
                    what: "containerd.runc.v1.CheckpointOptions",
                    source,
                }
            })?
        }
        _ => ContainerdCheckpointOptions::default(),
    };
    let image = if !path.is_empty() {
        PathBuf::from(path)
    } else if !o.image_path.is_empty() {
        PathBuf::from(&o.image_path)
    } else {
        return Err(Error::InvalidArgument(
            "checkpoint without a path: containerd gives one, or set image_path".into(),
        ));
    };
    let mode = match o.cgroups_mode.as_str() {
        "" => None,
        "soft" => Some(CgroupMode::Soft),
        "full" => Some(CgroupMode::Full),
        "strict" => Some(CgroupMode::Strict),
        "ignore" => Some(CgroupMode::Ignore),
        m => {
            return Err(Error::InvalidArgument(format!(
                "cgroups_mode `{m}`: use soft, full, strict or ignore"
            )))
        }
    };
    let mut empty = CloneFlags::empty();
    for ns in &o.empty_namespaces {
        match ns.as_str() {
            "network" | "net" => empty |= CloneFlags::CLONE_NEWNET,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "empty namespace `{other}`: CRIU can only leave the network namespace empty"
                )))
            }
        }
    }
    // runc-shim keeps CRIU's work dir only when one is asked for;
    // otherwise it is <bundle>/criu-work, removed afterwards.
    let keep_work = !o.work_path.is_empty();
    let work = if keep_work {
        PathBuf::from(&o.work_path)
    } else {
        bundle.join("criu-work")
    };
    Ok((
        CheckpointOptions {
            image_path: image,
            work_path: Some(work),
            leave_running: !o.exit,
            tcp_established: o.open_tcp,
            ext_unix_sk: o.external_unix_sockets,
            shell_job: o.terminal,
            file_locks: o.file_locks,
            manage_cgroups_mode: mode,
            empty_ns: (!empty.is_empty()).then_some(empty),
            ..Default::default()
        },
        keep_work,
    ))
}

/// The runtime options a create carries (`containerd.runc.v1.Options`,
/// which containerd passes to every runc-like shim; Kubernetes' CRI sets
/// `SystemdCgroup` there): the defaults when there are none.
pub fn runtime_options(req: &CreateTaskRequest) -> Result<RuncOptions> {
    match req.options.as_ref() {
        Some(a) if a.type_url.ends_with("containerd.runc.v1.Options") => {
            RuncOptions::parse_from_bytes(&a.value).map_err(|source| Error::Protobuf {
                what: "containerd.runc.v1.Options",
                source,
            })
        }
        _ => Ok(RuncOptions::default()),
    }
}

/// The pending restore a create with a checkpoint asks for. The work dir
/// is the runtime options' `criu_work_path`, as in runc-shim.
pub fn pending_restore(req: &CreateTaskRequest, o: &RuncOptions) -> Option<PendingRestore> {
    if req.checkpoint.is_empty() {
        return None;
    }
    Some(PendingRestore {
        image_path: PathBuf::from(&req.checkpoint),
        work_path: (!o.criu_work_path.is_empty()).then(|| PathBuf::from(&o.criu_work_path)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(o: &ContainerdCheckpointOptions) -> Any {
        Any {
            type_url: "containerd.runc.v1.CheckpointOptions".into(),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn containerd_options_map_to_ferry_options() {
        let o = ContainerdCheckpointOptions {
            exit: true,
            open_tcp: true,
            external_unix_sockets: true,
            terminal: true,
            file_locks: true,
            empty_namespaces: vec!["network".into()],
            cgroups_mode: "full".into(),
            work_path: "/w".into(),
            ..Default::default()
        };
        let (f, keep) = checkpoint_options("/img", Some(&any(&o)), Path::new("/b")).unwrap();
        assert_eq!(f.image_path, PathBuf::from("/img"));
        assert_eq!(f.work_path, Some(PathBuf::from("/w")));
        assert!(keep);
        assert!(!f.leave_running);
        assert!(f.tcp_established && f.ext_unix_sk && f.shell_job && f.file_locks);
        assert!(matches!(f.manage_cgroups_mode, Some(CgroupMode::Full)));
        assert_eq!(f.empty_ns, Some(CloneFlags::CLONE_NEWNET));
    }

    #[test]
    fn no_options_leave_running_in_a_scratch_work_dir() {
        let (f, keep) = checkpoint_options("/img", None, Path::new("/b")).unwrap();
        assert!(f.leave_running);
        assert!(!keep);
        assert_eq!(f.work_path, Some(PathBuf::from("/b/criu-work")));
        assert!(f.manage_cgroups_mode.is_none() && f.empty_ns.is_none());
        // The image_path option stands in for an empty path.
        let o = ContainerdCheckpointOptions {
            image_path: "/opt-img".into(),
            ..Default::default()
        };
        let (f, _) = checkpoint_options("", Some(&any(&o)), Path::new("/b")).unwrap();
        assert_eq!(f.image_path, PathBuf::from("/opt-img"));
    }

    #[test]
    fn bad_options_are_refused_with_the_fix() {
        let wrong = Any {
            type_url: "containerd.runc.v1.Options".into(),
            ..Default::default()
        };
        let e = checkpoint_options("/i", Some(&wrong), Path::new("/b")).unwrap_err();
        assert!(
            e.to_string()
                .contains("containerd.runc.v1.CheckpointOptions"),
            "{e}"
        );
        let o = ContainerdCheckpointOptions {
            cgroups_mode: "loose".into(),
            ..Default::default()
        };
        let e = checkpoint_options("/i", Some(&any(&o)), Path::new("/b")).unwrap_err();
        assert!(
            e.to_string().contains("soft, full, strict or ignore"),
            "{e}"
        );
        let o = ContainerdCheckpointOptions {
            empty_namespaces: vec!["pid".into()],
            ..Default::default()
        };
        assert!(checkpoint_options("/i", Some(&any(&o)), Path::new("/b")).is_err());
        assert!(checkpoint_options("", None, Path::new("/b")).is_err());
    }

    #[test]
    fn a_create_with_a_checkpoint_is_a_pending_restore() {
        let mut req = CreateTaskRequest::default();
        let none = runtime_options(&req).unwrap();
        assert!(!none.systemd_cgroup);
        assert!(pending_restore(&req, &none).is_none());
        req.checkpoint = "/ctrd-checkpoint1".into();
        let o = RuncOptions {
            criu_work_path: "/work".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        req.options = Some(Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        })
        .into();
        let o = runtime_options(&req).unwrap();
        assert!(o.systemd_cgroup);
        let r = pending_restore(&req, &o).unwrap();
        assert_eq!(r.image_path, PathBuf::from("/ctrd-checkpoint1"));
        assert_eq!(r.work_path, Some(PathBuf::from("/work")));
    }
}
