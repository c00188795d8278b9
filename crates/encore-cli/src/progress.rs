//! Progress bars for long CLI work: drawn on stderr when it is a terminal, hidden otherwise
//! (so logs and tests stay clean).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A bar over `len` units of work.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::with_draw_target(Some(len), target());
    b.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b
}

/// A spinner for work of unknown length.
pub fn spinner(what: &str) -> ProgressBar {
    let b = ProgressBar::with_draw_target(None, target());
    b.set_style(ProgressStyle::with_template("{msg} {spinner} {elapsed}").expect("valid template"));
    b.set_message(what.to_string());
    b.enable_steady_tick(std::time::Duration::from_millis(200));
    b
}
