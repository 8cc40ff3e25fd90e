//! The unwedge supervisor (being built).
