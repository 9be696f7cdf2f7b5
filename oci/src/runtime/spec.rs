//! Loading a bundle: config.json read and checked, with errors that name
//! the bundle, the file and what is wrong. Every read of a container's
//! config.json goes through [`read_config`] (oci-spec's types); the only
//! untyped reads are rewrites that must keep fields oci-spec does not know
//! (the migration's received bundle, the exported archive), which say so.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::error::{io, Error, Result};

/// A bundle's config file (runtime-spec: `config.json` at the bundle's
/// root).
pub const CONFIG: &str = "config.json";

/// Reads the config.json at `path` (a bundle's, or the one a container's
/// state points at) into oci-spec's [`Spec`].
pub fn read_config(path: &Path) -> Result<Spec> {
    let text = std::fs::read(path).map_err(io("reading", path))?;
    parse_config(&text, path)
}

/// Parses config.json text read from `path`.
pub fn parse_config(text: &[u8], path: &Path) -> Result<Spec> {
    serde_json::from_slice(text).map_err(|source| Error::InvalidConfig {
        path: path.to_path_buf(),
        reason: source.to_string(),
    })
}

/// A bundle whose config.json parsed and whose rootfs exists.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle> {
        let dir = std::fs::canonicalize(dir).map_err(|_| Error::NoBundle {
            path: dir.to_path_buf(),
        })?;
        let config = dir.join(CONFIG);
        let text = std::fs::read(&config).map_err(|_| Error::NoConfig {
            path: config.clone(),
        })?;
        let mut spec = parse_config(&text, &config)?;
        let root = spec.root().as_ref().ok_or_else(|| Error::InvalidConfig {
            path: config.clone(),
            reason: "it has no root.path".into(),
        })?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            dir.join(root.path())
        };
        if !rootfs.is_dir() {
            return Err(Error::NoRootfs { path: rootfs });
        }
        if spec.process().is_none() {
            return Err(Error::InvalidConfig {
                path: config,
                reason: "it has no process to run".into(),
            });
        }
        absolute_bind_sources(&mut spec, &dir);
        Ok(Bundle { dir, spec, rootfs })
    }
}

/// A bind mount's relative source is relative to the bundle, wherever the
/// runtime was started from (runc's specconv joins it to the bundle dir it
/// chdirs to): made absolute once, for create and restore alike.
fn absolute_bind_sources(spec: &mut Spec, bundle: &Path) {
    let Some(mounts) = spec.mounts().clone() else {
        return;
    };
    let mounts = mounts
        .into_iter()
        .map(|mut m| {
            if crate::criu_plan::is_bind(&m) {
                if let Some(src) = m.source().as_ref().filter(|s| s.is_relative()) {
                    // components() drops the `.` of "./x" and of ".".
                    let abs: PathBuf = bundle.join(src).components().collect();
                    m.set_source(Some(abs));
                }
            }
            m
        })
        .collect();
    spec.set_mounts(Some(mounts));
}

/// Whether config.json text gives the container's process a terminal (its
/// console then needs a console socket wherever it is created or
/// restored). Text that does not parse says no: loading the bundle reports
/// it properly.
pub fn config_has_terminal(config: &str) -> bool {
    parse_config(config.as_bytes(), Path::new(CONFIG)).is_ok_and(|s| has_terminal(&s))
}

/// Whether the spec's process has a terminal.
pub fn has_terminal(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

/// The same for the config.json of `bundle` (one that cannot be read says
/// no).
pub fn bundle_has_terminal(bundle: &Path) -> bool {
    read_config(&bundle.join(CONFIG)).is_ok_and(|s| has_terminal(&s))
}

/// The runtime-spec version of the configs `ferry spec` writes (runc
/// 1.1.5's).
pub const SPEC_VERSION: &str = "1.0.2-dev";

/// runc 1.1.5's `runc spec`, byte for byte: a shell in a terminal, a
/// read-only rootfs, the pid/network/ipc/uts/mount namespaces, a device
/// cgroup that denies everything but what runc always allows, masked and
/// read-only paths, three capabilities. Scripts and suites written against
/// runc's defaults (runc's own integration suite edits this file with jq)
/// see the same config from `ferry spec`.
const RUNC_SPEC: &str = include_str!("runc_spec.json");

/// runc's `spec --rootless`: no network namespace but a user namespace
/// mapping the caller's uid and gid to root, no device cgroup rules, /sys
/// bind-mounted, devpts without gid=5 (runc's specconv.ToRootless).
const RUNC_SPEC_ROOTLESS: &str = include_str!("runc_spec_rootless.json");

/// The config.json text `ferry spec` writes: runc's default spec, or its
/// rootless variant for the calling user (`euid`, `egid`).
pub fn default_spec_text(rootless: Option<(u32, u32)>) -> String {
    match rootless {
        None => RUNC_SPEC.to_string(),
        Some((uid, gid)) => RUNC_SPEC_ROOTLESS
            .replace("@UID@", &uid.to_string())
            .replace("@GID@", &gid.to_string()),
    }
}

/// runc's default spec, parsed.
pub fn default_spec() -> Spec {
    serde_json::from_str(RUNC_SPEC).expect("runc's default spec parses")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_is_read_off_the_config() {
        // runc's default spec has a terminal.
        let with = default_spec_text(None);
        assert!(config_has_terminal(&with));
        let without = with.replace(r#""terminal": true"#, r#""terminal": false"#);
        assert_ne!(with, without);
        assert!(!config_has_terminal(&without));
        let unset = with.replace(r#""terminal": true,"#, "");
        assert_ne!(with, unset);
        assert!(!config_has_terminal(&unset));
        assert!(!config_has_terminal("{ not json"));
        assert!(!bundle_has_terminal(Path::new("/nonexistent/bundle")));
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(CONFIG), &with).unwrap();
        assert!(bundle_has_terminal(tmp.path()));
    }

    #[test]
    fn the_default_spec_is_runcs() {
        let spec = default_spec();
        assert_eq!(spec.hostname().as_deref(), Some("runc"));
        let process = spec.process().as_ref().unwrap();
        assert!(process.terminal().unwrap());
        assert!(spec.root().as_ref().unwrap().readonly().unwrap());
        // runc denies every device, then allows its defaults at create.
        let devices = spec
            .linux()
            .as_ref()
            .unwrap()
            .resources()
            .as_ref()
            .unwrap()
            .devices();
        let rules = devices.as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        assert!(!rules[0].allow());
        assert_eq!(rules[0].access().as_deref(), Some("rwm"));
    }

    #[test]
    fn the_rootless_spec_maps_the_caller() {
        let text = default_spec_text(Some((1000, 100)));
        let spec: Spec = serde_json::from_str(&text).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.uid_mappings().as_ref().unwrap()[0].host_id(), 1000);
        assert_eq!(linux.gid_mappings().as_ref().unwrap()[0].host_id(), 100);
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(ns.contains(&oci_spec::runtime::LinuxNamespaceType::User));
        assert!(!ns.contains(&oci_spec::runtime::LinuxNamespaceType::Network));
        assert!(linux.resources().is_none());
    }
}
