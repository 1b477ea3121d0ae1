//! `L2Announcement`: written by the speaker that owns a Service's VIPs, in the install namespace (so speakers
//! need no cluster-wide write rights). `kubectl get l2announcements` answers "which node holds my VIP?".

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "L2Announcement",
    plural = "l2announcements",
    shortname = "flbl2ann",
    category = "ferrolb",
    namespaced,
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service.name"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.service.namespace","priority":1}"#,
    printcolumn = r#"{"name":"IPs","type":"string","jsonPath":".spec.ips"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Interfaces","type":"string","jsonPath":".spec.interfaces"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct L2AnnouncementSpec {
    pub service: ServiceReference,
    /// The VIPs announced, IPv4 first.
    pub ips: Vec<String>,
    /// The node answering for them.
    pub node: String,
    /// The interfaces they are announced on.
    #[serde(default)]
    pub interfaces: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub struct ServiceReference {
    pub namespace: String,
    pub name: String,
}
