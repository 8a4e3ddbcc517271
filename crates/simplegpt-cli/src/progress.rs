//! The progress bars: one style for every command, in steps or (prepare) in bytes.

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

/// A bar of `total` bytes read: `[=====>    ] 12 MiB/40 MiB 5.3 MiB/s [elapsed < eta]`.
pub fn bytes_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} [{elapsed} < {eta}]",
        )
        .expect("valid template"),
    );
    bar
}
