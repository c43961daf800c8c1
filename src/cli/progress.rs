//! The progress bar of long runs, on standard error when it is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps, hidden if `quiet` or if standard error is not a terminal.
pub fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps {msg} [{elapsed}<{eta}]")
            .expect("a valid template"),
    );
    end_line_on_interrupt();
    bar
}

/// Makes Ctrl-C end the progress bar's line before the process dies of it as usual, so that
/// the shell's prompt starts on a line of its own.
fn end_line_on_interrupt() {
    extern "C" fn on_interrupt(signal: libc::c_int) {
        // SAFETY: write, signal and raise are async-signal-safe; the buffer is static.
        unsafe {
            libc::write(2, c"\n".as_ptr().cast(), 1);
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    // SAFETY: installs a handler that only makes async-signal-safe calls.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}
