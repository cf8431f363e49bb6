//! Warnings about routes that `ferry check` prints: routes that can never match, and routes
//! identical to another one.

use std::collections::BTreeMap;

use super::filter::{NumOp, Value};
use super::{Filter, Key, RouteConfig, Test};

/// One warning per route that can never match or repeats another; routes in name order.
pub fn lint(routes: &BTreeMap<String, RouteConfig>) -> Vec<String> {
    let mut out = Vec::new();
    // Routes by their sources and filters (their debug text: filters are not `Hash`).
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for (name, route) in routes {
        let compiled: Result<Vec<Filter>, String> =
            route.filters.iter().map(Filter::compile).collect();
        let Ok(compiled) = compiled else { continue };
        if let Some(why) = never_matches(&Filter::All(compiled)) {
            out.push(format!("route `{name}` can never match: {why}"));
        }
        let mut from: Vec<&str> = route.from.iter().map(String::as_str).collect();
        from.sort_unstable();
        match seen.entry(format!("{from:?} {:?}", route.filters)) {
            std::collections::hash_map::Entry::Occupied(first) => out.push(format!(
                "route `{name}` has the same sources and filters as route `{}`: both match the same events (merge their `to` lists)",
                first.get()
            )),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(name);
            }
        }
    }
    out
}

/// Why a conjunction can never match, if it cannot.
fn never_matches(filter: &Filter) -> Option<String> {
    let mut tests: Vec<(&Key, &Test)> = Vec::new();
    let mut contradiction = None;
    collect(filter, &mut tests, &mut contradiction);
    if contradiction.is_some() {
        return contradiction;
    }
    for (i, &(key, a)) in tests.iter().enumerate() {
        for &(other_key, b) in &tests[i + 1..] {
            if key != other_key {
                continue;
            }
            if let Some(why) = conflict(key, a, b).or_else(|| conflict(key, b, a)) {
                return Some(why);
            }
        }
    }
    // Numeric bounds on one name that leave no number.
    let mut keys: Vec<&Key> = tests.iter().map(|(k, _)| *k).collect();
    keys.dedup();
    for key in keys {
        let (mut low, mut high) = (f64::NEG_INFINITY, f64::INFINITY);
        let (mut low_open, mut high_open) = (false, false);
        for (_, t) in tests.iter().filter(|(k, _)| *k == key) {
            let Test::Numeric(bounds) = t else { continue };
            for &(op, n) in bounds.iter() {
                match op {
                    NumOp::Gt if n >= low => (low, low_open) = (n, true),
                    NumOp::Ge if n > low => (low, low_open) = (n, false),
                    NumOp::Lt if n <= high => (high, high_open) = (n, true),
                    NumOp::Le if n < high => (high, high_open) = (n, false),
                    NumOp::Eq => {
                        if n > low || (n == low && !low_open) {
                            (low, low_open) = (n, false);
                        }
                        if n < high || (n == high && !high_open) {
                            (high, high_open) = (n, false);
                        }
                        if n < low || n > high {
                            (low, high) = (f64::INFINITY, f64::NEG_INFINITY);
                        }
                    }
                    _ => {}
                }
            }
        }
        if low > high || (low == high && (low_open || high_open)) {
            return Some(format!(
                "the numeric bounds on `{}` leave no number",
                key.name()
            ));
        }
    }
    None
}

/// The comparisons of a conjunction (`all`, nested `all`s), and any part that never matches.
fn collect<'f>(filter: &'f Filter, out: &mut Vec<(&'f Key, &'f Test)>, never: &mut Option<String>) {
    match filter {
        Filter::All(list) => list.iter().for_each(|f| collect(f, out, never)),
        Filter::Compare { key, test } => out.push((key, test)),
        Filter::Not(inner) if matches!(&**inner, Filter::All(l) if l.is_empty()) => {
            *never = Some("`not` of a filter that matches everything".into());
        }
        _ => {}
    }
}

/// Why `a` and `b` on the same name cannot both pass.
fn conflict(key: &Key, a: &Test, b: &Test) -> Option<String> {
    let name = key.name();
    match (a, b) {
        (Test::Exists(x), Test::Exists(y)) if x != y => {
            Some(format!("`{name}` must be both present and absent"))
        }
        (Test::Exists(false), other) if !matches!(other, Test::Exists(_)) => Some(format!(
            "`{name}` must be absent, yet `{}` needs it",
            other.phrase(name)
        )),
        (Test::Exact(values), other) if !matches!(other, Test::Exists(_)) => {
            let passes = values
                .iter()
                .any(|v| other.passes(Some(&Value::Str(std::borrow::Cow::Borrowed(v)))));
            (!passes).then(|| {
                format!(
                    "no value of `{}` passes `{}`",
                    a.phrase(name),
                    other.phrase(name)
                )
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(text: &str) -> BTreeMap<String, RouteConfig> {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn warnings() {
        let r = routes(
            r#"
            [a]
            from = ["web"]
            to = ["s"]
            filters = [{ exact = { type = "x" } }, { exact = { type = "y" } }]
            [b]
            from = ["web"]
            to = ["s"]
            filters = [{ numeric = { "data.t" = { ">" = 50, "<" = 30 } } }]
            [c]
            from = ["web"]
            to = ["s"]
            filters = [{ exists = { subject = false } }, { prefix = { subject = "a" } }]
            [d]
            from = ["web"]
            to = ["t"]
            filters = [{ exact = { type = ["x", "y"] } }, { prefix = { type = "y" } }]
            [e]
            from = ["web"]
            to = ["u"]
            filters = [{ exact = { type = ["x", "y"] } }, { prefix = { type = "y" } }]
            [f]
            from = ["web"]
            to = ["u"]
            filters = [{ numeric = { n = { ">=" = 3, "<=" = 3 } } }, { exact = { type = "z" } }, { prefix = { type = "q" } }]
            "#,
        );
        let w = lint(&r);
        assert!(w[0].starts_with("route `a` can never match"), "{w:?}");
        assert!(
            w[1].starts_with("route `b` can never match: the numeric bounds on `data.t`"),
            "{w:?}"
        );
        assert!(
            w[2].starts_with("route `c` can never match: `subject` must be absent"),
            "{w:?}"
        );
        assert!(
            w[3].starts_with("route `e` has the same sources and filters as route `d`"),
            "{w:?}"
        );
        assert!(
            w[4].starts_with("route `f` can never match: no value of"),
            "{w:?}"
        );
        assert_eq!(w.len(), 5, "{w:?}");
    }
}
