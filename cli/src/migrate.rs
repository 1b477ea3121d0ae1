//! MetalLB configuration → ferrolb's. Reads every YAML document of the input and converts what has a ferrolb
//! equivalent:
//! - `metallb.io` `IPAddressPool` → `ferrolb.io/v1alpha1` `IPAddressPool` (cluster-scoped: the namespace is
//!   dropped; addresses, autoAssign, avoidBuggyIPs and serviceAllocation are kept as they are, with the same
//!   meaning, priorities included: lower first);
//! - `metallb.io` `L2Advertisement` → `L2Advertisement` (pools, pool selectors, node selectors, interfaces);
//! - the legacy `metallb.io/v1beta1` `AddressPool`, and the pre-0.13 `config` ConfigMap's `address-pools`, →
//!   a pool, plus an L2Advertisement for it when its protocol is layer2.
//!
//! BGP objects have no equivalent (ferrolb announces on layer 2 only): they are left out with a warning, as
//! is anything that is not MetalLB's. Every address is checked with the same parser the controller uses, so
//! an entry ferrolb would refuse is an error here, naming the object and the entry. Services need no change:
//! ferrolb honours MetalLB's `metallb.io/*` and `metallb.universe.tf/*` annotations.

use std::collections::BTreeMap;

use ferrolb_crds::pool::{AddressEntry, ServiceAllocation};
use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("document {index}: not valid YAML: {source}")]
    Yaml { index: usize, source: serde_yaml_ng::Error },
    #[error("{kind} {name:?}: {problem}")]
    Invalid { kind: String, name: String, problem: String },
    #[error("two pools are named {0:?} (in different namespaces): ferrolb's pools are cluster-scoped, rename one")]
    DuplicatePool(String),
}

/// The converted objects, and what was left out or changed, for the user to read.
#[derive(Debug, Default)]
pub struct Migration {
    pub pools: Vec<IPAddressPool>,
    pub advertisements: Vec<L2Advertisement>,
    pub warnings: Vec<String>,
}

impl Migration {
    /// The ferrolb objects as one multi-document YAML stream, pools first.
    pub fn to_yaml(&self) -> Result<String, serde_yaml_ng::Error> {
        let mut out = String::from("# Converted from MetalLB configuration by `ferrolb migrate`.\n");
        for pool in &self.pools {
            out.push_str("---\n");
            out.push_str(&serde_yaml_ng::to_string(&typed("IPAddressPool", pool)?)?);
        }
        for advertisement in &self.advertisements {
            out.push_str("---\n");
            out.push_str(&serde_yaml_ng::to_string(&typed("L2Advertisement", advertisement)?)?);
        }
        Ok(out)
    }
}

/// The object with apiVersion and kind first, as people write them.
fn typed(kind: &str, object: &impl serde::Serialize) -> Result<Value, serde_yaml_ng::Error> {
    let mut value = serde_json::to_value(object).map_err(<serde_yaml_ng::Error as serde::ser::Error>::custom)?;
    let mut ordered = serde_json::Map::new();
    ordered.insert("apiVersion".into(), format!("{}/{}", ferrolb_crds::GROUP, ferrolb_crds::VERSION).into());
    ordered.insert("kind".into(), kind.into());
    if let Some(map) = value.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
        if let Some(metadata) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.retain(|_, v| !v.is_null());
        }
        ordered.extend(map.clone());
    }
    Ok(Value::Object(ordered))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetallbPoolSpec {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    auto_assign: Option<bool>,
    #[serde(default, rename = "avoidBuggyIPs")]
    avoid_buggy_ips: Option<bool>,
    #[serde(default)]
    service_allocation: Option<MetallbServiceAllocation>,
    /// Legacy `AddressPool` only.
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetallbServiceAllocation {
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    namespace_selectors: Vec<LabelSelector>,
    #[serde(default)]
    service_selectors: Vec<LabelSelector>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetallbL2AdvertisementSpec {
    #[serde(default)]
    ip_address_pools: Vec<String>,
    #[serde(default)]
    ip_address_pool_selectors: Vec<LabelSelector>,
    #[serde(default)]
    node_selectors: Vec<LabelSelector>,
    #[serde(default)]
    interfaces: Vec<String>,
}

/// The pre-0.13 ConfigMap's `config` key.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct LegacyConfig {
    #[serde(default)]
    address_pools: Vec<LegacyPool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct LegacyPool {
    name: String,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    auto_assign: Option<bool>,
    #[serde(default, rename = "avoid-buggy-ips")]
    avoid_buggy_ips: Option<bool>,
}

/// Converts every document of `input`.
pub fn migrate(input: &str) -> Result<Migration, MigrateError> {
    let mut migration = Migration::default();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let value = Value::deserialize(document).map_err(|source| MigrateError::Yaml { index: index + 1, source })?;
        if value.is_null() {
            continue;
        }
        convert(&value, &mut migration)?;
    }
    let mut names: Vec<&str> = migration.pools.iter().filter_map(|p| p.metadata.name.as_deref()).collect();
    names.sort_unstable();
    if let Some(duplicate) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(MigrateError::DuplicatePool(duplicate[0].to_string()));
    }
    Ok(migration)
}

fn convert(value: &Value, migration: &mut Migration) -> Result<(), MigrateError> {
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    let meta: Meta = field(value, "metadata", kind, "")?;
    let spec = value.get("spec").cloned().unwrap_or(Value::Null);
    let group = api_version.split('/').next().unwrap_or_default();
    match (group, kind) {
        ("metallb.io", "IPAddressPool") => {
            let spec: MetallbPoolSpec = parse(spec, kind, &meta.name)?;
            migration.pools.push(pool(&meta, &spec, kind)?);
        }
        ("metallb.io", "AddressPool") => {
            let spec: MetallbPoolSpec = parse(spec, kind, &meta.name)?;
            migration.pools.push(pool(&meta, &spec, kind)?);
            layer2_for_legacy(&meta.name, spec.protocol.as_deref(), migration);
        }
        ("metallb.io", "L2Advertisement") => {
            let spec: MetallbL2AdvertisementSpec = parse(spec, kind, &meta.name)?;
            migration.advertisements.push(L2Advertisement {
                metadata: object_meta(&meta),
                spec: L2AdvertisementSpec {
                    ip_address_pools: spec.ip_address_pools,
                    ip_address_pool_selectors: spec.ip_address_pool_selectors,
                    service_selectors: Vec::new(),
                    node_selectors: spec.node_selectors,
                    interfaces: spec.interfaces,
                },
            });
        }
        ("metallb.io", "BGPPeer" | "BGPAdvertisement" | "BFDProfile" | "Community") => migration.warnings.push(
            format!("{kind} {:?} left out: ferrolb announces on layer 2 (ARP/NDP) only, it has no BGP mode", meta.name),
        ),
        ("v1", "ConfigMap") if value.pointer("/data/config").is_some() => {
            let text = value.pointer("/data/config").and_then(Value::as_str).unwrap_or_default();
            let config: LegacyConfig = serde_yaml_ng::from_str(text).map_err(|e| MigrateError::Invalid {
                kind: "ConfigMap".into(),
                name: meta.name.clone(),
                problem: format!("its config is not MetalLB's legacy format: {e}"),
            })?;
            if config.address_pools.is_empty() {
                migration.warnings.push(format!("ConfigMap {:?} left out: no address-pools in its config", meta.name));
            }
            for legacy in config.address_pools {
                let legacy_meta = Meta { name: legacy.name.clone(), labels: BTreeMap::new() };
                let spec = MetallbPoolSpec {
                    addresses: legacy.addresses,
                    auto_assign: legacy.auto_assign,
                    avoid_buggy_ips: legacy.avoid_buggy_ips,
                    service_allocation: None,
                    protocol: legacy.protocol.clone(),
                };
                migration.pools.push(pool(&legacy_meta, &spec, "address-pool")?);
                layer2_for_legacy(&legacy.name, legacy.protocol.as_deref(), migration);
            }
        }
        _ => migration.warnings.push(format!(
            "{} {:?} ({}) left out: not MetalLB configuration",
            if kind.is_empty() { "a document" } else { kind },
            meta.name,
            if api_version.is_empty() { "no apiVersion" } else { api_version }
        )),
    }
    Ok(())
}

fn layer2_for_legacy(pool: &str, protocol: Option<&str>, migration: &mut Migration) {
    match protocol {
        Some("layer2") | None => migration.advertisements.push(L2Advertisement {
            metadata: ObjectMeta { name: Some(pool.to_string()), ..Default::default() },
            spec: L2AdvertisementSpec { ip_address_pools: vec![pool.to_string()], ..Default::default() },
        }),
        Some(other) => migration.warnings.push(format!(
            "pool {pool:?} was announced with {other}: converted, but not announced (ferrolb has no BGP mode); add an L2Advertisement to announce it on layer 2"
        )),
    }
}

fn pool(meta: &Meta, spec: &MetallbPoolSpec, kind: &str) -> Result<IPAddressPool, MigrateError> {
    let invalid = |problem: String| MigrateError::Invalid { kind: kind.into(), name: meta.name.clone(), problem };
    if meta.name.is_empty() {
        return Err(invalid("it has no name".into()));
    }
    if spec.addresses.is_empty() {
        return Err(invalid("it has no addresses".into()));
    }
    let mut addresses = Vec::new();
    for entry in &spec.addresses {
        // MetalLB allows spaces around a range's dash.
        let entry: String = entry.split('-').map(str::trim).collect::<Vec<_>>().join("-");
        ferrolb_crds::address::parse_entry(&entry).map_err(|e| invalid(e.to_string()))?;
        addresses.push(AddressEntry(entry));
    }
    Ok(IPAddressPool {
        metadata: object_meta(meta),
        spec: IPAddressPoolSpec {
            addresses,
            auto_assign: spec.auto_assign.unwrap_or(true),
            avoid_buggy_ips: spec.avoid_buggy_ips.unwrap_or(false),
            disabled: false,
            service_allocation: spec.service_allocation.as_ref().map(|a| ServiceAllocation {
                priority: a.priority,
                namespaces: a.namespaces.clone(),
                namespace_selectors: a.namespace_selectors.clone(),
                service_selectors: a.service_selectors.clone(),
            }),
        },
        status: None,
    })
}

/// Name and labels (pool selectors match on labels); the namespace goes, ferrolb's objects are cluster-scoped.
fn object_meta(meta: &Meta) -> ObjectMeta {
    ObjectMeta {
        name: Some(meta.name.clone()),
        labels: (!meta.labels.is_empty()).then(|| meta.labels.clone()),
        ..Default::default()
    }
}

fn field<T: serde::de::DeserializeOwned + Default>(
    value: &Value,
    key: &str,
    kind: &str,
    name: &str,
) -> Result<T, MigrateError> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => parse(v.clone(), kind, name),
    }
}

fn parse<T: serde::de::DeserializeOwned + Default>(value: Value, kind: &str, name: &str) -> Result<T, MigrateError> {
    if value.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(value).map_err(|e| MigrateError::Invalid {
        kind: kind.into(),
        name: name.into(),
        problem: format!("unexpected spec: {e}"),
    })
}

/// The namespaces the input's MetalLB objects were in (for the summary).
pub fn source_namespaces(input: &str) -> Vec<String> {
    let mut namespaces: Vec<String> = serde_yaml_ng::Deserializer::from_str(input)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter_map(|v| v.pointer("/metadata/namespace").and_then(Value::as_str).map(String::from))
        .collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
}
