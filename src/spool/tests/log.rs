//! The log: appends, reads, recovery, and what injected failures and corruption do to it.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::faulty::Faulty;
use crate::spool::disk::{Disk, Os};
use crate::spool::log::{open, remove_before, segment_path, write_cursor, Opened, Position};
use crate::spool::reader::{Item, Reader};
use crate::spool::record::{frame, read_record, Parsed, HEADER};

fn os() -> Arc<dyn Disk> {
    Arc::new(Os)
}

fn framed(payloads: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        frame(p.as_bytes(), &mut out);
    }
    out
}

fn append(log: &mut Opened, payloads: &[&str]) -> io::Result<Position> {
    log.writer.append(&framed(payloads), payloads.len() as u64)
}

/// Payloads of the records read; a corrupt span shows as `<corrupt>`.
fn payloads(items: Vec<Item>) -> Vec<String> {
    items
        .into_iter()
        .map(|i| match i {
            Item::Record(r) => String::from_utf8(r.payload).unwrap(),
            Item::Corrupt { .. } => "<corrupt>".into(),
        })
        .collect()
}

fn read_all(reader: &mut Reader, head: Position) -> Vec<String> {
    let mut out = Vec::new();
    while reader.position() < head {
        out.extend(payloads(reader.read(head, 1000).unwrap()));
    }
    out
}

fn quarantined(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir.join("quarantine")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[test]
fn appends_reads_rolls_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 30, os()).unwrap();
    assert_eq!((log.events, log.bytes), (0, 0));
    append(&mut log, &["one", "two"]).unwrap();
    let head = append(&mut log, &["three"]).unwrap();
    assert_eq!(head.segment, 1, "a new segment once the first is full");
    let items = log.reader.read(head, 10).unwrap();
    let second_end = items[1].end();
    assert_eq!(payloads(items), ["one", "two", "three"]);
    // Deliver the first two; reopen: only the third is left.
    write_cursor(dir.path(), second_end).unwrap();
    drop(log);
    let mut log = open(dir.path(), 30, os()).unwrap();
    assert_eq!(log.events, 1);
    assert_eq!(log.bytes, HEADER + 5);
    let head = append(&mut log, &["four"]).unwrap();
    assert_eq!(read_all(&mut log.reader, head), ["three", "four"]);
    remove_before(dir.path(), 1).unwrap();
    assert!(!segment_path(dir.path(), 0).exists());
    assert!(segment_path(dir.path(), 1).exists());
}

#[test]
fn a_torn_tail_is_moved_to_the_quarantine_and_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 1 << 20, os()).unwrap();
    append(&mut log, &["whole"]).unwrap();
    drop(log);
    // A crash in the middle of the next write: half a record.
    let path = segment_path(dir.path(), 0);
    let mut torn = framed(&["never confirmed"]);
    torn.truncate(10);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&torn).unwrap();
    drop(f);
    let mut log = open(dir.path(), 1 << 20, os()).unwrap();
    assert_eq!((log.events, log.quarantined), (1, 0));
    let head = append(&mut log, &["after"]).unwrap();
    assert_eq!(read_all(&mut log.reader, head), ["whole", "after"]);
    let tail = format!("{:020}-{:020}.torn", 0, HEADER + 5);
    assert_eq!(quarantined(dir.path()), std::slice::from_ref(&tail));
    assert_eq!(
        fs::read(dir.path().join("quarantine").join(tail)).unwrap(),
        torn
    );
}

#[test]
fn a_flipped_bit_fails_the_checksum() {
    let mut bytes = framed(&["payload"]);
    let len = bytes.len() as u64;
    assert!(matches!(
        read_record(&mut bytes.as_slice(), len).unwrap(),
        Parsed::Record(_)
    ));
    bytes[HEADER as usize + 2] ^= 1;
    assert_eq!(
        read_record(&mut bytes.as_slice(), len).unwrap(),
        Parsed::Corrupt
    );
    assert_eq!(read_record(&mut &bytes[..5], 5).unwrap(), Parsed::Torn);
}

#[test]
fn the_directory_is_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let _log = open(dir.path(), 1 << 20, os()).unwrap();
    let err = open(dir.path(), 1 << 20, os())
        .err()
        .expect("second open refused");
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn d1_reader_never_serves_bytes_of_a_failed_append() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Faulty::default());
    let mut log = open(dir.path(), 1 << 20, disk.clone()).unwrap();
    let head1 = append(&mut log, &["event-A"]).unwrap();
    let reader = Arc::new(Mutex::new(log.reader));
    // The reader reads A while batch B is written but not yet synced; then B's sync fails.
    let during = Arc::clone(&reader);
    *disk.before_sync.lock().unwrap() = Some(Box::new(move || {
        let got = during.lock().unwrap().read(head1, 10).unwrap();
        assert_eq!(payloads(got), ["event-A"]);
    }));
    disk.sync.next(1);
    assert!(log
        .writer
        .append(&framed(&["never-acked-B1", "never-acked-B2-longer"]), 2)
        .is_err());
    let head2 = log
        .writer
        .append(&framed(&["ACKED-C1", "ACKED-C2"]), 2)
        .unwrap();
    assert_eq!(
        read_all(&mut reader.lock().unwrap(), head2),
        ["ACKED-C1", "ACKED-C2"]
    );
    drop(log.writer);
    drop(reader);
    let mut log = open(dir.path(), 1 << 20, os()).unwrap();
    let head = log.writer.head();
    assert_eq!(
        read_all(&mut log.reader, head),
        ["event-A", "ACKED-C1", "ACKED-C2"]
    );
}

#[test]
fn d1_a_failed_append_leaves_nothing_even_when_the_cut_fails() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Faulty::default());
    let mut log = open(dir.path(), 1 << 20, disk.clone()).unwrap();
    append(&mut log, &["acked-1"]).unwrap();
    // A short write whose cut-off fails too: the next append cuts it first.
    disk.write.next(1);
    disk.truncate.next(1);
    assert!(append(&mut log, &["refused-1", "refused-2"]).is_err());
    // While the cut keeps failing, nothing is appended (and nothing acknowledged).
    disk.truncate.next(1);
    assert!(append(&mut log, &["refused-3"]).is_err());
    append(&mut log, &["acked-2"]).unwrap();
    disk.sync.next(1);
    assert!(append(&mut log, &["refused-4"]).is_err());
    let head = append(&mut log, &["acked-3"]).unwrap();
    assert_eq!(
        read_all(&mut log.reader, head),
        ["acked-1", "acked-2", "acked-3"]
    );
    drop(log);
    let log = open(dir.path(), 1 << 20, os()).unwrap();
    assert_eq!((log.events, log.writer.head()), (3, head));
}

#[test]
fn d1_an_append_that_could_not_be_cut_off_is_cut_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Faulty::default());
    let mut log = open(dir.path(), 1 << 20, disk.clone()).unwrap();
    let head = append(&mut log, &["acked"]).unwrap();
    // The sync fails and the cut keeps failing until Ferry stops.
    disk.sync.next(1);
    disk.truncate.next(usize::MAX);
    assert!(append(&mut log, &["refused-1", "refused-2"]).is_err());
    drop(log);
    assert!(fs::metadata(segment_path(dir.path(), 0)).unwrap().len() > head.offset);
    let mut log = open(dir.path(), 1 << 20, os()).unwrap();
    assert_eq!((log.events, log.writer.head()), (1, head));
    assert_eq!(read_all(&mut log.reader, head), ["acked"]);
    assert!(!dir.path().join("unconfirmed").exists());
}

#[test]
fn d2_a_read_error_keeps_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Faulty::default());
    // 15-byte segments: one record each.
    let mut log = open(dir.path(), 15, disk.clone()).unwrap();
    for p in ["r0", "r1", "r2", "r3", "r4"] {
        append(&mut log, &[p]).unwrap();
    }
    let head = log.writer.head();
    assert!(head.segment >= 2);
    disk.read.next(3);
    for _ in 0..3 {
        assert!(log.reader.read(head, 10).is_err());
        assert_eq!(log.reader.position(), Position::default());
    }
    // Records read before an error come back; the error comes on the next call.
    let first = payloads(log.reader.read(head, 1).unwrap());
    disk.open.next(2);
    let mut got = first;
    let mut errors = 0;
    while log.reader.position() < head {
        match log.reader.read(head, 10) {
            Ok(items) => got.extend(payloads(items)),
            Err(_) => errors += 1,
        }
    }
    assert_eq!(errors, 2);
    assert_eq!(got, ["r0", "r1", "r2", "r3", "r4"]);
}

#[test]
fn d3_a_corrupt_middle_record_is_quarantined_at_open_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 1 << 20, os()).unwrap();
    append(&mut log, &["first"]).unwrap();
    append(&mut log, &["second"]).unwrap();
    append(&mut log, &["third-acked"]).unwrap();
    drop(log);
    let path = segment_path(dir.path(), 0);
    let mut bytes = fs::read(&path).unwrap();
    let second = (HEADER + 5) as usize;
    bytes[second + HEADER as usize + 1] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let mut log = open(dir.path(), 1 << 20, os()).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), bytes.len() as u64);
    assert_eq!(log.events, 3, "the corrupt span counts as one");
    let head = log.writer.head();
    assert_eq!(head.offset, bytes.len() as u64);
    assert_eq!(
        read_all(&mut log.reader, head),
        ["first", "<corrupt>", "third-acked"]
    );
    assert_eq!(
        quarantined(dir.path()),
        [format!("{:020}-{:020}.corrupt", 0, second)]
    );
}

#[test]
fn d3_the_reader_resyncs_past_a_corrupt_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 1 << 20, os()).unwrap();
    append(&mut log, &["first"]).unwrap();
    append(&mut log, &["second", "second-b"]).unwrap();
    let head = append(&mut log, &["third-acked"]).unwrap();
    // While the spool runs, the length of "second" goes bad, and "second-b" is zeroed.
    let path = segment_path(dir.path(), 0);
    let mut bytes = fs::read(&path).unwrap();
    let second = (HEADER + 5) as usize;
    bytes[second + 2] ^= 0x40;
    let second_b = second + (HEADER + 6) as usize;
    bytes[second_b..second_b + (HEADER + 8) as usize].fill(0);
    fs::write(&path, &bytes).unwrap();
    assert_eq!(
        read_all(&mut log.reader, head),
        ["first", "<corrupt>", "third-acked"]
    );
    assert_eq!(quarantined(dir.path()).len(), 1);
}

#[test]
fn d3_a_corrupt_last_record_is_kept_in_the_quarantine_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 1 << 20, os()).unwrap();
    append(&mut log, &["first", "last-acked"]).unwrap();
    drop(log);
    let path = segment_path(dir.path(), 0);
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let log = open(dir.path(), 1 << 20, os()).unwrap();
    assert_eq!((log.events, log.quarantined), (1, 1));
    let kept = format!("{:020}-{:020}.corrupt", 0, HEADER + 5);
    assert_eq!(quarantined(dir.path()), std::slice::from_ref(&kept));
    assert_eq!(
        fs::read(dir.path().join("quarantine").join(kept)).unwrap(),
        &bytes[(HEADER + 5) as usize..]
    );
}

#[test]
fn d6_a_failed_rollover_keeps_writer_and_reader_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Faulty::default());
    let mut log = open(dir.path(), 40, disk.clone()).unwrap();
    append(&mut log, &["first-record"]).unwrap();
    disk.sync_dir.next(1);
    assert!(append(&mut log, &["second-record"]).is_err());
    assert_eq!(log.writer.head().segment, 0);
    append(&mut log, &["third-record"]).unwrap();
    let head = append(&mut log, &["fourth-record"]).unwrap();
    assert_eq!(
        read_all(&mut log.reader, head),
        ["first-record", "third-record", "fourth-record"]
    );
    drop(log);
    let mut log = open(dir.path(), 40, os()).unwrap();
    assert_eq!((log.events, log.writer.head()), (3, head));
    assert_eq!(
        read_all(&mut log.reader, head),
        ["first-record", "third-record", "fourth-record"]
    );
}

#[test]
fn m9_open_reads_only_the_cursor_segment_and_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let segment = 4096;
    let mut log = open(dir.path(), segment, os()).unwrap();
    let record = "x".repeat(100);
    let mut total = 0;
    while log.writer.head().segment < 20 {
        append(&mut log, &[&record, &record]).unwrap();
        total += 2;
    }
    let bytes = total * (HEADER + 100);
    drop(log);
    let disk = Arc::new(Faulty::default());
    let log = open(dir.path(), segment, disk.clone()).unwrap();
    assert_eq!((log.events, log.bytes), (total, bytes));
    let read = disk.bytes_read.load(Ordering::SeqCst);
    assert!(read <= 2 * segment, "open read {read} bytes");
    drop(log);
    // Without the counts (a spool from an older version) open reads the segments instead.
    for e in fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "count") {
            fs::remove_file(p).unwrap();
        }
    }
    let log = open(dir.path(), segment, os()).unwrap();
    assert_eq!((log.events, log.bytes), (total, bytes));
}

/// A tiny deterministic generator, so the fault sequence is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn no_sequence_of_faults_loses_reorders_or_invents_a_record() {
    for seed in 1..=20 {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Faulty::default());
        let mut log = open(dir.path(), 256, disk.clone()).unwrap();
        let mut rng = Lcg(seed);
        let (mut acked, mut got) = (Vec::new(), Vec::new());
        for step in 0..300 {
            if rng.below(2) == 0 {
                let n = 1 + rng.below(3) as usize;
                let batch: Vec<String> = (0..n).map(|i| format!("s{step}-{i}")).collect();
                let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
                match rng.below(6) {
                    0 => disk.write.next(1),
                    1 => disk.sync.next(1),
                    2 => disk.sync_dir.next(1),
                    _ => {}
                }
                if rng.below(4) == 0 {
                    disk.truncate.next(1);
                }
                if append(&mut log, &refs).is_ok() {
                    acked.extend(batch);
                }
                disk.write.next(0);
                disk.sync.next(0);
                disk.sync_dir.next(0);
                disk.truncate.next(0);
            } else {
                match rng.below(4) {
                    0 => disk.read.next(1),
                    1 => disk.open.next(1),
                    _ => {}
                }
                let head = log.writer.head();
                if let Ok(items) = log.reader.read(head, 1 + rng.below(4) as usize) {
                    got.extend(payloads(items));
                }
                disk.read.next(0);
                disk.open.next(0);
            }
            assert_eq!(got[..], acked[..got.len()], "seed {seed} step {step}");
        }
        let head = log.writer.head();
        got.extend(read_all(&mut log.reader, head));
        assert_eq!(got, acked, "seed {seed}");
        drop(log);
        let mut log = open(dir.path(), 256, os()).unwrap();
        assert_eq!(log.events, acked.len() as u64, "seed {seed}");
        let head = log.writer.head();
        assert_eq!(read_all(&mut log.reader, head), acked, "seed {seed}");
    }
}

/// Peak resident memory of this process so far, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// M9: how long `open` takes on a 1 GiB spool, how much it reads and its peak memory.
/// `FERRY_M9_DIR=<dir> FERRY_M9_PHASE=write|open cargo test --lib m9_measure -- --ignored
/// --nocapture`; between the phases drop the page cache of the segments (for example
/// `dd if=<seg> iflag=nocache count=0`) for a cold start. `open` also measures a start
/// without the `.count` files (a spool from before them), which reads every segment.
#[test]
#[ignore = "writes 1 GiB; run by hand"]
fn m9_measure_open_of_a_1_gib_spool() {
    use crate::spool::SpoolConfig;
    use std::time::Instant;
    let dir = std::path::PathBuf::from(std::env::var("FERRY_M9_DIR").expect("FERRY_M9_DIR"));
    let config = SpoolConfig {
        path: dir.clone(),
        max_bytes: 1 << 30,
    };
    let segment = config.segment_bytes();
    let phase = std::env::var("FERRY_M9_PHASE").unwrap_or_default();
    if phase == "write" {
        let mut log = open(&dir, segment, os()).unwrap();
        // About 1 KiB per event, 512 events per append (the writer's batch).
        let event = format!("{{\"specversion\":\"1.0\",\"id\":\"x\",\"source\":\"/m9\",\"type\":\"t\",\"data\":\"{}\"}}", "y".repeat(900));
        let mut batch = Vec::new();
        for _ in 0..512 {
            frame(event.as_bytes(), &mut batch);
        }
        let start = Instant::now();
        while log.bytes + (log.writer.head().segment * segment + log.writer.head().offset)
            < (1 << 30) - batch.len() as u64
        {
            log.writer.append(&batch, 512).unwrap();
        }
        eprintln!(
            "wrote {} segments in {:?}",
            log.writer.head().segment + 1,
            start.elapsed()
        );
        return;
    }
    for without_counts in [false, true] {
        if without_counts {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "count") {
                    fs::remove_file(p).unwrap();
                }
            }
        }
        let _ = fs::write("/proc/self/clear_refs", "5");
        let before = peak_rss_kib();
        let disk = Arc::new(Faulty::default());
        let start = Instant::now();
        let log = open(&dir, segment, disk.clone()).unwrap();
        let took = start.elapsed();
        eprintln!(
            "open (counts: {}): {:?}, {} events, {} bytes, read {} MiB, peak RSS {} KiB (before {} KiB)",
            !without_counts,
            took,
            log.events,
            log.bytes,
            disk.bytes_read.load(Ordering::SeqCst) >> 20,
            peak_rss_kib(),
            before
        );
    }
}
