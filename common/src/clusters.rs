//! Many clusters on one receiver: the names an operator gives (a cluster's `name`, a client
//! certificate's name from `certs --client-name`) and which cluster a client certificate may
//! write to. Decisions on values only; the config loader and `serve` call them.

/// Longest cluster or client name: it becomes part of file names (`client-NAME.pem`), log lines
/// and metric labels.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` is a safe name for a cluster or a client certificate: 1 to 64 ASCII letters,
/// digits, `-`, `_` and `.`, starting with a letter or a digit (so that it is a plain file name
/// component, a Prometheus label value and a certificate common name without quoting).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("it is longer than {MAX_NAME_LEN} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("it must start with a letter or a digit".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "it contains {c:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// Which of `clusters` (name, allowed client names) the client certificate named `client` (its
/// common name) may write to: the one whose allowed clients list it. The loader refuses a
/// client name listed for two clusters, so there is at most one.
pub fn cluster_for<'a>(
    client: Option<&str>,
    clusters: impl IntoIterator<Item = (&'a str, &'a [String])>,
) -> Option<&'a str> {
    let client = client?;
    clusters
        .into_iter()
        .find(|(_, allowed)| allowed.iter().any(|a| a == client))
        .map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "sales", "db-1", "db_1.eu", "0x", &"a".repeat(64)] {
            assert_eq!(check_name(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            "-a",
            ".hidden",
            "_x",
            "a b",
            "a/b",
            "..",
            "é",
            "a\n",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_certificate_picks_its_cluster() {
        let a = vec!["pa".to_string(), "pa2".to_string()];
        let b = vec!["pb".to_string()];
        let list = || [("a", a.as_slice()), ("b", b.as_slice())];
        assert_eq!(cluster_for(Some("pa2"), list()), Some("a"));
        assert_eq!(cluster_for(Some("pb"), list()), Some("b"));
        assert_eq!(cluster_for(Some("walship-sender"), list()), None);
        assert_eq!(cluster_for(Some("PB"), list()), None);
        assert_eq!(cluster_for(None, list()), None);
    }
}
