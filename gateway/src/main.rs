//! The `fedgw` binary: parse, run, print one line on failure, exit with a stable code.

/// jemalloc: per-thread caches and size-class slabs keep an idle proxied connection small,
/// and freed buffers are reused rather than handed back to the kernel and faulted in again
/// on every write.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    match fedgw_gateway::cli::main(std::env::args_os()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fedgw: {e}");
            std::process::ExitCode::from(e.code)
        }
    }
}
