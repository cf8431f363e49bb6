//! Spool recovery: a segment file holding the input, opened as a restarted sink opens its
//! spool directory; every record it finds is read back (corrupt spans are quarantined).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("00000000000000000000.seg"), data).expect("segment");
    let _ = ferry::fuzzing::spool_recover(dir.path());
});
