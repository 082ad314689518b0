//! WAL files: their names ([`name`]), the page header that starts each segment ([`header`]),
//! and the small text files archived beside the segments: timeline histories ([`history`]) and
//! backup history files ([`backup`]).

pub mod backup;
pub mod header;
pub mod history;
pub mod name;
