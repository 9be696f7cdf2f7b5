//! The generated RPC message types, re-exported privately. They come from
//! `rust-criu` (which compiles CRIU's `images/rpc.proto` with rust-protobuf 3)
//! and stay private to this crate: callers use the typed options instead.

pub(crate) use rust_criu::rust_criu_protobuf::rpc::*;
