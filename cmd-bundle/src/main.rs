use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = nixpipe_bundle::Cli::parse();
    nixpipe_core::cli::main("nixpipe-bundle", || nixpipe_bundle::run(cli))
}
