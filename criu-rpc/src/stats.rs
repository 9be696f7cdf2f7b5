//! CRIU's statistics images: `stats-dump` and `stats-restore`, which CRIU
//! writes into the images (dump) or work (restore) directory when asked to
//! (`display_stats`).
//!
//! The framing is that of CRIU's service images (criu/include/magic.h): the
//! IMG_SERVICE magic, the STATS magic, then one entry as a 32-bit
//! little-endian length and a `stats_entry` protobuf (images/stats.proto).
//! Times are microseconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use protobuf::CodedInputStream;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
const STATS_MAGIC: u32 = 0x5709_3306;

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

fn bad(path: &Path, offset: u64, what: &'static str) -> Error {
    Error::BadImage {
        path: path.to_path_buf(),
        offset,
        what,
    }
}

/// The protobuf payload of a stats image, after checking its framing.
fn payload<'a>(path: &Path, data: &'a [u8]) -> Result<&'a [u8]> {
    let word = |at: usize| -> Result<u32> {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .ok_or_else(|| bad(path, at as u64, "the file ends inside its header"))
    };
    if word(0)? != IMG_SERVICE_MAGIC {
        return Err(bad(path, 0, "not a CRIU service image (wrong magic)"));
    }
    if word(4)? != STATS_MAGIC {
        return Err(bad(path, 4, "not a stats image (wrong magic)"));
    }
    let len = word(8)? as usize;
    data.get(12..12 + len)
        .ok_or_else(|| bad(path, 12, "the stats entry is longer than the file"))
}

/// Walks the fields of a message: (field number, varint or nested bytes).
fn fields(path: &Path, msg: &[u8], mut f: impl FnMut(u32, Field<'_>)) -> Result<()> {
    let mut is = CodedInputStream::from_bytes(msg);
    while !is
        .eof()
        .map_err(|_| bad(path, 12, "a truncated protobuf entry"))?
    {
        let tag = is
            .read_raw_varint32()
            .map_err(|_| bad(path, 12, "a malformed protobuf tag"))?;
        let (num, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                let v = is
                    .read_raw_varint64()
                    .map_err(|_| bad(path, 12, "a malformed varint"))?;
                f(num, Field::Varint(v));
            }
            2 => {
                let b = is
                    .read_bytes()
                    .map_err(|_| bad(path, 12, "a malformed nested message"))?;
                f(num, Field::Bytes(&b));
            }
            1 => {
                is.read_raw_little_endian64()
                    .map_err(|_| bad(path, 12, "a truncated field"))?;
            }
            5 => {
                is.read_raw_little_endian32()
                    .map_err(|_| bad(path, 12, "a truncated field"))?;
            }
            _ => return Err(bad(path, 12, "an unknown protobuf wire type")),
        }
    }
    Ok(())
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            op: "reading",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The nested message `which` (1: dump, 2: restore) of a stats image.
fn entry(path: &Path, which: u32) -> Result<Option<Vec<u8>>> {
    let Some(data) = read(path)? else {
        return Ok(None);
    };
    let msg = payload(path, &data)?;
    let mut out = None;
    fields(path, msg, |n, f| {
        if let (true, Field::Bytes(b)) = (n == which, f) {
            out = Some(b.to_vec());
        }
    })?;
    Ok(out)
}

/// Reads `stats-dump` from `dir`; `None` when CRIU wrote none.
pub fn read_dump_stats(dir: &Path) -> Result<Option<DumpStats>> {
    let path: PathBuf = dir.join("stats-dump");
    let Some(msg) = entry(&path, 1)? else {
        return Ok(None);
    };
    let mut s = DumpStats::default();
    let us = Duration::from_micros;
    fields(&path, &msg, |n, f| {
        if let Field::Varint(v) = f {
            match n {
                1 => s.freezing_time = us(v),
                2 => s.frozen_time = us(v),
                3 => s.memdump_time = us(v),
                4 => s.memwrite_time = us(v),
                5 => s.pages_scanned = v,
                6 => s.pages_skipped_parent = v,
                7 => s.pages_written = v,
                9 => s.pages_lazy = v,
                10 => s.page_pipes = v,
                11 => s.page_pipe_bufs = v,
                _ => {}
            }
        }
    })?;
    Ok(Some(s))
}

/// Reads `stats-restore` from `dir`; `None` when CRIU wrote none.
pub fn read_restore_stats(dir: &Path) -> Result<Option<RestoreStats>> {
    let path: PathBuf = dir.join("stats-restore");
    let Some(msg) = entry(&path, 2)? else {
        return Ok(None);
    };
    let mut s = RestoreStats::default();
    let us = Duration::from_micros;
    fields(&path, &msg, |n, f| {
        if let Field::Varint(v) = f {
            match n {
                1 => s.pages_compared = v,
                2 => s.pages_skipped_cow = v,
                3 => s.forking_time = us(v),
                4 => s.restore_time = us(v),
                5 => s.pages_restored = v,
                _ => {}
            }
        }
    })?;
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // stats_entry { dump { freezing_time: 150, frozen_time: 90000, pages_written: 300 } }
        let dump = [0x08, 0x96, 0x01, 0x10, 0x90, 0xbf, 0x05, 0x38, 0xac, 0x02];
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
        assert!(err.contains("longer than the file"), "{err}");
    }
}
