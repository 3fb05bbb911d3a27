fn main() -> std::process::ExitCode {
    nixpipe_cli::main("nixpipe-status", nixpipe_status::run)
}
