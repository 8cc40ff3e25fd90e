//! Load client (being built).
