use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = nixpipe_microvm::Cli::parse();
    nixpipe_core::cli::main("nixpipe-microvm", || nixpipe_microvm::run(cli))
}
