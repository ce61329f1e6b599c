//! The query string of `GET /api/v1/containers` (`wake_query::inventory::api`) and the image
//! filters in it (`wake_query::inventory::image`): nothing may panic, what parses keeps its
//! promises (`from <= to`, a limit within the bound), and a parsed query selects over a small
//! inventory without more rows than the limit.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use wake_query::inventory::api::{ContainerQuery, select};
use wake_query::inventory::image::{ImageFilter, normalize};
use wake_query::loki::params;
use wake_storage::inventory::{ContainerEvent, EventKind, InventoryState};

fn inventory() -> InventoryState {
    let mut state = InventoryState::default();
    let images = ["nginx:1.25", "docker.io/library/nginx:1.25.3", "localhost/bb:latest", "registry:5000/a/b@sha256:abcd"];
    for (i, image) in images.iter().enumerate() {
        let time = i64::try_from(i).unwrap_or(0) * 1_000_000_000;
        let event = |kind, time_ns| ContainerEvent {
            kind: Some(kind),
            time_ns,
            container_id: format!("c{i}"),
            image_name: Some((*image).to_string()),
            image_id: Some(format!("sha256:{i}0ab")),
            node: Some("node-1".into()),
            ..Default::default()
        };
        state.apply(&[event(EventKind::Start, time), event(EventKind::Stop, time + 500_000_000)], 100);
    }
    state
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let form = params::parse_form(&text);
    let first: HashMap<String, String> =
        form.iter().filter_map(|(key, values)| Some((key.clone(), values.first()?.clone()))).collect();
    let state = inventory();
    if let Ok(query) = ContainerQuery::parse(&first, 10, 5_000_000_000) {
        let (rows, total) = select(&state, &query);
        assert!(rows.len() <= 10 && rows.len() <= total && total <= state.len());
    }
    for value in form.values().flatten() {
        let _ = normalize(value);
        if let Ok(filter) = ImageFilter::parse(value) {
            let _ = filter.matches(Some(value), Some(value), Some(value));
        }
    }
});
