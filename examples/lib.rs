//! The examples of hutch-rs live in this package's `[[example]]` targets; this
//! library is empty.
