//! Feeds arbitrary checkpoints to the model `ferry inspect` builds: the
//! input is cut into the images of a one-process checkpoint (each a
//! 16-bit little-endian length, then that many bytes), written into a
//! scratch directory, and read with `Checkpoint::read`. Every input must
//! give a model or an error; none may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

/// The images, in the order the input gives them.
pub const FILES: [&str; 11] = [
    "inventory.img",
    "pstree.img",
    "core-1.img",
    "ids-1.img",
    "fdinfo-2.img",
    "files.img",
    "fs-1.img",
    "mm-1.img",
    "pagemap-1.img",
    "pages-1.img",
    "mountpoints-13.img",
];

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let mut rest = data;
    for name in FILES {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = (u16::from_le_bytes(*len) as usize).min(tail.len());
        let (file, tail) = tail.split_at(len);
        if std::fs::write(dir.path().join(name), file).is_err() {
            return;
        }
        rest = tail;
    }
    let _ = criu_rpc::image::Checkpoint::read(dir.path());
    let _ = criu_rpc::image::check_dir(dir.path());
});
