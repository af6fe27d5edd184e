//! The `fedgw` binary: parse, run, print one line on failure, exit with a stable code.

fn main() -> std::process::ExitCode {
    match fedgw_gateway::cli::main(std::env::args_os()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fedgw: {e}");
            std::process::ExitCode::from(e.code)
        }
    }
}
