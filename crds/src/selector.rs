//! Label-selector matching, as the API server defines it: every `matchLabels` pair and every
//! `matchExpressions` requirement must hold; an empty selector matches everything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("unknown selector operator {operator:?} for key {key:?} (expected In, NotIn, Exists or DoesNotExist)")]
    UnknownOperator { key: String, operator: String },
    #[error("operator {operator} for key {key:?} needs at least one value")]
    MissingValues { key: String, operator: String },
    #[error("operator {operator} for key {key:?} takes no values")]
    UnexpectedValues { key: String, operator: String },
}

/// Whether `labels` satisfy `selector`. A malformed requirement is an error, never a silent match.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, SelectorError> {
    let labels_match =
        selector.match_labels.iter().flatten().all(|(key, value)| labels.get(key).is_some_and(|v| v == value));
    let mut expressions_match = true;
    for requirement in selector.match_expressions.iter().flatten() {
        let values = requirement.values.as_deref().unwrap_or_default();
        let key = &requirement.key;
        let operator = requirement.operator.as_str();
        let holds = match operator {
            "In" | "NotIn" if values.is_empty() => {
                return Err(SelectorError::MissingValues { key: key.clone(), operator: operator.into() });
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(SelectorError::UnexpectedValues { key: key.clone(), operator: operator.into() });
            }
            "In" => labels.get(key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(key),
            "DoesNotExist" => !labels.contains_key(key),
            _ => return Err(SelectorError::UnknownOperator { key: key.clone(), operator: operator.into() }),
        };
        expressions_match &= holds;
    }
    Ok(labels_match && expressions_match)
}

/// Whether `labels` satisfy at least one of `selectors`; an empty list matches everything.
pub fn matches_any(selectors: &[LabelSelector], labels: &BTreeMap<String, String>) -> Result<bool, SelectorError> {
    if selectors.is_empty() {
        return Ok(true);
    }
    for selector in selectors {
        if matches(selector, labels)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// An advertisement's pool selection (L2 or BGP): the pools it names, or those its selectors match; naming
/// none and selecting none means every pool. A malformed selector selects nothing.
pub fn selects_pool(
    names: &[String],
    selectors: &[LabelSelector],
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    (names.is_empty() && selectors.is_empty())
        || names.iter().any(|p| p == name)
        || (!selectors.is_empty() && matches_any(selectors, labels).unwrap_or(false))
}

/// An advertisement's Service selection: no selector, every Service.
pub fn selects_service(selectors: &[LabelSelector], labels: &BTreeMap<String, String>) -> bool {
    selectors.is_empty() || matches_any(selectors, labels).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: operator.into(),
                values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert_eq!(matches(&LabelSelector::default(), &labels(&[])), Ok(true));
        assert_eq!(matches_any(&[], &labels(&[("a", "b")])), Ok(true));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let selector =
            LabelSelector { match_labels: Some(labels(&[("app", "web"), ("tier", "front")])), ..Default::default() };
        assert_eq!(matches(&selector, &labels(&[("app", "web"), ("tier", "front"), ("x", "y")])), Ok(true));
        assert_eq!(matches(&selector, &labels(&[("app", "web")])), Ok(false));
        assert_eq!(matches(&selector, &labels(&[("app", "web"), ("tier", "back")])), Ok(false));
    }

    #[test]
    fn expressions_follow_the_api_server_semantics() {
        let env = labels(&[("env", "prod")]);
        let none = labels(&[]);
        assert_eq!(matches(&expression("env", "In", &["prod", "staging"]), &env), Ok(true));
        assert_eq!(matches(&expression("env", "In", &["dev"]), &env), Ok(false));
        assert_eq!(matches(&expression("env", "In", &["prod"]), &none), Ok(false));
        assert_eq!(matches(&expression("env", "NotIn", &["dev"]), &env), Ok(true));
        assert_eq!(matches(&expression("env", "NotIn", &["dev"]), &none), Ok(true));
        assert_eq!(matches(&expression("env", "NotIn", &["prod"]), &env), Ok(false));
        assert_eq!(matches(&expression("env", "Exists", &[]), &env), Ok(true));
        assert_eq!(matches(&expression("env", "Exists", &[]), &none), Ok(false));
        assert_eq!(matches(&expression("env", "DoesNotExist", &[]), &none), Ok(true));
    }

    #[test]
    fn malformed_requirements_are_errors_not_matches() {
        let env = labels(&[("env", "prod")]);
        assert!(matches!(
            matches(&expression("env", "Equals", &["prod"]), &env),
            Err(SelectorError::UnknownOperator { .. })
        ));
        assert!(matches!(matches(&expression("env", "In", &[]), &env), Err(SelectorError::MissingValues { .. })));
        assert!(matches!(
            matches(&expression("env", "Exists", &["x"]), &env),
            Err(SelectorError::UnexpectedValues { .. })
        ));
    }
}
