fn main() -> std::process::ExitCode {
    nixpipe_cli::main("nixpipe-activate", nixpipe_activate::run)
}
