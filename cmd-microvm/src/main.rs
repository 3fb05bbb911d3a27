fn main() -> std::process::ExitCode {
    nixpipe_cli::main("nixpipe-microvm", nixpipe_microvm::run)
}
