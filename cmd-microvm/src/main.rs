fn main() -> std::process::ExitCode {
    nixpipe_core::cli::main("nixpipe-microvm", nixpipe_microvm::run)
}
