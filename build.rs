//! Compiles `examples/grpc/newsletter.proto` for the gRPC example and its
//! test, with the `grpc-example` feature only: with protox, so no `protoc`
//! has to be installed. Without the feature this does nothing, and the
//! published package leaves it out.

fn main() {
    // Without a `rerun-if-changed`, Cargo would run this again (and rebuild
    // the library) whenever any file in the package changed.
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "grpc-example")]
    grpc_example::compile();
}

#[cfg(feature = "grpc-example")]
mod grpc_example {
    const PROTO: &str = "examples/grpc/newsletter.proto";

    /// Writes the messages, the client and the server into `OUT_DIR`, where
    /// `tonic::include_proto!("newsletter")` finds them.
    pub(crate) fn compile() {
        println!("cargo:rerun-if-changed={PROTO}");
        let descriptors = protox::compile([PROTO], ["examples/grpc"])
            .unwrap_or_else(|error| panic!("{PROTO}: {error}"));
        tonic_prost_build::configure()
            .compile_fds(descriptors)
            .unwrap_or_else(|error| panic!("generating code for {PROTO}: {error}"));
    }
}
