//! The command line containerd gives a runtime v2 shim.
//!
//! containerd runs the shim binary with Go `flag`-package options and an
//! action (runtime/v2/binary.go, `shim.parseFlags` in runtime/v2/shim):
//! `-namespace NS -address ADDR -publish-binary BIN -id ID [-debug] start`
//! to start a shim, `... -bundle DIR delete` to clean up after one that
//! died, and the serving shim is run by `start` with no action. Go's
//! syntax: `-name value`, `-name=value` or `--name`; a boolean flag takes
//! no value (`-debug`, `-debug=false`); options end at the first argument
//! that is not one, or after `--`.

use std::ffi::OsString;

/// The shim's options.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    pub debug: bool,
    pub version: bool,
    /// containerd 2.x's runtime introspection (`-info`: options on stdin,
    /// a RuntimeInfo on stdout).
    pub info: bool,
    pub namespace: String,
    pub id: String,
    /// The socket the serving shim listens on (`unix:///run/containerd/s/<hash>`).
    pub socket: String,
    pub bundle: String,
    /// containerd's gRPC address (the shim's socket name is derived from it).
    pub address: String,
    pub publish_binary: String,
    /// `start`, `delete`, or empty for the serving shim.
    pub action: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    #[error("flag needs an argument: -{0}")]
    NoValue(String),
    #[error("invalid boolean value {value:?} for -{flag}")]
    NotBool { flag: String, value: String },
    #[error("argument {0:?} is not valid UTF-8")]
    NotUtf8(OsString),
}

impl Flags {
    /// Parses the arguments after the program name.
    pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Flags, ArgsError> {
        let args = args
            .into_iter()
            .map(|a| a.into_string().map_err(ArgsError::NotUtf8))
            .collect::<Result<Vec<_>, _>>()?;
        let mut flags = Flags::default();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            // Go's flag: "-" alone and anything not starting with '-' end
            // the options; "--" ends them and is consumed.
            if arg == "--" {
                i += 1;
                break;
            }
            let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                break;
            };
            if name.is_empty() {
                break;
            }
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            i += 1;
            let boolean = |v: Option<String>| -> Result<bool, ArgsError> {
                match v.as_deref() {
                    None | Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
                    Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
                    Some(other) => Err(ArgsError::NotBool {
                        flag: name.to_string(),
                        value: other.to_string(),
                    }),
                }
            };
            match name {
                "debug" => flags.debug = boolean(inline)?,
                "v" | "version" => flags.version = boolean(inline)?,
                "info" => flags.info = boolean(inline)?,
                _ => {
                    let slot = match name {
                        "namespace" => &mut flags.namespace,
                        "id" => &mut flags.id,
                        "socket" => &mut flags.socket,
                        "bundle" => &mut flags.bundle,
                        "address" => &mut flags.address,
                        "publish-binary" => &mut flags.publish_binary,
                        other => return Err(ArgsError::Unknown(other.to_string())),
                    };
                    *slot = match inline {
                        Some(v) => v,
                        None => {
                            let v = args
                                .get(i)
                                .ok_or_else(|| ArgsError::NoValue(name.to_string()))?;
                            i += 1;
                            v.clone()
                        }
                    };
                }
            }
        }
        if let Some(action) = args.get(i) {
            flags.action = action.clone();
        }
        Ok(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, ArgsError> {
        Flags::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn containerd_start_line() {
        // runtime/v2/binary.go's Start, containerd 1.6 and 2.x.
        let f = parse(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc",
            "-debug",
            "start",
        ])
        .unwrap();
        assert_eq!(f.namespace, "k8s.io");
        assert_eq!(f.address, "/run/containerd/containerd.sock");
        assert_eq!(f.publish_binary, "/usr/bin/containerd");
        assert_eq!(f.id, "abc");
        assert!(f.debug);
        assert_eq!(f.action, "start");
    }

    #[test]
    fn go_syntax() {
        let f = parse(&[
            "--id=x",
            "-bundle=/b",
            "-debug=false",
            "-socket",
            "s",
            "delete",
        ])
        .unwrap();
        assert_eq!(f.id, "x");
        assert_eq!(f.bundle, "/b");
        assert!(!f.debug);
        assert_eq!(f.socket, "s");
        assert_eq!(f.action, "delete");
        let serve = parse(&["-id", "x", "-socket", "unix:///s"]).unwrap();
        assert_eq!(serve.action, "");
        assert_eq!(parse(&["--", "-id"]).unwrap().action, "-id");
        assert!(parse(&["-v"]).unwrap().version);
    }

    #[test]
    fn bad_flags() {
        assert_eq!(
            parse(&["-bogus", "start"]),
            Err(ArgsError::Unknown("bogus".into()))
        );
        assert_eq!(parse(&["-id"]), Err(ArgsError::NoValue("id".into())));
        assert!(matches!(
            parse(&["-debug=maybe"]),
            Err(ArgsError::NotBool { .. })
        ));
    }
}
