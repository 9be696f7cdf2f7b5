//! `ferry`: the command line. runc's commands and flags, plus Ferry's own
//! (`check`, and later `migrate`, `serve`, `inspect`).

fn main() {}
