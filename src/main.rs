//! The `call-coach` binary: dispatch only (see `cli`).

fn main() -> std::process::ExitCode {
    call_coach::cli::main()
}
