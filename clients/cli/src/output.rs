//! The commands' results on stdout. A reader that goes away early (`steer demo --list | head -1`)
//! ends the process quietly, with status 0, where `println!` would panic. SIGPIPE stays ignored
//! (Rust's default): the embedded servers' sockets write with `writev`, which would raise it.

use std::io::Write;

/// Writes to stdout (flushed); a closed pipe exits quietly, another failure with a message.
pub fn write(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.flush()) {
        closed(e);
    }
}

fn closed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("Error: writing to stdout: {e}");
    std::process::exit(1);
}

/// stdout as a writer for code that takes one (shell completions), with the same rule.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().write(buf).or_else(|e| closed(e))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush().or_else(|e| closed(e))
    }
}

/// `print!` to stdout through [`write`].
macro_rules! out {
    ($($t:tt)*) => { $crate::output::write(format_args!($($t)*)) };
}

/// `println!` to stdout through [`write`].
macro_rules! outln {
    () => { $crate::output::write(format_args!("\n")) };
    ($($t:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($t)*))) };
}
