fn main() -> std::process::ExitCode {
    nixpipe_cli::main("nixpipe-vm", nixpipe_vm::run)
}
