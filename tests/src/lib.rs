//! Helpers shared by Ferry's end-to-end tests: where the built binaries are,
//! how to make a test bundle, and guards that clean up what a test created.
