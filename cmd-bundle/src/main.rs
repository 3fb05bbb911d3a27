fn main() -> std::process::ExitCode {
    nixpipe_cli::main("nixpipe-bundle", nixpipe_bundle::run)
}
