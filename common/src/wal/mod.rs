//! WAL files: their names ([`name`]) and the page header that starts each segment ([`header`]).

pub mod header;
pub mod name;
