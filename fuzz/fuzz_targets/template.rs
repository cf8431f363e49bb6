//! Templates (routing keys, topics, subjects, `normalize`): parse any text, render what parses,
//! and normalize a raw message with it as every template of a `normalize` table.
#![no_main]

use std::borrow::Cow;

use bytes::Bytes;
use ferry::normalize::{NormalizeConfig, Normalizer, Raw};
use ferry::template::Template;
use ferry_core::TransportMetadata;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(template) = Template::parse(text) {
        let _ = template.placeholders().count();
        let _ = template.as_literal();
        let _ = template.render(|name| (name.len() % 2 == 0).then(|| Cow::Borrowed("v/.#+")));
    }
    let config = NormalizeConfig {
        ty: text.to_owned(),
        source: text.to_owned(),
        subject: Some(text.to_owned()),
        id: Some(text.to_owned()),
        datacontenttype: None,
        dataschema: None,
        extensions: [("ext".to_owned(), text.to_owned())].into(),
    };
    if let Ok(normalizer) = Normalizer::compile(&config) {
        let mut metadata = TransportMetadata::new();
        metadata.push_header("x-device", "thermo-7");
        metadata.push_property("mqtt.topic", "devices/thermo-7/telemetry");
        let _ = normalizer.apply(Raw {
            metadata: &metadata,
            body: Bytes::from_static(br#"{"a":{"b":[1,"two",{"c":null}]},"t":21.5}"#),
            content_type: Some("application/json"),
            message_id: Some("m-1"),
        });
    }
});
