//! Generates the Rust types of CRIU's image entries from CRIU's own
//! `images/*.proto`, vendored unchanged in `proto/criu/` by
//! `hack/sync-criu-protos`, with rust-protobuf's pure parser (no protoc).
//! `opts.proto`'s `import "google/protobuf/descriptor.proto"` (for CRIU's
//! `[(criu).hex = true]` field options) resolves to the parser's own copy.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from("proto/criu");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    // The generated mod.rs lists modules in input order: keep it stable.
    inputs.sort();
    assert!(
        !inputs.is_empty(),
        "no .proto files in {}: run hack/sync-criu-protos",
        dir.display()
    );
    protobuf_codegen::Codegen::new()
        .pure()
        .include(&dir)
        .inputs(&inputs)
        .cargo_out_dir("images")
        .run_from_script();
    // One module per file (`core-x86.proto` is `core_x86`); the decoder
    // names types without the file they come from, as CRIU's C code does.
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let reexport: String = inputs
        .iter()
        .map(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).expect("UTF-8 name");
            format!("pub(crate) use self::{}::*;\n", stem.replace('-', "_"))
        })
        .collect();
    let path = out.join("images_reexport.rs");
    std::fs::write(&path, reexport).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    println!("cargo:rerun-if-changed={}", dir.display());
}
