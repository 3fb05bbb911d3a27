fn main() -> std::process::ExitCode {
    nixpipe_core::cli::main("nixpipe-eval", nixpipe_eval::run)
}
