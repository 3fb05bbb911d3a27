use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = nixpipe_copy::Cli::parse();
    nixpipe_core::cli::main("nixpipe-copy", || nixpipe_copy::run(cli))
}
