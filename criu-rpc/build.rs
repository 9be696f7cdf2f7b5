//! Generates the Rust types of CRIU's image entries from Ferry's own
//! `proto/images.proto`, with rust-protobuf's pure parser (no protoc).

fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .input("proto/images.proto")
        .cargo_out_dir("images")
        .run_from_script();
    println!("cargo:rerun-if-changed=proto/images.proto");
}
