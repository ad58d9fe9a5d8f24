//! Compiles `newsletter.proto` for the gRPC example and its test, with
//! protox, so no `protoc` has to be installed.

const PROTO: &str = "newsletter.proto";

/// Writes the messages, the client and the server into `OUT_DIR`, where
/// `tonic::include_proto!("newsletter")` finds them.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors =
        protox::compile([PROTO], ["."]).unwrap_or_else(|error| panic!("{PROTO}: {error}"));
    tonic_prost_build::configure()
        .compile_fds(descriptors)
        .unwrap_or_else(|error| panic!("generating code for {PROTO}: {error}"));
}
