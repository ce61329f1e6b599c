//! Which images an `image=` filter names: an exact reference, a glob over references
//! (`nginx:1.25*`), or a digest prefix (`sha256:4598c0…`, `nginx@sha256:4598c0…`).
//!
//! References match both as the runtime reported them and in their normalised form, as
//! Docker's reference grammar normalises them (`nginx:1.25` is
//! `docker.io/library/nginx:1.25`, a reference without tag or digest is `:latest`), so that
//! a filter written either way finds containers reported either way.

/// The longest filter accepted.
const MAX_FILTER_BYTES: usize = 512;
const DIGEST_PREFIX: &str = "sha256:";

#[derive(Debug)]
pub enum ImageFilter {
    /// The normalised reference.
    Exact(String),
    /// The pattern as written, and normalised.
    Glob(glob::Pattern, glob::Pattern),
    /// Hex digits of an image id or manifest digest, optionally of one repository.
    Digest { repository: Option<String>, hex: String },
}

/// Docker's normalised form of a reference: a registry domain, `library/` for official
/// images, and `:latest` when neither tag nor digest is given.
pub fn normalize(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" { "docker.io".to_string() } else { domain };
    let path = if domain == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path };
    // A tag is a `:` after the last `/` (a `:` before it belongs to a registry's port).
    let has_tag = path.rsplit('/').next().is_some_and(|last| last.contains(':'));
    let mut normalized = format!("{domain}/{path}");
    if !has_tag && digest.is_none() {
        normalized.push_str(":latest");
    }
    if let Some(digest) = digest {
        normalized.push('@');
        normalized.push_str(digest);
    }
    normalized
}

/// The repository of a reference, without tag or digest, normalised.
fn repository(reference: &str) -> String {
    let name = reference.split_once('@').map_or(reference, |(name, _)| name);
    let normalized = normalize(name);
    let (repo_end, tag) = match normalized.rfind(':') {
        Some(colon) if !normalized[colon..].contains('/') => (colon, true),
        _ => (normalized.len(), false),
    };
    if tag { normalized[..repo_end].to_string() } else { normalized }
}

fn is_hex(text: &str) -> bool {
    !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ImageFilter {
    pub fn parse(text: &str) -> Result<ImageFilter, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("image must not be empty".into());
        }
        if text.len() > MAX_FILTER_BYTES {
            return Err(format!("image is longer than {MAX_FILTER_BYTES} bytes"));
        }
        if let Some(bad) = text.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-/:@*?[]!".contains(*c))) {
            return Err(format!("image {text:?}: {bad:?} cannot be part of an image reference"));
        }
        let digest_of = |hex: &str| {
            let hex = hex.to_ascii_lowercase();
            if is_hex(&hex) {
                Ok(hex)
            } else {
                Err(format!("image {text:?}: a digest is 1 to 64 hex digits after sha256:"))
            }
        };
        if let Some(hex) = text.strip_prefix(DIGEST_PREFIX) {
            return Ok(ImageFilter::Digest { repository: None, hex: digest_of(hex)? });
        }
        if let Some((name, digest)) = text.split_once('@') {
            let hex = digest
                .strip_prefix(DIGEST_PREFIX)
                .ok_or_else(|| format!("image {text:?}: only sha256 digests are known"))?;
            if name.is_empty() || name.contains(['*', '?', '[']) {
                return Err(format!("image {text:?}: a digest needs a plain repository before the @"));
            }
            return Ok(ImageFilter::Digest { repository: Some(repository(name)), hex: digest_of(hex)? });
        }
        if text.contains(['*', '?', '[']) {
            let pattern =
                |p: &str| glob::Pattern::new(p).map_err(|e| format!("image {text:?} is not a valid glob: {e}"));
            return Ok(ImageFilter::Glob(pattern(text)?, pattern(&normalize(text))?));
        }
        Ok(ImageFilter::Exact(normalize(text)))
    }

    /// Whether a container with these image facts matches.
    pub fn matches(&self, name: Option<&str>, image_id: Option<&str>, digest: Option<&str>) -> bool {
        match self {
            ImageFilter::Exact(normalized) => name.is_some_and(|name| normalize(name) == *normalized),
            ImageFilter::Glob(raw, normalized) => {
                name.is_some_and(|name| raw.matches(name) || normalized.matches(&normalize(name)))
            }
            ImageFilter::Digest { repository: wanted, hex } => {
                let hex_of = |value: &str| {
                    let digest = value.rsplit_once('@').map_or(value, |(_, digest)| digest);
                    digest.strip_prefix(DIGEST_PREFIX).unwrap_or(digest).to_ascii_lowercase()
                };
                let repository_matches = |reference: Option<&str>| match wanted {
                    None => true,
                    Some(wanted) => reference.is_some_and(|r| repository(r) == *wanted),
                };
                let by_digest = digest.is_some_and(|d| {
                    hex_of(d).starts_with(hex.as_str())
                        && repository_matches(Some(d.rsplit_once('@').map_or(d, |(repo, _)| repo)))
                });
                // An image id names no repository: the container's own name must.
                let by_id = image_id.is_some_and(|id| hex_of(id).starts_with(hex.as_str())) && repository_matches(name);
                by_digest || by_id
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_as_docker_does() {
        for (reference, normalized) in [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("docker.io/nginx:1.25", "docker.io/library/nginx:1.25"),
            ("index.docker.io/library/nginx", "docker.io/library/nginx:latest"),
            ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
            ("localhost/bb:latest", "localhost/bb:latest"),
            ("registry:5000/team/app", "registry:5000/team/app:latest"),
            ("quay.io/prometheus/node-exporter:v1.8.0", "quay.io/prometheus/node-exporter:v1.8.0"),
            ("nginx@sha256:abcd", "docker.io/library/nginx@sha256:abcd"),
        ] {
            assert_eq!(normalize(reference), normalized, "{reference}");
        }
        assert_eq!(repository("nginx:1.25"), "docker.io/library/nginx");
        assert_eq!(repository("registry:5000/app"), "registry:5000/app");
    }

    #[test]
    fn exact_glob_and_digest_filters() {
        let exact = ImageFilter::parse("nginx:1.25").unwrap();
        assert!(exact.matches(Some("docker.io/library/nginx:1.25"), None, None));
        assert!(exact.matches(Some("nginx:1.25"), None, None));
        assert!(!exact.matches(Some("nginx:1.25.3"), None, None));
        let normalized = ImageFilter::parse("docker.io/library/nginx:1.25").unwrap();
        assert!(normalized.matches(Some("nginx:1.25"), None, None));

        let glob = ImageFilter::parse("nginx:1.25*").unwrap();
        assert!(glob.matches(Some("nginx:1.25.3"), None, None));
        assert!(glob.matches(Some("docker.io/library/nginx:1.25-alpine"), None, None));
        assert!(!glob.matches(Some("nginx:1.24"), None, None));
        assert!(!glob.matches(None, None, None));

        let id = "sha256:98be2208168793a14dd8d6b3d748ce6fd1bca9ccacd242051d0885334f421a3b";
        let digest = "docker.io/library/nginx@sha256:0123abcd";
        let by_id = ImageFilter::parse("sha256:98be22").unwrap();
        assert!(by_id.matches(Some("x"), Some(id), None));
        assert!(by_id.matches(Some("x"), Some(&id[7..]), None));
        assert!(!by_id.matches(Some("x"), Some("sha256:1111"), None));
        let by_digest = ImageFilter::parse("nginx@sha256:0123").unwrap();
        assert!(by_digest.matches(None, None, Some(digest)));
        assert!(!ImageFilter::parse("redis@sha256:0123").unwrap().matches(None, None, Some(digest)));
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        for bad in ["", "  ", "nginx 1.25", "sha256:xyz", "nginx@md5:00", "*@sha256:00", "a[", "nginx;rm"] {
            assert!(ImageFilter::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ImageFilter::parse(&"a".repeat(600)).is_err());
    }
}
