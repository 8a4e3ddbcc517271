//! The progress bars: one style for every command.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps: `PREFIX [=====>    ] pos/len MESSAGE [elapsed < eta]`.
pub fn bar(len: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix}{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]").expect("valid template"),
    );
    if !prefix.is_empty() {
        bar.set_prefix(format!("[{prefix}] "));
    }
    bar
}
