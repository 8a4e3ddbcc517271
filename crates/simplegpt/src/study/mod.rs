//! Studies: several runs that differ in a few config keys (`compare`) or in the learning
//! rate (`sweep`), and their reports. The summaries are computed from the runs' own
//! records, so a report says exactly what the run directories hold.
//!
//! `variants` (what runs a study trains), `stats` (what their records say), `report`
//! (markdown and summary.json) and `plot` (the SVG figures).

pub mod plot;
pub mod report;
pub mod stats;
pub mod variants;

pub use report::Report;
pub use stats::{LrStability, Summary};
pub use variants::{Variant, log_grid, sweep_jobs, variant_of, with_seeds};
