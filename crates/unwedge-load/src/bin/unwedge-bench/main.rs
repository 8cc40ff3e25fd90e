//! `unwedge-bench` (being built).
fn main() {}
