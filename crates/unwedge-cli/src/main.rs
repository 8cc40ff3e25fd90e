//! The `unwedge` command (being built).
fn main() {}
