//! One module per command.

pub mod check;
