use std::path::Path;

use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_str_at(text, Path::new("test.toml"), &|name| match name {
        "PORT" => Some("8088".into()),
        _ => None,
    })
}

const ISSUE_EXAMPLE: &str = include_str!("../../config/examples/orders.toml");

#[test]
fn the_documented_examples_load() {
    let c = load(ISSUE_EXAMPLE).unwrap();
    assert_eq!(c.routes["orders"].filters.len(), 2);
    assert!(matches!(c.sinks["orders"], SinkConfig::Http(ref h) if h.mode == ContentMode::Binary));
    load(include_str!("../../config/ferry.toml")).unwrap();
}

#[test]
fn defaults() {
    let c = load("[sources.a]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let SourceConfig::Http(h) = &c.sources["a"] else {
        panic!("http")
    };
    assert_eq!(h.path, "/");
    assert_eq!(h.max_body_bytes, 1024 * 1024);
    assert_eq!(h.unrouted, Unrouted::Accept);
}

#[test]
fn interpolation() {
    let c = load(
        "[sources.a]\ntype = \"http\"\nlisten = \"127.0.0.1:${PORT}\"\npath = \"${PATH_X:-/in}\"\n",
    )
    .unwrap();
    let SourceConfig::Http(h) = &c.sources["a"] else {
        panic!("http")
    };
    assert_eq!(h.listen.port(), 8088);
    assert_eq!(h.path, "/in");
    let e = load("[sources.a]\ntype = \"http\"\nlisten = \"${NOPE}\"\n").unwrap_err();
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("NOPE"), "{e}");
}

/// Each broken config is refused with the line and key of the problem.
#[test]
fn errors_name_line_and_key() {
    let base = "[sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:8080\"\n\n[sinks.out]\ntype = \"stdout\"\n\n[routes.r]\nfrom = [\"web\"]\nto = [\"out\"]\n";
    let cases: &[(&str, &str, usize, &str, &str)] = &[
        // (replace, with, line, key, message fragment)
        (
            "listen =",
            "lisen =",
            3,
            "sources.web.lisen",
            "unknown field",
        ),
        (
            "type = \"stdout\"",
            "type = \"stdot\"",
            6,
            "sinks.out.type",
            "unknown variant",
        ),
        (
            "to = [\"out\"]",
            "to = [\"nope\"]",
            10,
            "routes.r.to.0",
            "unknown sink `nope`",
        ),
        (
            "from = [\"web\"]",
            "from = [\"web\", \"x\"]",
            9,
            "routes.r.from.1",
            "unknown source `x`",
        ),
        (
            "\"127.0.0.1:8080\"",
            "\"not an address\"",
            3,
            "sources.web.listen",
            "invalid socket address",
        ),
        (
            "to = [\"out\"]",
            "to = [\"out\"]\nfilters = [{ exact = { \"Bad\" = \"x\" } }]",
            11,
            "routes.r.filters.0",
            "neither an attribute",
        ),
        (
            "to = [\"out\"]",
            "to = [\"out\"]\nfilters = [{ cesql = \"type = \" }]",
            11,
            "routes.r.filters.0",
            "CESQL",
        ),
        (
            "[routes.r]",
            "[routes.r]\nextra = 1",
            9,
            "routes.r.extra",
            "unknown field",
        ),
        (
            "to = [\"out\"]",
            "to = []",
            10,
            "routes.r.to",
            "at least one sink",
        ),
        (
            "[sinks.out]",
            "[sinks.out]\nqueue = \"big\"",
            6,
            "sinks.out.queue",
            "invalid type",
        ),
    ];
    for (from, to, line, key, fragment) in cases {
        let text = base.replacen(from, to, 1);
        let e = load(&text).expect_err(&text);
        assert_eq!(e.line, Some(*line), "{e}\n{text}");
        assert_eq!(e.key.as_deref(), Some(*key), "{e}");
        assert!(e.message.contains(fragment), "{e}");
        assert!(
            e.to_string().starts_with(&format!("test.toml:{line}:")),
            "{e}"
        );
    }
}

#[test]
fn duplicate_listeners_are_refused() {
    let text = "[admin]\nlisten = \"127.0.0.1:9000\"\n[sources.a]\ntype = \"http\"\nlisten = \"127.0.0.1:9000\"\n";
    let e = load(text).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("sources.a.listen"));
    assert_eq!(e.line, Some(5));
    assert!(e.message.contains("already used by `admin.listen`"));
}

#[test]
fn toml_syntax_errors_have_a_line() {
    let e = load("[sources.a\ntype = 1").unwrap_err();
    assert_eq!(e.line, Some(1));
}
