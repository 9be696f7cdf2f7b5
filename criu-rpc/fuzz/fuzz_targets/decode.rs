//! Feeds arbitrary bytes to the image decoder: the first byte picks the
//! file name (which tells raw images apart), the rest is the file. Every
//! input must decode or give an error; none may panic, loop or allocate
//! without bound.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 5] = [
    "image.img",
    "pages-1.img",
    "ifaddr-1.img",
    "route-1.img",
    "stats-dump",
];

fuzz_target!(|data: &[u8]| {
    if let Some((&k, file)) = data.split_first() {
        let name = NAMES[k as usize % NAMES.len()];
        let _ = criu_rpc::image::decode_bytes(Path::new(name), file);
    }
});
