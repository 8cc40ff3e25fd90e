//! STUB: replaced by the serve() work.
