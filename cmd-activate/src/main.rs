use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = nixpipe_activate::Cli::parse();
    nixpipe_core::cli::main("nixpipe-activate", || nixpipe_activate::run(cli))
}
