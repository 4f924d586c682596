//! The `hadrill` binary: installs the TLS provider and hands over to [`hadrill::cli`].

fn main() {
    // reqwest (rustls-no-provider) and kube need a process-wide provider before any client
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::panic::set_hook(Box::new(|info| {
        // panics inside a case are caught and reported as that case's error; anything else
        // is a bug, reported on one line without a backtrace
        let thread = std::thread::current();
        if hadrill::engine::in_case() {
            return;
        }
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("hadrill: internal error in thread {}: {msg}{at} (please report it)", thread.name().unwrap_or("?"));
    }));
    std::process::exit(hadrill::cli::main());
}
