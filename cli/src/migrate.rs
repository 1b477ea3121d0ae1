//! MetalLB configuration → ferrolb's. Reads every document of the input — YAML or JSON, several documents,
//! and `kind: List` as `kubectl get -o yaml|json` prints it — and converts what has a ferrolb equivalent:
//! - `metallb.io` `IPAddressPool` → `ferrolb.io/v1alpha1` `IPAddressPool` (cluster-scoped: the namespace is
//!   dropped; addresses, autoAssign, avoidBuggyIPs and serviceAllocation are kept as they are, with the same
//!   meaning, priorities included: lower first);
//! - `metallb.io` `L2Advertisement` → `L2Advertisement` (pools, pool selectors, service selectors, node
//!   selectors, interfaces);
//! - the legacy `metallb.io/v1beta1` `AddressPool`, and the pre-0.13 `config` ConfigMap's `address-pools`, →
//!   a pool, plus an L2Advertisement for it when its protocol is layer2;
//! - `BGPPeer`, `BFDProfile`, `BGPAdvertisement` (and the `Community` aliases they use): see
//!   [`crate::migrate_bgp`].
//!
//! MetalLB's objects are namespaced, ferrolb's cluster-scoped: a name used in several namespaces becomes
//! `<namespace>-<name>` (references from advertisements follow), never a collision.
//!
//! What cannot be carried over — a field ferrolb has no equivalent for, a password written in a BGPPeer — is listed in
//! [`Migration::unconverted`], naming the object and the field; the CLI refuses to print a partial result
//! unless told `--allow-partial`. Documents that are not MetalLB's are left out with a warning. Every address is
//! checked with the same parser the controller uses, so an entry ferrolb would refuse is an error here, naming
//! the object and the entry. Services need no change: ferrolb honours MetalLB's `metallb.io/*` and
//! `metallb.universe.tf/*` annotations.

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
}

/// The converted objects, and what was left out or changed, for the user to read.
#[derive(Debug, Default)]
pub struct Migration {
    pub pools: Vec<IPAddressPool>,
    pub advertisements: Vec<L2Advertisement>,
    pub bgp_peers: Vec<ferrolb_crds::BGPPeer>,
    pub bfd_profiles: Vec<ferrolb_crds::BFDProfile>,
    pub bgp_advertisements: Vec<ferrolb_crds::BGPAdvertisement>,
    /// MetalLB configuration that has no ferrolb equivalent: applying the rest would change what is
    /// allocated or announced, so this is an error unless the user accepts a partial migration.
    pub unconverted: Vec<String>,
    /// What was changed or left out without loss (renames, documents that are not MetalLB's).
    pub warnings: Vec<String>,
}

impl Migration {
    /// The ferrolb objects as one multi-document YAML stream, pools first.
    pub fn to_yaml(&self) -> Result<String, serde_yaml_ng::Error> {
        let mut out = String::from("# Converted from MetalLB configuration by `ferrolb migrate`.\n");
        documents(&mut out, "IPAddressPool", &self.pools)?;
        documents(&mut out, "L2Advertisement", &self.advertisements)?;
        documents(&mut out, "BFDProfile", &self.bfd_profiles)?;
        documents(&mut out, "BGPPeer", &self.bgp_peers)?;
        documents(&mut out, "BGPAdvertisement", &self.bgp_advertisements)?;
        Ok(out)
    }
}

/// Appends each of `objects` as a YAML document of `kind`.
fn documents(out: &mut String, kind: &str, objects: &[impl serde::Serialize]) -> Result<(), serde_yaml_ng::Error> {
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&typed(kind, object)?)?);
    }
    Ok(())
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
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl Meta {
    /// `namespace/name` (or `name`), as messages name the object.
    fn shown(&self) -> String {
        if self.namespace.is_empty() { self.name.clone() } else { format!("{}/{}", self.namespace, self.name) }
    }
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
    service_selectors: Vec<LabelSelector>,
    #[serde(default)]
    node_selectors: Vec<LabelSelector>,
    #[serde(default)]
    interfaces: Vec<String>,
}

/// The spec fields ferrolb carries over, per MetalLB kind; any other field is reported as unconverted.
const POOL_FIELDS: &[&str] = &["addresses", "autoAssign", "avoidBuggyIPs", "serviceAllocation"];
const LEGACY_POOL_FIELDS: &[&str] = &["addresses", "autoAssign", "avoidBuggyIPs", "protocol"];
const ALLOCATION_FIELDS: &[&str] = &["priority", "namespaces", "namespaceSelectors", "serviceSelectors"];
const L2_FIELDS: &[&str] =
    &["ipAddressPools", "ipAddressPoolSelectors", "serviceSelectors", "nodeSelectors", "interfaces"];

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
    let mut converted = Converted::default();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let value = Value::deserialize(document).map_err(|source| MigrateError::Yaml { index: index + 1, source })?;
        for object in expand_lists(value) {
            convert(&object, &mut converted, &mut migration)?;
        }
    }
    converted.finish(&mut migration);
    Ok(migration)
}

/// The objects of a document: itself, or the items of a `List` (`kubectl get -o yaml` prints one, nested
/// lists included).
fn expand_lists(value: Value) -> Vec<Value> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind.ends_with("List")
        && let Some(items) = value.get("items").and_then(Value::as_array)
    {
        return items.iter().cloned().flat_map(expand_lists).collect();
    }
    if value.is_null() { Vec::new() } else { vec![value] }
}

/// Objects converted so far, with the namespace they came from, before names are made cluster-wide.
#[derive(Default)]
struct Converted {
    pools: Vec<(String, IPAddressPool)>,
    advertisements: Vec<(String, L2Advertisement)>,
    bgp: crate::migrate_bgp::ConvertedBgp,
}

impl Converted {
    /// Gives every object a cluster-wide name: its own where no other namespace uses it, else
    /// `<namespace>-<name>`; advertisements' pool references follow their namespace's renames.
    fn finish(self, migration: &mut Migration) {
        let pool_names = cluster_names(self.pools.iter().map(|(ns, p)| (ns.as_str(), name_of(&p.metadata))));
        let advertisement_names =
            cluster_names(self.advertisements.iter().map(|(ns, a)| (ns.as_str(), name_of(&a.metadata))));
        let namespaces: std::collections::BTreeSet<String> = self.pools.iter().map(|(ns, _)| ns.clone()).collect();
        for (namespace, mut pool) in self.pools {
            let old = name_of(&pool.metadata).to_string();
            let new = pool_names[&(namespace.clone(), old.clone())].clone();
            if new != old {
                migration.warnings.push(format!(
                    "IPAddressPool {namespace}/{old} is named {new:?}: the name is used in several namespaces and ferrolb's pools are cluster-scoped"
                ));
            }
            pool.metadata.name = Some(new);
            migration.pools.push(pool);
        }
        for (namespace, mut advertisement) in self.advertisements {
            let old = name_of(&advertisement.metadata).to_string();
            let new = advertisement_names[&(namespace.clone(), old.clone())].clone();
            if new != old {
                migration.warnings.push(format!(
                    "L2Advertisement {namespace}/{old} is named {new:?}: the name is used in several namespaces"
                ));
            }
            for reference in &mut advertisement.spec.ip_address_pools {
                if let Some(renamed) = pool_names.get(&(namespace.clone(), reference.clone())) {
                    *reference = renamed.clone();
                }
            }
            if namespaces.len() > 1 && !advertisement.spec.ip_address_pool_selectors.is_empty() {
                migration.warnings.push(format!(
                    "L2Advertisement {namespace}/{old} selects pools by label: it now sees the pools of every namespace ({}), not only its own",
                    namespaces.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
                ));
            }
            advertisement.metadata.name = Some(new);
            migration.advertisements.push(advertisement);
        }
        let bgp = self.bgp;
        let profile_names = cluster_names(bgp.profiles.iter().map(|(ns, p)| (ns.as_str(), name_of(&p.metadata))));
        let peer_names = cluster_names(bgp.peers.iter().map(|(ns, p)| (ns.as_str(), name_of(&p.metadata))));
        let bgp_names = cluster_names(bgp.advertisements.iter().map(|(ns, a, _)| (ns.as_str(), name_of(&a.metadata))));
        let renamed = |names: &BTreeMap<(String, String), String>, namespace: &str, name: &str| {
            names.get(&(namespace.to_string(), name.to_string())).cloned().unwrap_or_else(|| name.to_string())
        };
        let mut note_rename = |kind: &str, namespace: &str, old: &str, new: &str| {
            if new != old {
                migration
                    .warnings
                    .push(format!("{kind} {namespace}/{old} is named {new:?}: the name is used in several namespaces"));
            }
        };
        for (namespace, mut profile) in bgp.profiles {
            let old = name_of(&profile.metadata).to_string();
            let new = renamed(&profile_names, &namespace, &old);
            note_rename("BFDProfile", &namespace, &old, &new);
            profile.metadata.name = Some(new);
            migration.bfd_profiles.push(profile);
        }
        for (namespace, mut peer) in bgp.peers {
            let old = name_of(&peer.metadata).to_string();
            let new = renamed(&peer_names, &namespace, &old);
            note_rename("BGPPeer", &namespace, &old, &new);
            if let Some(profile) = peer.spec.bfd_profile.as_mut() {
                *profile = renamed(&profile_names, &namespace, profile);
            }
            peer.metadata.name = Some(new);
            migration.bgp_peers.push(peer);
        }
        for (namespace, mut advertisement, communities) in bgp.advertisements {
            let old = name_of(&advertisement.metadata).to_string();
            let new = renamed(&bgp_names, &namespace, &old);
            note_rename("BGPAdvertisement", &namespace, &old, &new);
            let shown = format!("{namespace}/{old}");
            crate::migrate_bgp::resolve_communities(
                &namespace,
                &shown,
                &communities,
                &bgp.aliases,
                &mut advertisement.spec,
                &mut migration.unconverted,
            );
            for reference in &mut advertisement.spec.ip_address_pools {
                *reference = renamed(&pool_names, &namespace, reference);
            }
            for reference in &mut advertisement.spec.peers {
                *reference = renamed(&peer_names, &namespace, reference);
            }
            advertisement.metadata.name = Some(new);
            migration.bgp_advertisements.push(advertisement);
        }
    }
}

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// (namespace, name) → a name unique across namespaces.
fn cluster_names<'a>(objects: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> BTreeMap<(String, String), String> {
    let mut namespaces_of: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for (namespace, name) in objects.clone() {
        namespaces_of.entry(name).or_default().insert(namespace);
    }
    let mut taken: std::collections::BTreeSet<String> = namespaces_of
        .iter()
        .filter(|(_, namespaces)| namespaces.len() == 1)
        .map(|(name, _)| name.to_string())
        .collect();
    let mut names = BTreeMap::new();
    for (namespace, name) in objects {
        let key = (namespace.to_string(), name.to_string());
        if names.contains_key(&key) {
            continue;
        }
        if namespaces_of[name].len() == 1 {
            names.insert(key, name.to_string());
            continue;
        }
        let base = if namespace.is_empty() { name.to_string() } else { format!("{namespace}-{name}") };
        let mut candidate = base.clone();
        let mut suffix = 2;
        while taken.contains(&candidate) {
            candidate = format!("{base}-{suffix}");
            suffix += 1;
        }
        taken.insert(candidate.clone());
        names.insert(key, candidate);
    }
    names
}

fn convert(value: &Value, converted: &mut Converted, migration: &mut Migration) -> Result<(), MigrateError> {
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    let meta: Meta = field(value, "metadata", kind, "")?;
    let spec = value.get("spec").cloned().unwrap_or(Value::Null);
    let group = api_version.split('/').next().unwrap_or_default();
    let shown = meta.shown();
    match (group, kind) {
        ("metallb.io", "IPAddressPool") => {
            unknown_fields(&spec, "spec", POOL_FIELDS, kind, &shown, &mut migration.unconverted);
            if let Some(allocation) = spec.get("serviceAllocation") {
                unknown_fields(
                    allocation,
                    "spec.serviceAllocation",
                    ALLOCATION_FIELDS,
                    kind,
                    &shown,
                    &mut migration.unconverted,
                );
            }
            let parsed: MetallbPoolSpec = parse(spec, kind, &shown)?;
            converted.pools.push((meta.namespace.clone(), pool(&meta, &parsed, kind)?));
        }
        ("metallb.io", "AddressPool") => {
            unknown_fields(&spec, "spec", LEGACY_POOL_FIELDS, kind, &shown, &mut migration.unconverted);
            let parsed: MetallbPoolSpec = parse(spec, kind, &shown)?;
            converted.pools.push((meta.namespace.clone(), pool(&meta, &parsed, kind)?));
            layer2_for_legacy(&meta, parsed.protocol.as_deref(), converted, migration);
        }
        ("metallb.io", "L2Advertisement") => {
            unknown_fields(&spec, "spec", L2_FIELDS, kind, &shown, &mut migration.unconverted);
            let parsed: MetallbL2AdvertisementSpec = parse(spec, kind, &shown)?;
            converted.advertisements.push((
                meta.namespace.clone(),
                L2Advertisement {
                    metadata: object_meta(&meta),
                    spec: L2AdvertisementSpec {
                        ip_address_pools: parsed.ip_address_pools,
                        ip_address_pool_selectors: parsed.ip_address_pool_selectors,
                        service_selectors: parsed.service_selectors,
                        node_selectors: parsed.node_selectors,
                        interfaces: parsed.interfaces,
                    },
                },
            ));
        }
        ("metallb.io", "BGPPeer" | "BFDProfile" | "BGPAdvertisement" | "Community") => {
            let source = crate::migrate_bgp::Source {
                kind,
                shown: &shown,
                namespace: &meta.namespace,
                metadata: object_meta(&meta),
                spec: &spec,
            };
            crate::migrate_bgp::convert(&source, &mut converted.bgp, &mut migration.unconverted)?;
        }
        ("metallb.io", _) => migration
            .unconverted
            .push(format!("{kind} {shown}: ferrolb has no equivalent; what it configured would no longer apply")),
        ("v1", "ConfigMap") if value.pointer("/data/config").is_some() => {
            let text = value.pointer("/data/config").and_then(Value::as_str).unwrap_or_default();
            let config: LegacyConfig = serde_yaml_ng::from_str(text).map_err(|e| MigrateError::Invalid {
                kind: "ConfigMap".into(),
                name: shown.clone(),
                problem: format!("its config is not MetalLB's legacy format: {e}"),
            })?;
            if config.address_pools.is_empty() {
                migration.warnings.push(format!("ConfigMap {shown} left out: no address-pools in its config"));
            }
            for legacy in config.address_pools {
                let legacy_meta =
                    Meta { name: legacy.name.clone(), namespace: meta.namespace.clone(), labels: BTreeMap::new() };
                let spec = MetallbPoolSpec {
                    addresses: legacy.addresses,
                    auto_assign: legacy.auto_assign,
                    avoid_buggy_ips: legacy.avoid_buggy_ips,
                    service_allocation: None,
                    protocol: legacy.protocol.clone(),
                };
                converted.pools.push((meta.namespace.clone(), pool(&legacy_meta, &spec, "address-pool")?));
                layer2_for_legacy(&legacy_meta, legacy.protocol.as_deref(), converted, migration);
            }
        }
        _ => migration.warnings.push(format!(
            "{} {shown:?} ({}) left out: not MetalLB configuration",
            if kind.is_empty() { "a document" } else { kind },
            if api_version.is_empty() { "no apiVersion" } else { api_version }
        )),
    }
    Ok(())
}

/// Reports every key of `object` ferrolb does not carry over, by its path.
pub(crate) fn unknown_fields(
    object: &Value,
    path: &str,
    known: &[&str],
    kind: &str,
    shown: &str,
    unconverted: &mut Vec<String>,
) {
    for key in object.as_object().into_iter().flat_map(|o| o.keys()) {
        if !known.contains(&key.as_str()) {
            unconverted.push(format!("{kind} {shown}: {path}.{key} has no ferrolb equivalent"));
        }
    }
}

fn layer2_for_legacy(pool: &Meta, protocol: Option<&str>, converted: &mut Converted, migration: &mut Migration) {
    let name = pool.name.clone();
    match protocol {
        Some("layer2") | None => converted.advertisements.push((
            pool.namespace.clone(),
            L2Advertisement {
                metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
                spec: L2AdvertisementSpec { ip_address_pools: vec![name], ..Default::default() },
            },
        )),
        Some(other) => migration.unconverted.push(format!(
            "address pool {}: it is announced with {other}; the pool is converted but nothing announces it until you write a BGPAdvertisement (and BGPPeers) for it",
            pool.shown()
        )),
    }
}

fn pool(meta: &Meta, spec: &MetallbPoolSpec, kind: &str) -> Result<IPAddressPool, MigrateError> {
    let invalid = |problem: String| MigrateError::Invalid { kind: kind.into(), name: meta.shown(), problem };
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

pub(crate) fn parse<T: serde::de::DeserializeOwned + Default>(
    value: Value,
    kind: &str,
    name: &str,
) -> Result<T, MigrateError> {
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
        .flat_map(expand_lists)
        .filter(|v| v.get("apiVersion").and_then(Value::as_str).is_some_and(|a| a.starts_with("metallb.io/")))
        .filter_map(|v| v.pointer("/metadata/namespace").and_then(Value::as_str).map(String::from))
        .collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
}
