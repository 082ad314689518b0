//! Real WAL segments to push, made once per test process by two independent clusters.
//!
//! A WAL segment starts with a long page header carrying the cluster's system identifier, the
//! segment size and the segment's own address (xlog_internal.h), so a receiver can tell a
//! segment from another cluster, or one stored under the wrong name. Scenarios need genuine ones:
//! `home` holds three consecutive completed segments of one cluster, `foreign` two of another
//! (their numbers depend on how much WAL initdb wrote).
//! Both clusters are gone once the bytes are read; the bytes stay in memory (about 80 MiB).

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use crate::pg::PgCluster;
use crate::scenario::Scenario;

/// One WAL file: its name and contents.
#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Segment {
    /// Write the segment into the scenario directory as `rel` (owned by postgres).
    pub fn write_to(&self, sc: &Scenario, rel: &str) -> std::path::PathBuf {
        sc.write(rel, &self.bytes)
    }
}

/// Segments of two clusters with different system identifiers.
#[derive(Debug)]
pub struct Donors {
    /// Three consecutive completed segments of one cluster.
    pub home: Vec<Segment>,
    /// Two consecutive completed segments of another cluster.
    pub foreign: Vec<Segment>,
}

/// The shared donors, made by the first scenario that asks (others wait for it).
pub fn donors() -> &'static Donors {
    static DONORS: OnceLock<Donors> = OnceLock::new();
    DONORS.get_or_init(|| {
        let sc = Scenario::new("donors");
        let home = completed_segments(&sc, "home", 3);
        let foreign = completed_segments(&sc, "foreign", 2);
        Donors { home, foreign }
    })
}

/// initdb a cluster, fill and switch `count` segments, and read the completed ones.
fn completed_segments(sc: &Scenario, name: &str, count: usize) -> Vec<Segment> {
    // wal_keep_size: keep completed segments around even if a checkpoint happens meanwhile.
    let mut pg = PgCluster::init(sc, name, &["wal_keep_size = '1GB'"]);
    pg.start();
    pg.sql("create table donor (i int, t text)");
    let mut completed = Vec::new();
    for i in 0..count {
        pg.sql(&format!(
            "insert into donor select g, md5(g::text) from generate_series(1, 1000) g -- {i}"
        ));
        // pg_walfile_name() of the switch LSN names the segment the switch completed.
        let lsn = pg.switch_wal();
        completed.push(pg.walfile_name(&lsn));
    }
    let mut segments: Vec<Segment> = read_segments(&pg.wal_dir())
        .into_iter()
        .filter(|s| completed.contains(&s.name))
        .collect();
    segments.sort_by(|a, b| a.name.cmp(&b.name));
    pg.stop();
    let names: Vec<&str> = segments.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names, completed,
        "cluster {name}: completed segments missing from pg_wal"
    );
    for pair in segments.windows(2) {
        assert_eq!(
            segno(&pair[0].name) + 1,
            segno(&pair[1].name),
            "cluster {name}: completed segments {names:?} are not consecutive"
        );
    }
    segments
}

/// The segment number of a 24-character segment name (log and segment parts).
pub fn segno(name: &str) -> u64 {
    let log = u64::from_str_radix(&name[8..16], 16).expect("log part");
    let seg = u64::from_str_radix(&name[16..24], 16).expect("segment part");
    (log << 32) | seg
}

/// The segment name for timeline 1 and segment number `segno` (16 MiB segments).
pub fn segment_name(segno: u64) -> String {
    format!("00000001{:08X}{:08X}", segno >> 32, segno & 0xFFFF_FFFF)
}

fn read_segments(wal_dir: &Path) -> Vec<Segment> {
    fs::read_dir(wal_dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", wal_dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_segment = name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit());
            is_segment.then(|| {
                let bytes = fs::read(e.path()).expect("read segment");
                Segment { name, bytes }
            })
        })
        .collect()
}
