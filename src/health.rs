//! Readiness of the running components: sources and sinks set it, the admin server's
//! `/readyz` reports it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Readiness of each component, by name (`source:webhooks`, `sink:archive`).
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<String, bool>>>);

impl Readiness {
    pub fn set(&self, component: &str, ready: bool) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(component.to_owned(), ready);
        }
    }

    /// Forgets a component that no longer exists.
    pub fn remove(&self, component: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(component);
        }
    }

    /// Names of the components that are not ready.
    pub fn not_ready(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, r)| !**r)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}
