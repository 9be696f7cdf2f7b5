//! One module per command (or family of commands).

pub mod check;
pub mod checkpoint;
pub mod exec;
pub mod inspect;
pub mod inspect_cmds;
pub mod lifecycle;
pub mod migrate;
pub mod restore;
pub mod serve;
