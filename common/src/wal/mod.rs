//! WAL files: their names ([`name`]), the page header that starts each segment ([`header`]),
//! and the small text files archived beside the segments: timeline histories ([`history`]) and
//! backup history files ([`backup`]); the open segment shipped as it grows ([`partial`]).

pub mod backup;
pub mod header;
pub mod history;
pub mod name;
pub mod partial;
