//! The framing of CRIU's image files (criu/image.c): an optional
//! IMG_COMMON or IMG_SERVICE word, the image's magic (none for inventory's
//! common word, none at all for raw images), then entries, each a 32-bit
//! little-endian length and that many bytes of protobuf, some followed by
//! a payload whose size the entry gives. Everything here checks bounds and
//! names the offset where a file stops making sense.

use std::path::Path;

use protobuf::Message;

use super::kinds::{self, Kind, Layout, Raw, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};
use super::pb;
use crate::error::{Error, Result};

/// What a file turned out to be.
#[derive(Debug, Clone, Copy)]
pub enum Header {
    /// An image with a magic; entries start at `len`.
    Magic { kind: &'static Kind, len: usize },
    /// A raw image, by its name.
    Raw(Raw),
}

/// One entry: where it starts (its length word), its protobuf bytes, and
/// the payload that follows it, if its kind has one.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub offset: u64,
    pub payload: &'a [u8],
    /// Where `extra` starts in the file.
    pub extra_offset: u64,
    pub extra: &'a [u8],
}

pub(crate) fn bad(path: &Path, offset: usize, what: &'static str) -> Error {
    Error::BadImage {
        path: path.to_path_buf(),
        offset: offset as u64,
        what,
    }
}

fn word(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The header of `data`, the content of the file at `path` (whose name
/// tells raw images apart).
pub fn header(path: &Path, data: &[u8]) -> Result<Header> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if let Some(raw) = kinds::raw_by_name(&name) {
        return Ok(Header::Raw(raw));
    }
    let first = word(data, 0).ok_or_else(|| bad(path, 0, "the file ends inside its header"))?;
    let (magic, at) = if first == IMG_COMMON_MAGIC || first == IMG_SERVICE_MAGIC {
        let m = word(data, 4).ok_or_else(|| bad(path, 4, "the file ends inside its header"))?;
        (m, 4)
    } else {
        (first, 0)
    };
    let kind = kinds::by_magic(magic).ok_or_else(|| Error::UnknownImage {
        path: path.to_path_buf(),
        offset: at as u64,
        magic,
    })?;
    // Only inventory goes without the common word (images v1.1); a bare
    // magic elsewhere is an image of CRIU < 1.1, which Ferry does not read.
    if at == 0 && kind.name != "INVENTORY" {
        return Err(bad(
            path,
            0,
            "no IMG_COMMON magic before the image magic (an image of CRIU < 1.1, or a damaged header)",
        ));
    }
    Ok(Header::Magic { kind, len: at + 4 })
}

/// The entries of an image with a magic, from `start` to the end.
pub fn frames<'a>(
    path: &Path,
    kind: &Kind,
    data: &'a [u8],
    start: usize,
) -> Result<Vec<Frame<'a>>> {
    let mut out = Vec::new();
    let mut at = start;
    let mut ghost_chunks = None;
    while at < data.len() {
        let len = word(data, at)
            .ok_or_else(|| bad(path, at, "the file ends inside an entry's length"))?
            as usize;
        let body = at + 4;
        let payload = body
            .checked_add(len)
            .and_then(|end| data.get(body..end))
            .ok_or_else(|| {
                bad(
                    path,
                    at,
                    "an entry runs past the end of the file (truncated?)",
                )
            })?;
        let mut next = body + len;
        let extra_len: u64 = match kind.layout {
            Layout::Entries {
                extra: Some(extra), ..
            } => extra(payload).ok_or_else(|| bad(path, body, "a malformed entry"))?,
            Layout::GhostFile => match ghost_chunks {
                None => {
                    let g = pb::Ghost_file_entry::parse_from_bytes(payload)
                        .map_err(|_| bad(path, body, "a malformed ghost file entry"))?;
                    ghost_chunks = Some(g.chunks());
                    if g.chunks() {
                        0
                    } else {
                        // The file's content, to the end.
                        (data.len() - next) as u64
                    }
                }
                Some(_) => pb::Ghost_chunk_entry::parse_from_bytes(payload)
                    .map_err(|_| bad(path, body, "a malformed ghost chunk entry"))?
                    .len(),
            },
            _ => 0,
        };
        let extra = usize::try_from(extra_len)
            .ok()
            .and_then(|l| next.checked_add(l))
            .and_then(|end| data.get(next..end))
            .ok_or_else(|| {
                bad(
                    path,
                    next,
                    "the data following an entry runs past the end of the file (truncated?)",
                )
            })?;
        out.push(Frame {
            offset: at as u64,
            payload,
            extra_offset: next as u64,
            extra,
        });
        next += extra.len();
        at = next;
    }
    Ok(out)
}
