//! Two things clients name with their own bytes: a tenant (`X-Scope-OrgID`, which becomes a
//! directory) and a Loki deletion query. Nothing may panic; an accepted tenant's directory is
//! always one plain component under the data dir.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use wake_storage::tenants::{DEFAULT_TENANT, TENANTS_DIR, tenant_dir, validate_tenant};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if validate_tenant(text).is_ok() && text != DEFAULT_TENANT {
        let root = Path::new("/data");
        let dir = tenant_dir(root, text);
        let below = dir.strip_prefix(root.join(TENANTS_DIR)).expect("under the tenants dir");
        let components: Vec<Component<'_>> = below.components().collect();
        assert!(matches!(components.as_slice(), [Component::Normal(_)]), "{text:?} escapes: {}", dir.display());
    }
    let _ = wake_storage::deletion::validate_logs_query(text);
});
