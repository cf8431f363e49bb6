//! The config loader: interpolation, TOML, every component's checks, as `ferry check` runs
//! them; also the outline parse `check --diff-against http://…` uses, and redaction.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name.len() % 3 != 0).then(|| format!("value-of-{name}"));
    if let Ok(config) = ferry::Config::from_str_at(text, Path::new("fuzz.toml"), &env) {
        // What /-/config shows parses back as an outline.
        let _ = ferry::Config::outline(&config.origin.redacted, Path::new("fuzz.toml"));
    }
    let _ = ferry::Config::outline(text, Path::new("fuzz.toml"));
});
