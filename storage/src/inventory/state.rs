//! The inventory in memory: one [`ContainerRow`] per container instance, merged from lifecycle
//! events in any order (the latest event decides the status; identity fields keep the last
//! value any event gave), and from heartbeats that move a running container's `last_seen`.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::event::{ContainerEvent, EventKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Exited,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Exited => "exited",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerRow {
    pub container_id: String,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    pub status: Status,
    /// The time of the event that set `status`: an older event arriving late does not undo it.
    pub status_time_ns: i64,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub restarts: i64,
    pub image_name: Option<String>,
    pub image_id: Option<String>,
    pub image_digest: Option<String>,
    pub workload_kind: Option<String>,
    pub workload: Option<String>,
    pub node: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub runtime: Option<String>,
    pub removed_at_ns: Option<i64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ContainerRow {
    fn new(event: &ContainerEvent) -> ContainerRow {
        let first_seen = event.started_at_ns.unwrap_or(event.time_ns);
        ContainerRow {
            container_id: event.container_id.clone(),
            first_seen_ns: first_seen,
            last_seen_ns: first_seen,
            status: Status::Running,
            status_time_ns: i64::MIN,
            exit_code: None,
            reason: None,
            restarts: 0,
            image_name: None,
            image_id: None,
            image_digest: None,
            workload_kind: None,
            workload: None,
            node: None,
            namespace: None,
            pod: None,
            pod_uid: None,
            container: None,
            runtime: None,
            removed_at_ns: None,
            labels: BTreeMap::new(),
        }
    }

    fn merge(&mut self, event: &ContainerEvent) {
        let update = |field: &mut Option<String>, value: &Option<String>| {
            if value.is_some() {
                field.clone_from(value);
            }
        };
        update(&mut self.image_name, &event.image_name);
        update(&mut self.image_id, &event.image_id);
        update(&mut self.image_digest, &event.image_digest);
        update(&mut self.workload_kind, &event.workload_kind);
        update(&mut self.workload, &event.workload);
        update(&mut self.node, &event.node);
        update(&mut self.namespace, &event.namespace);
        update(&mut self.pod, &event.pod);
        update(&mut self.pod_uid, &event.pod_uid);
        update(&mut self.container, &event.container);
        update(&mut self.runtime, &event.runtime);
        if !event.labels.is_empty() {
            self.labels.clone_from(&event.labels);
        }
        if let Some(restarts) = event.restarts {
            self.restarts = self.restarts.max(restarts);
        }
        let started = event.started_at_ns.unwrap_or(event.time_ns);
        self.first_seen_ns = self.first_seen_ns.min(started);
        let finished = event.finished_at_ns.unwrap_or(event.time_ns);
        self.last_seen_ns = self.last_seen_ns.max(event.time_ns).max(finished);
        match event.kind {
            // A start at the same instant as a stop is older: the stop ends what the start began.
            Some(EventKind::Start) if started > self.status_time_ns => {
                self.status = Status::Running;
                self.status_time_ns = started;
                self.exit_code = None;
                self.reason = None;
            }
            Some(EventKind::Stop) if finished >= self.status_time_ns => {
                self.status = Status::Exited;
                self.status_time_ns = finished;
                self.exit_code = event.exit_code.or(self.exit_code);
                if event.reason.is_some() {
                    self.reason.clone_from(&event.reason);
                }
            }
            Some(EventKind::Remove) => {
                self.removed_at_ns = Some(self.removed_at_ns.map_or(event.time_ns, |t| t.max(event.time_ns)));
                if self.status == Status::Running && event.time_ns >= self.status_time_ns {
                    // Removed without a stop the agent saw (forced removal, the agent was down).
                    self.status = Status::Exited;
                    self.status_time_ns = event.time_ns;
                }
            }
            _ => {}
        }
    }
}

/// What a row says of its image: the key of [`InventoryState::images`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ImageKey {
    pub name: Option<String>,
    pub id: Option<String>,
    pub digest: Option<String>,
}

impl ImageKey {
    fn of(row: &ContainerRow) -> ImageKey {
        ImageKey { name: row.image_name.clone(), id: row.image_id.clone(), digest: row.image_digest.clone() }
    }
}

/// Every container instance known, with a version that changes with every change.
#[derive(Debug, Default)]
pub struct InventoryState {
    rows: HashMap<String, ContainerRow>,
    /// The containers of each image: a cluster runs far fewer images than containers, so "where
    /// does this image run" looks at the images and then at their containers only.
    by_image: HashMap<ImageKey, HashSet<String>>,
    version: u64,
    /// Running containers whose `last_seen` a heartbeat moved since the last [`take_seen`].
    seen: HashSet<String>,
}

impl InventoryState {
    pub fn from_rows(rows: Vec<ContainerRow>) -> InventoryState {
        let mut state = InventoryState { version: 1, ..Default::default() };
        for row in rows {
            state.index(&row);
            state.rows.insert(row.container_id.clone(), row);
        }
        state
    }

    fn index(&mut self, row: &ContainerRow) {
        self.by_image.entry(ImageKey::of(row)).or_default().insert(row.container_id.clone());
    }

    fn unindex(&mut self, key: &ImageKey, id: &str) {
        if let Some(ids) = self.by_image.get_mut(key) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_image.remove(key);
            }
        }
    }

    /// Every image the rows name, with the ids of its containers.
    pub fn images(&self) -> impl Iterator<Item = (&ImageKey, &HashSet<String>)> {
        self.by_image.iter()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn rows(&self) -> impl Iterator<Item = &ContainerRow> {
        self.rows.values()
    }

    pub fn get(&self, container_id: &str) -> Option<&ContainerRow> {
        self.rows.get(container_id)
    }

    /// Merges events; past `max_rows`, the exited containers seen longest ago make room.
    pub fn apply(&mut self, events: &[ContainerEvent], max_rows: usize) -> usize {
        for event in events {
            match self.rows.get_mut(&event.container_id) {
                Some(row) => {
                    let before = ImageKey::of(row);
                    row.merge(event);
                    let after = ImageKey::of(row);
                    if before != after {
                        self.unindex(&before, &event.container_id);
                        self.by_image.entry(after).or_default().insert(event.container_id.clone());
                    }
                }
                None => {
                    let mut row = ContainerRow::new(event);
                    row.merge(event);
                    self.index(&row);
                    self.rows.insert(event.container_id.clone(), row);
                }
            }
        }
        self.version += 1;
        self.evict_beyond(max_rows)
    }

    /// Moves `last_seen` of the running containers among `ids` to `time_ns`.
    pub fn heartbeat(&mut self, ids: &[String], time_ns: i64) {
        let mut changed = false;
        for id in ids {
            if let Some(row) = self.rows.get_mut(id)
                && row.status == Status::Running
                && row.last_seen_ns < time_ns
            {
                row.last_seen_ns = time_ns;
                self.seen.insert(id.clone());
                changed = true;
            }
        }
        if changed {
            self.version += 1;
        }
    }

    /// The heartbeats not yet written down: `(container id, last_seen)`.
    pub fn take_seen(&mut self) -> Vec<(String, i64)> {
        let seen = std::mem::take(&mut self.seen);
        seen.into_iter().filter_map(|id| self.rows.get(&id).map(|row| (id, row.last_seen_ns))).collect()
    }

    /// Replays heartbeats written down before.
    pub fn apply_seen(&mut self, seen: &[(String, i64)]) {
        for (id, time_ns) in seen {
            if let Some(row) = self.rows.get_mut(id) {
                row.last_seen_ns = row.last_seen_ns.max(*time_ns);
            }
        }
        self.version += 1;
    }

    /// Drops containers last seen before `cutoff_ns`; returns how many.
    pub fn expire(&mut self, cutoff_ns: i64) -> usize {
        let expired: Vec<String> =
            self.rows.values().filter(|row| row.last_seen_ns < cutoff_ns).map(|row| row.container_id.clone()).collect();
        for id in &expired {
            self.remove(id);
        }
        let dropped = expired.len();
        if dropped > 0 {
            self.version += 1;
        }
        dropped
    }

    fn evict_beyond(&mut self, max_rows: usize) -> usize {
        if self.rows.len() <= max_rows {
            return 0;
        }
        // A hundredth at a time, so that a full inventory does not sort itself on every event.
        let excess = self.rows.len() - max_rows + max_rows / 100;
        let mut candidates: Vec<(bool, i64, String)> = self
            .rows
            .values()
            .map(|row| (row.status == Status::Running, row.last_seen_ns, row.container_id.clone()))
            .collect();
        candidates.sort_unstable();
        for (_, _, id) in candidates.into_iter().take(excess) {
            self.remove(&id);
        }
        excess
    }

    fn remove(&mut self, id: &str) {
        if let Some(row) = self.rows.remove(id) {
            self.unindex(&ImageKey::of(&row), id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, time_ns: i64) -> ContainerEvent {
        ContainerEvent { kind: Some(kind), time_ns, container_id: "c1".into(), ..Default::default() }
    }

    #[test]
    fn the_latest_event_decides_the_status_whatever_the_order_of_arrival() {
        let mut stop = event(EventKind::Stop, 20);
        stop.exit_code = Some(3);
        stop.reason = Some("Error".into());
        let mut start = event(EventKind::Start, 10);
        start.image_name = Some("nginx:1.25".into());
        for order in [vec![start.clone(), stop.clone()], vec![stop.clone(), start.clone()]] {
            let mut state = InventoryState::default();
            state.apply(&order, 10);
            let images: Vec<_> = state.images().map(|(key, ids)| (key.name.clone(), ids.len())).collect();
            assert_eq!(images, vec![(Some("nginx:1.25".to_string()), 1)], "indexed under the image it has now");
            let row = state.get("c1").unwrap();
            assert_eq!((row.status, row.exit_code, row.reason.as_deref()), (Status::Exited, Some(3), Some("Error")));
            assert_eq!((row.first_seen_ns, row.last_seen_ns), (10, 20));
            assert_eq!(row.image_name.as_deref(), Some("nginx:1.25"));
        }
    }

    #[test]
    fn a_restart_runs_again_and_a_removal_keeps_the_row() {
        let mut state = InventoryState::default();
        let mut restarted = event(EventKind::Start, 30);
        restarted.restarts = Some(1);
        state.apply(&[event(EventKind::Start, 10), event(EventKind::Stop, 20), restarted], 10);
        let row = state.get("c1").unwrap();
        assert_eq!((row.status, row.restarts, row.exit_code), (Status::Running, 1, None));
        state.heartbeat(&["c1".into()], 35);
        assert_eq!(state.get("c1").unwrap().last_seen_ns, 35);
        assert_eq!(state.take_seen(), vec![("c1".to_string(), 35)]);
        state.apply(&[event(EventKind::Remove, 40)], 10);
        let row = state.get("c1").unwrap();
        assert_eq!((row.status, row.removed_at_ns, row.last_seen_ns), (Status::Exited, Some(40), 40));
        // Heartbeats do not revive an exited container.
        state.heartbeat(&["c1".into()], 50);
        assert_eq!(state.get("c1").unwrap().last_seen_ns, 40);
    }

    #[test]
    fn a_full_inventory_evicts_exited_containers_seen_longest_ago() {
        let mut state = InventoryState::default();
        for (i, id) in ["old", "new", "running"].iter().enumerate() {
            let time = i64::try_from(i).unwrap() * 10;
            let start = ContainerEvent { container_id: id.to_string(), ..event(EventKind::Start, time) };
            let stop = ContainerEvent { container_id: id.to_string(), ..event(EventKind::Stop, time + 1) };
            state.apply(&[start], 100);
            if *id != "running" {
                state.apply(&[stop], 100);
            }
        }
        assert_eq!(state.evict_beyond(2), 1);
        let indexed: usize = state.images().map(|(_, ids)| ids.len()).sum();
        assert_eq!(indexed, 2, "evicted rows leave the image index");
        assert!(state.get("old").is_none() && state.get("new").is_some() && state.get("running").is_some());
        assert_eq!(state.expire(15), 1);
        assert!(state.get("running").is_some());
    }
}
