//! The generated entry types, from CRIU's own `images/*.proto` (vendored
//! unchanged in `proto/criu/` by `hack/sync-criu-protos`). rust-protobuf
//! keeps CRIU's message names, capitalised (`pstree_entry` is
//! `Pstree_entry`), and makes one module per file; every type is
//! re-exported here under that name. Private to the crate: callers get the
//! [`super::model`] types or JSON.

#![allow(
    clippy::all,
    unreachable_pub,
    missing_docs,
    dead_code,
    non_camel_case_types,
    unused_imports
)]

include!(concat!(env!("OUT_DIR"), "/images/mod.rs"));
include!(concat!(env!("OUT_DIR"), "/images_reexport.rs"));
