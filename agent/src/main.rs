fn main() -> std::process::ExitCode {
    pathpulse_agent::cli::main()
}
