//! CRIU's statistics images: `stats-dump` and `stats-restore`, which CRIU
//! writes into the images (dump) or work (restore) directory when asked to
//! (`display_stats`).
//!
//! They are service images (IMG_SERVICE magic, then the STATS magic) with
//! one `stats_entry`, decoded by [`crate::image`] like every other image.
//! Times are microseconds.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::image::pb_stats;

/// What a dump measured (`stats-dump`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpStats {
    #[serde(with = "micros")]
    pub freezing_time: Duration,
    #[serde(with = "micros")]
    pub frozen_time: Duration,
    #[serde(with = "micros")]
    pub memdump_time: Duration,
    #[serde(with = "micros")]
    pub memwrite_time: Duration,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
    pub pages_lazy: u64,
    pub page_pipes: u64,
    pub page_pipe_bufs: u64,
}

/// What a restore measured (`stats-restore`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreStats {
    pub pages_compared: u64,
    pub pages_skipped_cow: u64,
    #[serde(with = "micros")]
    pub forking_time: Duration,
    #[serde(with = "micros")]
    pub restore_time: Duration,
    pub pages_restored: u64,
}

mod micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_micros() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}

/// Reads `stats-dump` from `dir`; `None` when CRIU wrote none (or wrote
/// an entry without a dump part).
pub fn read_dump_stats(dir: &Path) -> Result<Option<DumpStats>> {
    let Some(e) = pb_stats(&dir.join("stats-dump"))? else {
        return Ok(None);
    };
    let Some(d) = e.dump.as_ref() else {
        return Ok(None);
    };
    let us = |v: u32| Duration::from_micros(v as u64);
    Ok(Some(DumpStats {
        freezing_time: us(d.freezing_time()),
        frozen_time: us(d.frozen_time()),
        memdump_time: us(d.memdump_time()),
        memwrite_time: us(d.memwrite_time()),
        pages_scanned: d.pages_scanned(),
        pages_skipped_parent: d.pages_skipped_parent(),
        pages_written: d.pages_written(),
        pages_lazy: d.pages_lazy(),
        page_pipes: d.page_pipes(),
        page_pipe_bufs: d.page_pipe_bufs(),
    }))
}

/// Reads `stats-restore` from `dir`; `None` when CRIU wrote none.
pub fn read_restore_stats(dir: &Path) -> Result<Option<RestoreStats>> {
    let Some(e) = pb_stats(&dir.join("stats-restore"))? else {
        return Ok(None);
    };
    let Some(r) = e.restore.as_ref() else {
        return Ok(None);
    };
    let us = |v: u32| Duration::from_micros(v as u64);
    Ok(Some(RestoreStats {
        pages_compared: r.pages_compared(),
        pages_skipped_cow: r.pages_skipped_cow(),
        forking_time: us(r.forking_time()),
        restore_time: us(r.restore_time()),
        pages_restored: r.pages_restored(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
    const STATS_MAGIC: u32 = 0x5709_3306;

    fn image(entry: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&IMG_SERVICE_MAGIC.to_le_bytes());
        v.extend_from_slice(&STATS_MAGIC.to_le_bytes());
        v.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        v.extend_from_slice(entry);
        v
    }

    #[test]
    fn decodes_a_dump_entry() {
        // stats_entry { dump { freezing_time: 150, frozen_time: 90000,
        // memdump_time: 0, memwrite_time: 0, pages_scanned: 0,
        // pages_skipped_parent: 0, pages_written: 300, pages_lazy: 0 } }:
        // every field of dump_stats_entry but irmap_resolve is required.
        let dump = [
            0x08, 0x96, 0x01, 0x10, 0x90, 0xbf, 0x05, 0x18, 0x00, 0x20, 0x00, 0x28, 0x00, 0x30,
            0x00, 0x38, 0xac, 0x02, 0x48, 0x00,
        ];
        let mut e = vec![0x0a, dump.len() as u8];
        e.extend_from_slice(&dump);
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("stats-dump"), image(&e)).unwrap();
        let s = read_dump_stats(d.path()).unwrap().unwrap();
        assert_eq!(s.freezing_time, Duration::from_micros(150));
        assert_eq!(s.frozen_time, Duration::from_micros(90000));
        assert_eq!(s.pages_written, 300);
        assert_eq!(read_restore_stats(d.path()).unwrap(), None);
    }

    #[test]
    fn corrupt_images_name_the_file_and_offset() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("stats-dump");
        std::fs::write(&p, [1, 2, 3]).unwrap();
        let err = read_dump_stats(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("stats-dump") && err.contains("offset 0"),
            "{err}"
        );
        let mut img = image(&[0x0a, 0x10]);
        img[8] = 200;
        std::fs::write(&p, img).unwrap();
        let err = read_dump_stats(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("offset 8") && err.contains("truncated"),
            "{err}"
        );
    }
}
