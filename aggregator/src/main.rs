fn main() -> std::process::ExitCode {
    pathpulse_aggregator::cli::main()
}
