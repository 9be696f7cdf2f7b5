//! CRIU's image files, decoded in Rust: this module owns the knowledge of
//! their framing ([`frame`]), their kinds and magics ([`kinds`]), the
//! types of their entries (`pb`, generated from CRIU's own
//! `images/*.proto`, vendored in `proto/criu/` by `hack/sync-criu-protos`
//! and checked against CRIU's source by the `schema` tests), generic JSON
//! output ([`decode_file`], what
//! `ferry inspect decode` prints, like `crit decode`), the raw network
//! dumps ([`netlink`]), and the model of a whole checkpoint ([`model`],
//! what `ferry inspect` summarises) with its [`diff`].
//!
//! Nothing here trusts the file: every length is checked, a corrupt,
//! truncated or unknown image is an [`Error::BadImage`] or
//! [`Error::UnknownImage`] naming the file and the offset, and fields the
//! schema does not know (a newer CRIU's) are skipped. An entry that lacks
//! a field CRIU's schema marks `required` is refused, as CRIU and crit
//! refuse it.

pub mod diff;
pub mod frame;
mod json;
pub mod kinds;
pub mod model;
pub mod netlink;
pub(crate) mod pb;

use std::path::Path;

use protobuf::{Message, MessageFull};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use frame::{bad, Frame, Header};
use kinds::{Kind, Layout, Raw};

pub use model::Checkpoint;

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        op: "reading",
        path: path.to_path_buf(),
        source,
    })
}

/// Decodes every entry of `data` (the content of `path`) as JSON:
/// `{"magic": NAME, "entries": [...]}`, as crit names things. Payloads
/// that follow entries (pipe data, queues) are summarised by size; pages
/// images by their size; ifaddr and route dumps decoded from netlink.
pub fn decode_bytes(path: &Path, data: &[u8]) -> Result<Value> {
    match frame::header(path, data)? {
        Header::Raw(Raw::Pages) => Ok(json!({
            "magic": "PAGES",
            "size": data.len(),
            "pages": data.len() / 4096,
        })),
        Header::Raw(Raw::IfAddr) => Ok(json!({
            "magic": "IFADDR",
            "entries": netlink::ifaddrs(path, data)?,
        })),
        Header::Raw(Raw::Route) => Ok(json!({
            "magic": "ROUTE",
            "entries": netlink::routes(path, data)?,
        })),
        Header::Raw(Raw::Other) => Ok(json!({ "magic": "RAW", "size": data.len() })),
        Header::Magic { kind, .. } if matches!(kind.layout, Layout::Opaque) => {
            Err(undecoded(path, kind))
        }
        Header::Magic { kind, len } => {
            let mut entries = Vec::new();
            for (i, f) in frame::frames(path, kind, data, len)?.iter().enumerate() {
                let desc = match kind.layout {
                    Layout::Entries { message, .. } => message(),
                    Layout::Pagemap if i == 0 => pb::Pagemap_head::descriptor(),
                    Layout::Pagemap => pb::Pagemap_entry::descriptor(),
                    Layout::GhostFile if i == 0 => pb::Ghost_file_entry::descriptor(),
                    Layout::GhostFile => pb::Ghost_chunk_entry::descriptor(),
                    Layout::Opaque => return Err(undecoded(path, kind)),
                };
                let m = desc
                    .parse_from_bytes(f.payload)
                    .map_err(|source| bad_entry(path, f, source))?;
                let mut v = json::message(&*m);
                if !f.extra.is_empty() {
                    v["extra"] = json!({ "offset": f.extra_offset, "size": f.extra.len() });
                }
                entries.push(v);
            }
            Ok(json!({ "magic": kind.name, "entries": entries }))
        }
    }
}

/// [`decode_bytes`] of the file at `path`.
pub fn decode_file(path: &Path) -> Result<Value> {
    decode_bytes(path, &read(path)?)
}

fn undecoded(path: &Path, kind: &Kind) -> Error {
    Error::UndecodedImage {
        path: path.to_path_buf(),
        kind: kind.name,
    }
}

fn bad_entry(path: &Path, f: &Frame<'_>, source: protobuf::Error) -> Error {
    Error::BadEntry {
        path: path.to_path_buf(),
        offset: f.offset,
        source,
    }
}

/// The entries of an image that must be of kind `want`, as `M`.
pub(crate) fn entries_of<M: MessageFull>(path: &Path, want: &str) -> Result<Vec<M>> {
    let data = read(path)?;
    let (kind, start) = expect_kind(path, &data, want)?;
    frame::frames(path, kind, &data, start)?
        .iter()
        .map(|f| M::parse_from_bytes(f.payload).map_err(|e| bad_entry(path, f, e)))
        .collect()
}

fn expect_kind(path: &Path, data: &[u8], want: &str) -> Result<(&'static Kind, usize)> {
    match frame::header(path, data)? {
        Header::Magic { kind, len } if kind.name == want => Ok((kind, len)),
        Header::Magic { kind, len } => Err(Error::WrongImage {
            path: path.to_path_buf(),
            offset: (len - 4) as u64,
            expected: kinds::by_name(want).map(|k| k.name).unwrap_or("?"),
            found: kind.name,
        }),
        Header::Raw(_) => Err(bad(
            path,
            0,
            "a raw image where an image with entries was expected",
        )),
    }
}

/// A pagemap image: its head (which pages-N.img holds the pages) and its
/// entries.
pub(crate) fn pagemap(path: &Path) -> Result<(pb::Pagemap_head, Vec<pb::Pagemap_entry>)> {
    let data = read(path)?;
    let (kind, start) = expect_kind(path, &data, "PAGEMAP")?;
    let frames = frame::frames(path, kind, &data, start)?;
    let Some((head, rest)) = frames.split_first() else {
        return Err(bad(path, start, "a pagemap without its head entry"));
    };
    let h =
        pb::Pagemap_head::parse_from_bytes(head.payload).map_err(|e| bad_entry(path, head, e))?;
    let entries = rest
        .iter()
        .map(|f| pb::Pagemap_entry::parse_from_bytes(f.payload).map_err(|e| bad_entry(path, f, e)))
        .collect::<Result<_>>()?;
    Ok((h, entries))
}

/// The entry of a stats image (`stats-dump`, `stats-restore`), `None`
/// when the file does not exist.
pub(crate) fn pb_stats(path: &Path) -> Result<Option<pb::Stats_entry>> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(entries_of::<pb::Stats_entry>(path, "STATS")?
        .into_iter()
        .next())
}

/// Checks an image directory before a restore touches anything: it has
/// an inventory, and every image in it frames into whole entries up to
/// its end, with a magic Ferry knows, and the entries of the images a
/// restore reads first (inventory, pstree, core, ids, mm, pagemap, fdinfo,
/// files) decode.
pub fn check_dir(dir: &Path) -> Result<()> {
    let inv = dir.join("inventory.img");
    if !inv.is_file() {
        return Err(Error::NotAnImageDir {
            path: dir.to_path_buf(),
        });
    }
    let rd = std::fs::read_dir(dir).map_err(|source| Error::Io {
        op: "listing",
        path: dir.to_path_buf(),
        source,
    })?;
    for e in rd {
        let e = e.map_err(|source| Error::Io {
            op: "listing",
            path: dir.to_path_buf(),
            source,
        })?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".img") || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if kinds::raw_by_name(&name).is_some() {
            continue;
        }
        let path = e.path();
        let data = read(&path)?;
        let Header::Magic { kind, len } = frame::header(&path, &data)? else {
            continue;
        };
        // Images Ferry does not decode may carry data between their
        // entries (SysV IPC contents): their magic is all it can check.
        if matches!(kind.layout, Layout::Opaque) {
            continue;
        }
        let frames = frame::frames(&path, kind, &data, len)?;
        if frames.is_empty() && kind.name == "INVENTORY" {
            return Err(bad(&path, len, "the inventory has no entry"));
        }
        let vital = [
            "INVENTORY",
            "PSTREE",
            "CORE",
            "IDS",
            "MM",
            "PAGEMAP",
            "FDINFO",
            "FILES",
        ];
        if vital.contains(&kind.name) {
            decode_bytes(&path, &data)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod schema;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
