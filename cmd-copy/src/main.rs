fn main() -> std::process::ExitCode {
    nixpipe_core::cli::main("nixpipe-copy", nixpipe_copy::run)
}
