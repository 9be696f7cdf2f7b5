//! The two images the lazy-pages daemon reads for each restored process:
//! `pagemap-PID.img` (which ranges were dumped lazily, i.e. are still on the
//! source) and `mm-PID.img` (the VMA bounds, which a single UFFDIO_COPY must
//! not cross). Only the fields the daemon needs are decoded; unknown fields
//! are skipped, so newer CRIUs' images still read.
//!
//! Framing (criu/image.c): a u32 `IMG_COMMON_MAGIC`, the image's own u32
//! magic, then entries, each a little-endian u32 length and a protobuf
//! message. Field numbers are those of CRIU's images/pagemap.proto,
//! images/mm.proto and images/vma.proto.

use std::path::{Path, PathBuf};

use protobuf::CodedInputStream;

use super::iovs::{Iov, Iovs};
use crate::error::{Error, Result};

const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
const PAGEMAP_MAGIC: u32 = 0x5608_4025;
const MM_MAGIC: u32 = 0x5749_2820;
/// pagemap_entry.flags: the pages may be restored lazily (criu/include/pagemap.h).
const PE_LAZY: u32 = 1 << 1;
const PAGE_SIZE: u64 = 4096;

/// One image file's entries, as raw protobuf messages.
struct Entries {
    path: PathBuf,
    data: Vec<u8>,
    pos: usize,
}

impl Entries {
    fn open(path: PathBuf, magic: u32) -> Result<Entries> {
        let data = std::fs::read(&path).map_err(|source| Error::Io {
            op: "reading",
            path: path.clone(),
            source,
        })?;
        Entries::parse(path, data, magic)
    }

    fn parse(path: PathBuf, data: Vec<u8>, magic: u32) -> Result<Entries> {
        let word = |at: usize| -> Option<u32> {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
        };
        if word(0) != Some(IMG_COMMON_MAGIC) {
            return Err(bad(&path, 0, "not a CRIU image (no IMG_COMMON_MAGIC)"));
        }
        if word(4) != Some(magic) {
            return Err(bad(&path, 4, "wrong image magic for this file"));
        }
        Ok(Entries { path, data, pos: 8 })
    }

    /// The next entry's bytes and offset, `None` at the end of the file.
    fn next(&mut self) -> Result<Option<(usize, &[u8])>> {
        if self.pos == self.data.len() {
            return Ok(None);
        }
        let at = self.pos;
        let len = self
            .data
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| bad(&self.path, at as u64, "truncated entry size"))?;
        let body = self
            .data
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| bad(&self.path, at as u64, "entry runs past the end of the file"))?;
        self.pos = at + 4 + len;
        Ok(Some((at, body)))
    }
}

fn bad(path: &Path, offset: u64, what: &'static str) -> Error {
    Error::BadImage {
        path: path.to_path_buf(),
        offset,
        what,
    }
}

/// Calls `f(field, wire_type, stream)` for each field of `msg`; `f` reads
/// the value it wants and returns true, or false to have it skipped.
fn fields(
    msg: &[u8],
    mut f: impl FnMut(u32, &mut CodedInputStream) -> protobuf::Result<bool>,
) -> protobuf::Result<()> {
    let mut is = CodedInputStream::from_bytes(msg);
    while let Some(tag) = is.read_raw_tag_or_eof()? {
        let (field, wire) = (tag >> 3, tag & 7);
        if !f(field, &mut is)? {
            let wt = protobuf::rt::WireType::new(wire)
                .ok_or_else(|| protobuf::Error::from(std::io::Error::other("bad wire type")))?;
            is.skip_field(wt)?;
        }
    }
    Ok(())
}

/// The lazy ranges of `pagemap-PID.img`, in dump-time addresses.
pub fn lazy_ranges(images: &Path, pid: i32) -> Result<Vec<Iov>> {
    let mut e = Entries::open(images.join(format!("pagemap-{pid}.img")), PAGEMAP_MAGIC)?;
    let mut out = Vec::new();
    // The first entry is the pagemap_head.
    let mut head = true;
    while let Some((at, body)) = e.next()? {
        if std::mem::take(&mut head) {
            continue;
        }
        let (mut vaddr, mut compat, mut nr, mut flags) = (None, 0u64, None, 0u32);
        fields(body, |field, is| {
            match field {
                1 => vaddr = Some(is.read_uint64()?),
                2 => compat = is.read_uint32()? as u64,
                4 => flags = is.read_uint32()?,
                5 => nr = Some(is.read_uint64()?),
                _ => return Ok(false),
            }
            Ok(true)
        })
        .map_err(|_| bad(&e.path, at as u64, "malformed pagemap_entry"))?;
        let vaddr = vaddr.ok_or_else(|| bad(&e.path, at as u64, "pagemap_entry without vaddr"))?;
        let pages = nr.unwrap_or(compat);
        if flags & PE_LAZY != 0 && pages > 0 {
            out.push(Iov {
                start: vaddr,
                end: vaddr + pages * PAGE_SIZE,
                img_start: vaddr,
            });
        }
    }
    Ok(out)
}

/// The VMA bounds of `mm-PID.img` (each start and end), sorted.
pub fn vma_bounds(images: &Path, pid: i32) -> Result<Vec<u64>> {
    let mut e = Entries::open(images.join(format!("mm-{pid}.img")), MM_MAGIC)?;
    let mut bounds = Vec::new();
    if let Some((at, body)) = e.next()? {
        fields(body, |field, is| {
            if field != 14 {
                return Ok(false);
            }
            let vma = is.read_bytes()?;
            fields(&vma, |f, is| {
                match f {
                    1 | 2 => bounds.push(is.read_uint64()?),
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            Ok(true)
        })
        .map_err(|_| bad(&e.path, at as u64, "malformed mm_entry"))?;
    }
    bounds.sort_unstable();
    bounds.dedup();
    Ok(bounds)
}

/// What is still to come for process `pid`: its lazy ranges cut at VMA bounds.
pub fn collect(images: &Path, pid: i32) -> Result<Iovs> {
    let mut iovs = Iovs::new(lazy_ranges(images, pid)?);
    iovs.split_at(&vma_bounds(images, pid)?);
    Ok(iovs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(n: u32, v: u64, out: &mut Vec<u8>) {
        varint((n as u64) << 3, out);
        varint(v, out);
    }

    fn image(magic: u32, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
        out.extend(magic.to_le_bytes());
        for e in entries {
            out.extend((e.len() as u32).to_le_bytes());
            out.extend(e);
        }
        out
    }

    #[test]
    fn lazy_entries_are_kept_others_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut head = Vec::new();
        field(1, 7, &mut head);
        let mut lazy = Vec::new();
        field(1, 0x10000, &mut lazy);
        field(2, 3, &mut lazy);
        field(4, (PE_LAZY | 4) as u64, &mut lazy);
        field(9, 1, &mut lazy); // unknown field
        let mut present = Vec::new();
        field(1, 0x20000, &mut present);
        field(2, 1, &mut present);
        field(4, 4, &mut present);
        std::fs::write(
            dir.path().join("pagemap-1.img"),
            image(PAGEMAP_MAGIC, &[head, lazy, present]),
        )
        .unwrap();
        let r = lazy_ranges(dir.path(), 1).unwrap();
        assert_eq!(
            r,
            vec![Iov {
                start: 0x10000,
                end: 0x13000,
                img_start: 0x10000
            }]
        );
    }

    #[test]
    fn vmas_split_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let mut vma = Vec::new();
        field(1, 0x10000, &mut vma);
        field(2, 0x11000, &mut vma);
        let mut vma2 = Vec::new();
        field(1, 0x11000, &mut vma2);
        field(2, 0x14000, &mut vma2);
        let mut mm = Vec::new();
        field(1, 5, &mut mm);
        for v in [vma, vma2] {
            varint(14 << 3 | 2, &mut mm);
            varint(v.len() as u64, &mut mm);
            mm.extend(v);
        }
        std::fs::write(dir.path().join("mm-1.img"), image(MM_MAGIC, &[mm])).unwrap();
        assert_eq!(
            vma_bounds(dir.path(), 1).unwrap(),
            vec![0x10000, 0x11000, 0x14000]
        );
    }

    #[test]
    fn truncated_and_foreign_files_are_refused_with_offsets() {
        let p = PathBuf::from("pagemap-1.img");
        let e = Entries::parse(p.clone(), vec![1, 2, 3], PAGEMAP_MAGIC)
            .err()
            .unwrap();
        assert!(matches!(e, Error::BadImage { offset: 0, .. }), "{e}");
        let e = Entries::parse(p.clone(), image(MM_MAGIC, &[]), PAGEMAP_MAGIC)
            .err()
            .unwrap();
        assert!(matches!(e, Error::BadImage { offset: 4, .. }), "{e}");
        let mut data = image(PAGEMAP_MAGIC, &[vec![1, 2, 3]]);
        data.truncate(data.len() - 1);
        let mut en = Entries::parse(p, data, PAGEMAP_MAGIC).unwrap();
        let e = en.next().err().unwrap();
        assert!(matches!(e, Error::BadImage { offset: 8, .. }), "{e}");
    }
}
