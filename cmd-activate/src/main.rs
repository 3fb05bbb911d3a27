fn main() -> std::process::ExitCode {
    nixpipe_core::cli::main("nixpipe-activate", nixpipe_activate::run)
}
