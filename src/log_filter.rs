//! The `tracing` filter Ferry logs with, from `[log] level` or `RUST_LOG`.
//!
//! A bare level (`info`) is Ferry's own level. Dependencies log only errors unless a directive
//! names them (`lapin=debug`), and lapin not at all: Ferry reports every connection problem of
//! its AMQP adapters itself, with the component and the retry, while lapin's lines repeat them
//! several times per attempt or say "aborting recovery" while Ferry retries. Messages a broker
//! returns are never logged by lapin, named or not: its line carries the message body.

/// What dependencies log when no directive names them (nothing when Ferry's level is `off`).
const DEPENDENCIES: &str = "error,lapin=off";

/// Always last, so no directive turns it back on.
const NEVER: &str = "lapin::returned_messages=off";

/// The filter directives for a `[log] level` (or `RUST_LOG`) value.
pub fn directives(level: &str) -> String {
    let mut own = Vec::new();
    let mut named = Vec::new();
    for d in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if d.contains('=') || d.starts_with('[') {
            named.push(d.to_owned());
        } else if d.parse::<tracing_subscriber::filter::LevelFilter>().is_ok() {
            own.push(format!("ferry={d}"));
        } else {
            // A bare target (all of its levels), as `tracing` reads it.
            named.push(d.to_owned());
        }
    }
    let silent = own
        .last()
        .is_some_and(|d| d.eq_ignore_ascii_case("ferry=off"));
    let mut out = vec![if silent {
        "off,lapin=off"
    } else {
        DEPENDENCIES
    }
    .to_owned()];
    out.extend(own);
    out.extend(named);
    out.push(NEVER.to_owned());
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing_subscriber::EnvFilter;

    /// Whether `filter` lets a `level` event of `target` through.
    fn enabled(filter: &str, target: &'static str, level: Level) -> bool {
        use tracing_subscriber::layer::SubscriberExt as _;
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let layer = Seen(seen.clone());
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new(directives(filter)))
            .with(layer);
        tracing::subscriber::with_default(subscriber, || {
            macro_rules! at {
                ($t:literal) => {
                    match level {
                        Level::ERROR => tracing::error!(target: $t, "x"),
                        Level::WARN => tracing::warn!(target: $t, "x"),
                        Level::INFO => tracing::info!(target: $t, "x"),
                        Level::DEBUG => tracing::debug!(target: $t, "x"),
                        Level::TRACE => tracing::trace!(target: $t, "x"),
                    }
                };
            }
            match target {
                "ferry::sinks" => at!("ferry::sinks"),
                "ferry_core" => at!("ferry_core"),
                "lapin::io_loop" => at!("lapin::io_loop"),
                "lapin::returned_messages" => at!("lapin::returned_messages"),
                "async_nats" => at!("async_nats"),
                other => panic!("no such target {other}"),
            }
        });
        seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    struct Seen(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn table() {
        use Level as L;
        for (level, target, at, shown) in [
            ("info", "ferry::sinks", L::INFO, true),
            ("info", "ferry::sinks", L::DEBUG, false),
            ("info", "ferry_core", L::INFO, true),
            ("info", "async_nats", L::INFO, false),
            ("info", "async_nats", L::ERROR, true),
            ("info", "lapin::io_loop", L::ERROR, false),
            ("debug", "async_nats", L::DEBUG, false),
            ("warn", "ferry::sinks", L::INFO, false),
            ("ferry=debug,info", "ferry::sinks", L::DEBUG, true),
            ("info,ferry=debug", "ferry::sinks", L::DEBUG, true),
            ("info,async_nats=info", "async_nats", L::INFO, true),
            ("info,lapin=warn", "lapin::io_loop", L::ERROR, true),
            (
                "trace,lapin=trace",
                "lapin::returned_messages",
                L::WARN,
                false,
            ),
            ("off", "ferry::sinks", L::ERROR, false),
            ("off", "async_nats", L::ERROR, false),
        ] {
            assert_eq!(
                enabled(level, target, at),
                shown,
                "{level:?}: {target} at {at} (directives {})",
                directives(level)
            );
        }
    }
}
