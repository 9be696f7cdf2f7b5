//! What a task's runtime options (`containerd.runc.v1.Options`, which
//! containerd passes to every runc-like shim) decide besides the checkpoint
//! ([`super::checkpoint`]): Ferry's state root and the criu binary, and what
//! of them a dead shim's cleanup needs (runc-shim keeps them in the
//! bundle's options.json).

use std::path::{Path, PathBuf};

use containerd_shim_protos::shim::oci::Options as RuncOptions;
use criu_rpc::Criu;

/// Ferry's state root for the containers of containerd namespace `ns`:
/// `$FERRY_SHIM_ROOT` or /run/containerd/ferry, then the namespace, as
/// runc-shim uses /run/containerd/runc/<namespace>.
pub fn state_root(ns: &str) -> PathBuf {
    std::env::var_os("FERRY_SHIM_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/containerd/ferry"))
        .join(ns)
}

/// The state root of a task created with runtime options `o`: their
/// `Root` joined with the namespace (runc-shim runs `runc --root
/// <Root>/<namespace>`), else [`state_root`].
pub fn task_root(ns: &str, o: &RuncOptions) -> PathBuf {
    match o.root.as_str() {
        "" => state_root(ns),
        root => Path::new(root).join(ns),
    }
}

/// The runtime options' `CriuPath` (field 8 of `containerd.runc.v1.Options`),
/// which containerd 1.6 and 1.7 send from the runtime's `CriuPath` setting.
/// containerd 2.0 removed the field (`reserved 8` in its oci.proto), so the
/// generated type has none: it is read from the message's unknown fields.
pub fn criu_path(o: &RuncOptions) -> Option<PathBuf> {
    use containerd_shim_protos::protobuf::UnknownValueRef;
    use std::os::unix::ffi::OsStrExt;
    const CRIU_PATH: u32 = 8;
    match o.special_fields.unknown_fields().get(CRIU_PATH)? {
        UnknownValueRef::LengthDelimited(b) if !b.is_empty() => {
            Some(PathBuf::from(std::ffi::OsStr::from_bytes(b)))
        }
        _ => None,
    }
}

/// The CRIU binary: the task's runtime options' `CriuPath` (runc-shim
/// passes it as `runc --criu`), else `$FERRY_CRIU`, else `criu` in PATH
/// (as the ferry CLI).
pub fn criu(criu_path: Option<&Path>) -> Criu {
    criu_binary(criu_path)
        .map(Criu::with_binary)
        .unwrap_or_default()
}

/// The criu binary [`criu`] names, if not PATH's.
fn criu_binary(criu_path: Option<&Path>) -> Option<PathBuf> {
    criu_path
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("FERRY_CRIU").map(PathBuf::from))
}

/// What a dead shim's cleanup (`delete` of the shim binary) needs of the
/// runtime options its task was created with, kept in the bundle as
/// runc-shim keeps its options.json.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SavedOptions {
    pub root: PathBuf,
}

/// The file in a bundle that holds [`SavedOptions`].
pub const SAVED_OPTIONS: &str = "ferry-options.json";

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::Message;

    use super::*;

    #[test]
    fn the_runtime_options_root_holds_the_namespace_s_state() {
        let o = RuncOptions {
            root: "/var/lib/alt".into(),
            ..Default::default()
        };
        assert_eq!(
            task_root("k8s.io", &o),
            PathBuf::from("/var/lib/alt/k8s.io")
        );
        assert_eq!(
            task_root("k8s.io", &RuncOptions::default()),
            state_root("k8s.io")
        );
    }

    #[test]
    fn criu_path_is_read_from_the_options_containerd_1_sends() {
        // containerd 1.6's Options with CriuPath: field 8, a string.
        let mut sent = RuncOptions {
            root: "/var/lib/alt".into(),
            ..Default::default()
        };
        sent.special_fields
            .mut_unknown_fields()
            .add_length_delimited(8, b"/opt/criu/sbin/criu".to_vec());
        let wire = sent.write_to_bytes().unwrap();
        let got = RuncOptions::parse_from_bytes(&wire).unwrap();
        assert_eq!(criu_path(&got), Some(PathBuf::from("/opt/criu/sbin/criu")));
        assert_eq!(got.root, "/var/lib/alt");
        assert_eq!(criu_path(&RuncOptions::default()), None);
    }

    #[test]
    fn the_runtime_options_criu_path_comes_before_the_environment() {
        // FERRY_CRIU is whatever the test runner has; CriuPath wins over it.
        assert_eq!(
            criu_binary(Some(Path::new("/opt/criu/sbin/criu"))),
            Some(PathBuf::from("/opt/criu/sbin/criu"))
        );
        assert_eq!(
            criu_binary(None),
            std::env::var_os("FERRY_CRIU").map(PathBuf::from)
        );
    }
}
