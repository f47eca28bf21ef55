fn main() -> std::process::ExitCode {
    rxgate::cli::main()
}
