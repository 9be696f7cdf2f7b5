//! The generated entry types (from `proto/images.proto`, Ferry's own
//! definitions of CRIU's image entries). Private to the crate: callers get
//! the [`super::model`] types or JSON.

#![allow(clippy::all, unreachable_pub, missing_docs, dead_code)]

include!(concat!(env!("OUT_DIR"), "/images/mod.rs"));

pub(crate) use self::images::*;
