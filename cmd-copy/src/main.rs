fn main() -> std::process::ExitCode {
    nixpipe_cli::main("nixpipe-copy", nixpipe_copy::run)
}
