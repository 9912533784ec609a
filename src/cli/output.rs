//! Standard output for results. A closed pipe (`pmad inspect ... | head -1`) ends the program
//! quietly with status 0, as Unix tools end on SIGPIPE, instead of Rust's default panic
//! ("failed printing to stdout"); any other write error is a one-line error and status 1.

use std::io::Write;

/// Writes one line to stdout (see the module docs for a closed pipe).
pub fn line(text: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(text).and_then(|_| writeln!(out)) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that ends quietly on a closed pipe ([`line`]).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}
