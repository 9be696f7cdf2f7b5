//! CRIU's version and kernel features, as the VERSION and FEATURE_CHECK
//! requests report them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The oldest CRIU Ferry works with: 4.1 cannot dump TCP sockets on kernels
/// >= 6.16 (the kernel refuses SO_PASSCRED on inet sockets), fixed in 4.2.
pub const MIN_VERSION: Version = Version {
    major: 4,
    minor: 2,
    sublevel: 0,
    gitid: None,
};

/// A CRIU version. Ordered by (major, minor, sublevel); the git id of a
/// development build is informative only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub sublevel: u32,
    pub gitid: Option<String>,
}

impl Version {
    pub(crate) fn from_rpc(v: &crate::proto::Criu_version) -> Self {
        Version {
            major: v.major_number().max(0) as u32,
            minor: v.minor_number().max(0) as u32,
            sublevel: v.sublevel().max(0) as u32,
            gitid: v.gitid.clone(),
        }
    }

    fn key(&self) -> (u32, u32, u32) {
        (self.major, self.minor, self.sublevel)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.key().cmp(&other.key()))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.sublevel != 0 {
            write!(f, ".{}", self.sublevel)?;
        }
        if let Some(g) = &self.gitid {
            write!(f, " ({g})")?;
        }
        Ok(())
    }
}

/// What FEATURE_CHECK reports about the kernel and CRIU build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Features {
    /// Soft-dirty memory tracking: pre-dump and `track_mem` need it.
    pub mem_track: bool,
    /// userfaultfd with non-cooperative events: post-copy (lazy pages).
    pub lazy_pages: bool,
    /// pidfd_open and pidfd_getfd: pid reuse detection across pre-dumps.
    pub pidfd_store: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_ignores_gitid() {
        let v = |major, minor, sublevel| Version {
            major,
            minor,
            sublevel,
            gitid: Some("x".into()),
        };
        assert!(v(4, 1, 1) < MIN_VERSION);
        assert!(v(4, 2, 0) >= MIN_VERSION);
        assert!(v(4, 2, 1) > MIN_VERSION);
        assert!(v(5, 0, 0) > MIN_VERSION);
        assert_eq!(v(4, 2, 1).to_string(), "4.2.1 (x)");
    }
}
