//! The event catalog (to be written).
