//! Loading a bundle: config.json read and checked, with errors that name
//! the bundle, the file and what is wrong.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::error::{Error, Result};

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
        let config = dir.join("config.json");
        let text = std::fs::read(&config).map_err(|_| Error::NoConfig {
            path: config.clone(),
        })?;
        let spec: Spec = serde_json::from_slice(&text).map_err(|source| Error::InvalidConfig {
            path: config.clone(),
            reason: source.to_string(),
        })?;
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
        Ok(Bundle { dir, spec, rootfs })
    }
}

/// Whether config.json text gives the container's process a terminal (its
/// console then needs a console socket wherever it is created or
/// restored). Text that does not parse says no: loading the bundle reports
/// it properly.
pub fn config_has_terminal(config: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(config)
        .ok()
        .and_then(|v| v["process"]["terminal"].as_bool())
        .unwrap_or(false)
}

/// The same for the config.json of `bundle` (one that cannot be read says
/// no).
pub fn bundle_has_terminal(bundle: &Path) -> bool {
    std::fs::read_to_string(bundle.join("config.json")).is_ok_and(|c| config_has_terminal(&c))
}

/// The config.json `ferry spec` writes: runc's default (a shell in a
/// terminal, read-only rootfs, the usual namespaces, masked paths).
pub fn default_spec() -> Spec {
    Spec::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_is_read_off_the_config() {
        assert!(config_has_terminal(r#"{"process": {"terminal": true}}"#));
        assert!(!config_has_terminal(r#"{"process": {"terminal": false}}"#));
        assert!(!config_has_terminal(r#"{"process": {}}"#));
        assert!(!config_has_terminal("{ not json"));
        assert!(!bundle_has_terminal(Path::new("/nonexistent/bundle")));
    }
}
