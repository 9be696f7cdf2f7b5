//! What the lazy-pages daemon reads of each restored process's images:
//! `pagemap-PID.img` (which ranges were dumped lazily, i.e. are still on the
//! source) and `mm-PID.img` (the VMA bounds, which a single UFFDIO_COPY must
//! not cross), through the crate's image decoder.

use std::path::Path;

use super::iovs::{Iov, Iovs};
use crate::error::Result;
use crate::image::{self, pb};

/// pagemap_entry.flags: the pages may be restored lazily (criu/include/pagemap.h).
const PE_LAZY: u32 = 1 << 1;
const PAGE_SIZE: u64 = 4096;

/// The lazy ranges of `pagemap-PID.img`, in dump-time addresses.
pub fn lazy_ranges(images: &Path, pid: i32) -> Result<Vec<Iov>> {
    let (_, entries) = image::pagemap(&images.join(format!("pagemap-{pid}.img")))?;
    Ok(entries
        .iter()
        .filter(|e| e.flags() & PE_LAZY != 0)
        .map(|e| {
            let pages = e.nr_pages.unwrap_or(e.compat_nr_pages() as u64);
            Iov {
                start: e.vaddr(),
                end: e.vaddr() + pages * PAGE_SIZE,
                img_start: e.vaddr(),
            }
        })
        .collect())
}

/// The VMA bounds of `mm-PID.img` (each start and end), sorted.
pub fn vma_bounds(images: &Path, pid: i32) -> Result<Vec<u64>> {
    let mm = image::entries_of::<pb::Mm_entry>(&images.join(format!("mm-{pid}.img")), "MM")?;
    let mut bounds: Vec<u64> = mm
        .iter()
        .flat_map(|m| m.vmas.iter())
        .flat_map(|v| [v.start(), v.end()])
        .collect();
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
    use crate::image::testing::bytes;

    fn image(magic: u32, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = 0x5456_4319u32.to_le_bytes().to_vec();
        out.extend(magic.to_le_bytes());
        for e in entries {
            out.extend((e.len() as u32).to_le_bytes());
            out.extend(e);
        }
        out
    }

    #[test]
    fn lazy_ranges_cut_at_vmas() {
        let dir = tempfile::tempdir().unwrap();
        let head = bytes(&pb::Pagemap_head::new());
        let mut lazy = pb::Pagemap_entry::new();
        lazy.set_vaddr(0x10000);
        lazy.set_compat_nr_pages(3);
        lazy.set_flags(PE_LAZY | 4);
        let mut present = pb::Pagemap_entry::new();
        present.set_vaddr(0x20000);
        present.set_compat_nr_pages(1);
        present.set_flags(4);
        std::fs::write(
            dir.path().join("pagemap-1.img"),
            image(0x5608_4025, &[head, bytes(&lazy), bytes(&present)]),
        )
        .unwrap();
        let mut mm = pb::Mm_entry::new();
        for (s, e) in [(0x10000, 0x11000), (0x11000, 0x14000)] {
            let mut v = pb::Vma_entry::new();
            v.set_start(s);
            v.set_end(e);
            mm.vmas.push(v);
        }
        std::fs::write(
            dir.path().join("mm-1.img"),
            image(0x5749_2820, &[bytes(&mm)]),
        )
        .unwrap();
        let iovs = collect(dir.path(), 1).unwrap();
        assert_eq!(iovs.bytes(), 0x3000);
        assert_eq!(iovs.find(0x10000).unwrap().end, 0x11000);
        assert_eq!(iovs.find(0x12000).unwrap().start, 0x11000);
    }
}
