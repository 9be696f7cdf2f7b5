//! Peer authentication with a shared key.
//!
//! Both hosts hold the same secret (a key file, 0600, 32+ random bytes in
//! hex). Each side proves it knows the key without sending it: a mutual
//! HMAC-SHA256 challenge-response over fresh nonces, with the two roles'
//! MACs domain-separated so a reflected answer is worthless. This
//! authenticates peers; it does not encrypt the stream (run migrations over
//! a network you trust, as CRIU's own page server does).

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;
const MIN_KEY_LEN: usize = 32;
/// Sent first by the client: protocol name and version.
pub const GREETING: &[u8; 8] = b"FERRY\x00\x00\x01";

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
        let meta = std::fs::metadata(path).map_err(|source| Error::Io {
            op: "reading key file",
            path: path.to_path_buf(),
            source,
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(bad("it is readable by others: chmod 600 it"));
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            op: "reading key file",
            path: path.to_path_buf(),
            source,
        })?;
        let bytes = hex::decode(text.trim()).map_err(|_| bad("it is not hex"))?;
        if bytes.len() < MIN_KEY_LEN {
            return Err(bad(
                "it holds fewer than 32 bytes: make one with `ferry serve --new-key FILE`",
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
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| Error::Io {
                op: "creating key file",
                path: path.to_path_buf(),
                source,
            })?;
        writeln!(f, "{}", hex::encode(&self.0)).map_err(|source| Error::Io {
            op: "writing key file",
            path: path.to_path_buf(),
            source,
        })
    }

    fn mac(&self, role: &[u8], a: &[u8], b: &[u8]) -> [u8; MAC_LEN] {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(role);
        m.update(a);
        m.update(b);
        m.finalize().into_bytes().into()
    }

    fn verify(&self, role: &[u8], a: &[u8], b: &[u8], tag: &[u8]) -> bool {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(role);
        m.update(a);
        m.update(b);
        // Constant-time comparison.
        m.verify_slice(tag).is_ok()
    }
}

fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|_| Error::Random)?;
    Ok(n)
}

fn io(peer: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Peer {
        peer: peer.to_string(),
        op: "authenticating",
        source,
    }
}

/// The connecting side: proves itself and checks the server.
pub fn client<S: Read + Write>(s: &mut S, key: &Key, peer: &str) -> Result<()> {
    let nc = nonce()?;
    s.write_all(GREETING).map_err(io(peer))?;
    s.write_all(&nc).map_err(io(peer))?;
    let mut greeting = [0u8; 8];
    s.read_exact(&mut greeting).map_err(io(peer))?;
    if &greeting != GREETING {
        return Err(Error::AuthFailed {
            peer: peer.to_string(),
            reason: "it does not speak Ferry's migration protocol (or another version)",
        });
    }
    let mut ns = [0u8; NONCE_LEN];
    let mut server_mac = [0u8; MAC_LEN];
    s.read_exact(&mut ns).map_err(io(peer))?;
    s.read_exact(&mut server_mac).map_err(io(peer))?;
    if !key.verify(b"ferry-server", &nc, &ns, &server_mac) {
        return Err(Error::AuthFailed {
            peer: peer.to_string(),
            reason: "the server does not hold our key",
        });
    }
    s.write_all(&key.mac(b"ferry-client", &ns, &nc))
        .map_err(io(peer))?;
    let mut verdict = [0u8; 1];
    s.read_exact(&mut verdict).map_err(io(peer))?;
    if verdict[0] != 1 {
        return Err(Error::AuthFailed {
            peer: peer.to_string(),
            reason: "the server refused our key",
        });
    }
    Ok(())
}

/// The accepting side: checks the client and proves itself.
pub fn server<S: Read + Write>(s: &mut S, key: &Key, peer: &str) -> Result<()> {
    let mut greeting = [0u8; 8];
    s.read_exact(&mut greeting).map_err(io(peer))?;
    if &greeting != GREETING {
        return Err(Error::AuthFailed {
            peer: peer.to_string(),
            reason: "it does not speak Ferry's migration protocol (or another version)",
        });
    }
    let mut nc = [0u8; NONCE_LEN];
    s.read_exact(&mut nc).map_err(io(peer))?;
    let ns = nonce()?;
    s.write_all(GREETING).map_err(io(peer))?;
    s.write_all(&ns).map_err(io(peer))?;
    s.write_all(&key.mac(b"ferry-server", &nc, &ns))
        .map_err(io(peer))?;
    let mut client_mac = [0u8; MAC_LEN];
    s.read_exact(&mut client_mac).map_err(io(peer))?;
    let ok = key.verify(b"ferry-client", &ns, &nc, &client_mac);
    s.write_all(&[ok as u8]).map_err(io(peer))?;
    if ok {
        Ok(())
    } else {
        Err(Error::AuthFailed {
            peer: peer.to_string(),
            reason: "the client does not hold our key",
        })
    }
}

/// Where keys live by default for a state root.
pub fn default_key_path(root: &Path) -> PathBuf {
    root.join("migration.key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair(kc: Key, ks: Key) -> (Result<()>, Result<()>) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || server(&mut b, &ks, "client"));
        let c = client(&mut a, &kc, "server");
        drop(a);
        (c, t.join().unwrap())
    }

    #[test]
    fn same_key_both_accept() {
        let k = Key::generate().unwrap();
        let (c, s) = pair(k.clone(), k);
        c.unwrap();
        s.unwrap();
    }

    #[test]
    fn different_keys_both_refuse() {
        let (c, s) = pair(Key::generate().unwrap(), Key::generate().unwrap());
        assert!(matches!(c, Err(Error::AuthFailed { .. })), "{c:?}");
        assert!(s.is_err());
    }

    #[test]
    fn wrong_protocol_is_named() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let k = Key::generate().unwrap();
        let t = std::thread::spawn(move || server(&mut b, &k, "client"));
        a.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let err = t.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("does not speak"), "{err}");
    }

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
}
