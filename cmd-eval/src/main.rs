fn main() -> std::process::ExitCode {
    nixpipe_cli::main("nixpipe-eval", nixpipe_eval::run)
}
