//! Label selectors as runbooks write them (`app=api,tier in (web,edge)`),
//! checked before any pod is listed: an action on pods needs a selector
//! that bounds them. An empty selector, `*`, a selector that parses to no
//! requirement, or one made only of negations (`app!=db`, `!canary`) would
//! select every pod or nearly, and is never read as "all".

/// Why a selector cannot be used to act on pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// It would select every pod (or every pod but a few): refused as an
    /// empty target set, never widened.
    Unbounded(String),
    /// It does not parse.
    Invalid(String),
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists,
    NotExists,
    Equal,
    NotEqual,
    In,
    NotIn,
}

impl Requirement {
    /// Whether it narrows the pods to those carrying a label.
    fn is_positive(&self) -> bool {
        matches!(self, Requirement::Exists | Requirement::Equal | Requirement::In)
    }
}

/// Checks `selector` for an action that changes pods. `Ok` gives it back
/// trimmed, as it goes to the API server.
pub(crate) fn bounded(selector: &str) -> Result<String, Rejected> {
    let trimmed = selector.trim();
    let requirements = parse(trimmed)?;
    if requirements.is_empty() {
        return Err(Rejected::Unbounded(format!(
            "selector {selector:?} selects every pod; an empty selector is never read as \"all\""
        )));
    }
    if !requirements.iter().any(Requirement::is_positive) {
        return Err(Rejected::Unbounded(format!(
            "selector {selector:?} only excludes pods, so it selects nearly every pod; name the pods with key=value, \
             key in (...) or key"
        )));
    }
    Ok(trimmed.to_owned())
}

/// Checks `selector` for reading: empty means every pod of the namespace
/// (`None`); anything else must parse.
pub(crate) fn for_reading(selector: Option<&str>) -> Result<Option<String>, Rejected> {
    let Some(selector) = selector.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    parse(selector)?;
    Ok(Some(selector.to_owned()))
}

fn parse(selector: &str) -> Result<Vec<Requirement>, Rejected> {
    if selector == "*" {
        return Err(Rejected::Unbounded(
            "selector \"*\" selects every pod; a wildcard is never read as \"all\"".to_owned(),
        ));
    }
    let terms = split_top_level(selector).map_err(Rejected::Invalid)?;
    if terms.iter().all(|t| t.trim().is_empty()) {
        return Ok(Vec::new());
    }
    terms.iter().map(|t| requirement(selector, t.trim())).collect()
}

/// Splits on commas outside parentheses.
fn split_top_level(selector: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0u32, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| format!("selector {selector:?}: unbalanced `)`"))?;
            }
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("selector {selector:?}: unbalanced `(`"));
    }
    terms.push(&selector[start..]);
    Ok(terms)
}

fn requirement(selector: &str, term: &str) -> Result<Requirement, Rejected> {
    let invalid = |why: String| Rejected::Invalid(format!("selector {selector:?}: {why}"));
    if term.is_empty() {
        return Err(invalid("an empty requirement between commas".to_owned()));
    }
    if let Some(key) = term.strip_prefix('!') {
        check_key(key.trim()).map_err(invalid)?;
        return Ok(Requirement::NotExists);
    }
    if let Some(open) = term.find('(') {
        let Some(inner) = term[open + 1..].strip_suffix(')') else {
            return Err(invalid(format!("`{term}`: a set must end with `)`")));
        };
        let head: Vec<&str> = term[..open].split_whitespace().collect();
        let (key, op) = match head.as_slice() {
            [key, "in"] => (*key, Requirement::In),
            [key, "notin"] => (*key, Requirement::NotIn),
            _ => return Err(invalid(format!("`{term}`: expected `key in (...)` or `key notin (...)`"))),
        };
        check_key(key).map_err(invalid)?;
        let values: Vec<&str> = inner.split(',').map(str::trim).collect();
        if values.iter().all(|v| v.is_empty()) {
            return Err(invalid(format!("`{term}`: an empty set")));
        }
        for v in values {
            check_value(v).map_err(invalid)?;
        }
        return Ok(op);
    }
    for (op, requirement) in [("!=", Requirement::NotEqual), ("==", Requirement::Equal), ("=", Requirement::Equal)] {
        if let Some((key, value)) = term.split_once(op) {
            check_key(key.trim()).map_err(invalid)?;
            check_value(value.trim()).map_err(invalid)?;
            return Ok(requirement);
        }
    }
    check_key(term).map_err(invalid)?;
    Ok(Requirement::Exists)
}

/// A label key: an optional DNS prefix and `/`, then a name of at most 63
/// alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !ok {
            return Err(format!("`{key}` is not a label key (its prefix must be a DNS name)"));
        }
    }
    if name.is_empty() || !label_text(name) {
        return Err(format!("`{key}` is not a label key"));
    }
    Ok(())
}

/// A label value: empty, or like a key's name.
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || label_text(value) { Ok(()) } else { Err(format!("`{value}` is not a label value")) }
}

fn label_text(s: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && alnum(s.chars().next())
        && alnum(s.chars().last())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_that_name_pods_pass_trimmed() {
        for s in [
            "app=api",
            " app = api ",
            "app==api,tier!=db",
            "app.kubernetes.io/name=shop",
            "tier in (web, edge)",
            "app,!canary",
            "app=api,env notin (prod)",
        ] {
            assert!(bounded(s).is_ok(), "{s:?}: {:?}", bounded(s));
        }
        assert_eq!(bounded("  app=api ").unwrap(), "app=api");
    }

    #[test]
    fn empty_wildcard_and_nothing_selectors_are_unbounded() {
        for s in ["", "   ", "*", ",", " , , "] {
            assert!(matches!(bounded(s), Err(Rejected::Unbounded(_))), "{s:?}: {:?}", bounded(s));
        }
    }

    #[test]
    fn negations_alone_are_unbounded() {
        for s in ["!canary", "app!=db", "tier notin (db)", "app!=db,!canary"] {
            assert!(matches!(bounded(s), Err(Rejected::Unbounded(_))), "{s:?}");
        }
    }

    #[test]
    fn malformed_selectors_are_invalid_and_never_panic() {
        for s in [
            "app=",
            "app=api,",
            "app in ()",
            "app in (a",
            "app in a)",
            "=api",
            "app=*",
            "a b=c",
            "app=api,,tier=web",
            "x/=y",
            "ü=1",
            "app in (a) x",
            "))",
        ] {
            let got = bounded(s);
            if s == "app=" {
                // An empty value is a valid label value.
                assert!(got.is_ok(), "{s:?}: {got:?}");
                continue;
            }
            assert!(matches!(got, Err(Rejected::Invalid(_))), "{s:?}: {got:?}");
        }
    }

    #[test]
    fn reading_accepts_no_selector_as_the_whole_namespace() {
        assert_eq!(for_reading(None), Ok(None));
        assert_eq!(for_reading(Some(" ")), Ok(None));
        assert_eq!(for_reading(Some("!canary")), Ok(Some("!canary".to_owned())));
        assert!(for_reading(Some("app in (")).is_err());
    }
}
