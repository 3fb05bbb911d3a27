use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = nixpipe_eval::Cli::parse();
    nixpipe_core::cli::main("nixpipe-eval", || nixpipe_eval::run(cli))
}
