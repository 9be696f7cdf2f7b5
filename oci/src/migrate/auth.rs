//! What a host proves itself with: a shared key (one secret file, the
//! same on every host) or a per-host identity (an X25519 key pair of its
//! own, with a list of the peers' public keys it accepts, so that one
//! leaked file does not open every agent). The channel
//! ([`super::channel`]) uses them in its Noise handshake; nothing here
//! speaks to the network.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const MIN_KEY_LEN: usize = 32;
/// X25519 keys are 32 bytes.
pub const PUBLIC_KEY_LEN: usize = 32;

/// A shared secret. Its Debug output never shows the bytes.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

impl Key {
    /// Reads a key file: hex, at least 32 bytes, readable by its owner only.
    pub fn load(path: &Path) -> Result<Key> {
        let bad = |reason: &'static str| Error::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let text = read_private(path, "reading key file")?;
        let bytes = hex::decode(text.trim()).map_err(|_| bad("it is not hex"))?;
        if bytes.len() < MIN_KEY_LEN {
            return Err(bad(
                "it holds fewer than 32 bytes: make one with `ferry keygen --key-file FILE`",
            ));
        }
        Ok(Key(bytes))
    }

    /// A fresh random key.
    pub fn generate() -> Result<Key> {
        let mut k = vec![0u8; MIN_KEY_LEN];
        getrandom::fill(&mut k).map_err(|_| Error::Random)?;
        Ok(Key(k))
    }

    /// Writes the key to a new file, mode 0600.
    pub fn save(&self, path: &Path) -> Result<()> {
        create_new(path, 0o600, &format!("{}\n", hex::encode(&self.0)))
    }

    /// The pre-shared key of the channel's Noise handshake: the file's
    /// bytes hashed with a label, so that the same file used elsewhere
    /// yields an unrelated key.
    pub(super) fn psk(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"ferry migration channel psk v2");
        h.update(&self.0);
        h.finalize().into()
    }
}

/// Reads a private file (0600), refusing one others can read.
fn read_private(path: &Path, what: &'static str) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(crate::error::io(what, path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::KeyFile {
            path: path.to_path_buf(),
            reason: "it is readable by others: chmod 600 it",
        });
    }
    std::fs::read_to_string(path).map_err(crate::error::io(what, path))
}

/// Creates `path` (it must not exist) with mode `mode` and `text`.
fn create_new(path: &Path, mode: u32, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(crate::error::io("creating key file", path))?;
    f.write_all(text.as_bytes())
        .map_err(crate::error::io("writing key file", path))
}

/// A host's public key, as its peers list it.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(pub [u8; PUBLIC_KEY_LEN]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl PublicKey {
    fn parse(text: &str) -> Option<PublicKey> {
        hex::decode(text).ok()?.try_into().ok().map(PublicKey)
    }
}

/// This host's key pair (the private half never shown by Debug).
#[derive(Clone)]
pub struct Identity {
    private: [u8; 32],
    pub public: PublicKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.public)
    }
}

/// The X25519 public key of `private`, computed by snow's own DH.
fn public_of(private: &[u8; 32]) -> Result<PublicKey> {
    use snow::params::DHChoice;
    use snow::resolvers::{CryptoResolver, DefaultResolver};
    let mut dh = DefaultResolver
        .resolve_dh(&DHChoice::Curve25519)
        .ok_or(Error::Random)?;
    dh.set(private);
    Ok(PublicKey(
        dh.pubkey().try_into().map_err(|_| Error::Random)?,
    ))
}

impl Identity {
    /// A fresh key pair.
    pub fn generate() -> Result<Identity> {
        let mut private = [0u8; 32];
        getrandom::fill(&mut private).map_err(|_| Error::Random)?;
        let public = public_of(&private)?;
        Ok(Identity { private, public })
    }

    /// Reads an identity file (the private key in hex, mode 0600).
    pub fn load(path: &Path) -> Result<Identity> {
        let text = read_private(path, "reading identity file")?;
        let private: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::KeyFile {
                path: path.to_path_buf(),
                reason:
                    "it is not a 32-byte key in hex: make one with `ferry keygen --identity FILE`",
            })?;
        let public = public_of(&private)?;
        Ok(Identity { private, public })
    }

    /// Writes the private key to `path` (new, 0600) and the public key to
    /// `path.pub` (new, 0644), the line a peer adds to its peers file.
    pub fn save(&self, path: &Path) -> Result<PathBuf> {
        create_new(path, 0o600, &format!("{}\n", hex::encode(self.private)))?;
        let public = public_path(path);
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        create_new(&public, 0o644, &format!("{} {host}\n", self.public))?;
        Ok(public)
    }

    pub(super) fn private(&self) -> &[u8; 32] {
        &self.private
    }
}

/// Where [`Identity::save`] puts the public key of `path`.
pub fn public_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// The peers a host accepts: one public key (hex) per line, optionally
/// followed by a name; `#` starts a comment (as ssh's authorized_keys).
#[derive(Debug, Clone, Default)]
pub struct Peers(Vec<(PublicKey, String)>);

impl Peers {
    pub fn load(path: &Path) -> Result<Peers> {
        let text =
            std::fs::read_to_string(path).map_err(crate::error::io("reading peers file", path))?;
        let mut peers = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let key = words.next().and_then(PublicKey::parse).ok_or(Error::KeyFile {
                path: path.to_path_buf(),
                reason: "a line does not start with a 32-byte public key in hex (the content of a `ferry keygen --identity` FILE.pub)",
            })?;
            let name = words.collect::<Vec<_>>().join(" ");
            peers.push((key, name));
        }
        Ok(Peers(peers))
    }

    /// The name `key` is listed under (its hex when unnamed), if listed.
    pub fn find(&self, key: &[u8]) -> Option<String> {
        self.0.iter().find(|(k, _)| k.0[..] == *key).map(|(k, n)| {
            if n.is_empty() {
                k.to_string()
            } else {
                n.clone()
            }
        })
    }
}

/// How a host proves itself and judges its peer.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Both hold the same secret.
    Shared(Key),
    /// Each its own key pair; the peer's public key must be in `peers`.
    Identity { me: Identity, peers: Peers },
}

impl Credentials {
    /// What the handshake's greeting calls this kind.
    pub fn describe(&self) -> &'static str {
        match self {
            Credentials::Shared(_) => "a shared key",
            Credentials::Identity { .. } => "per-host identities",
        }
    }
}

/// Where keys live by default for a state root.
pub fn default_key_path(root: &Path) -> PathBuf {
    root.join("migration.key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_must_be_private_hex_and_long_enough() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let k = Key::generate().unwrap();
        k.save(&p).unwrap();
        Key::load(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Key::load(&p).unwrap_err().to_string().contains("chmod 600"));
        let short = d.path().join("short");
        std::fs::write(&short, "abcd\n").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Key::load(&short)
            .unwrap_err()
            .to_string()
            .contains("fewer than 32"));
        assert!(format!("{k:?}").starts_with("Key(32 bytes)"));
    }

    #[test]
    fn identities_round_trip_and_peers_are_found_by_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("host.key");
        let me = Identity::generate().unwrap();
        let public = me.save(&p).unwrap();
        assert_eq!(public, d.path().join("host.key.pub"));
        let back = Identity::load(&p).unwrap();
        assert_eq!(back.public, me.public);
        assert!(!format!("{back:?}").contains(&hex::encode(back.private())));
        // The .pub file is a peers line as it is.
        let peers = d.path().join("peers");
        let line = std::fs::read_to_string(&public).unwrap();
        std::fs::write(&peers, format!("# accepted\n{line}\n")).unwrap();
        let peers = Peers::load(&peers).unwrap();
        assert!(peers.find(&me.public.0).is_some());
        assert!(peers.find(&[0u8; 32]).is_none());
        // Never overwritten.
        assert!(me.save(&p).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(Identity::load(&p)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
    }

    #[test]
    fn a_bad_peers_line_is_named() {
        let d = tempfile::tempdir().unwrap();
        let peers = d.path().join("peers");
        std::fs::write(&peers, "not-a-key host-b\n").unwrap();
        let e = Peers::load(&peers).unwrap_err().to_string();
        assert!(e.contains("public key in hex"), "{e}");
    }
}
