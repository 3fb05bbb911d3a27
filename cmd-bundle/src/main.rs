fn main() -> std::process::ExitCode {
    nixpipe_core::cli::main("nixpipe-bundle", nixpipe_bundle::run)
}
