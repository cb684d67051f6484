fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so building needs nothing installed by hand.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_protos(
        &[
            "tidewater/bus/v1/envelope.proto",
            "tidewater/events/v1/events.proto",
        ],
        &["."],
    )?;
    Ok(())
}
