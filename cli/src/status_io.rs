//! `ferrolb status`'s reads from the API (the report itself is `ferrolb_cli::status`, pure).

use std::path::PathBuf;

use anyhow::Context;
use ferrolb_cli::status::{self, Snapshot};
use ferrolb_crds::{IPAddressPool, L2Advertisement, L2Announcement, SpeakerStatus, reason};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub struct Access {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub install_namespace: String,
}

async fn client(access: &Access) -> anyhow::Result<(kube::Client, String)> {
    let options = KubeConfigOptions { context: access.context.clone(), ..Default::default() };
    let config = match &access.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options).await?
        }
        None if access.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig (KUBECONFIG, ~/.kube/config) or in-cluster config")?,
    };
    let namespace = config.default_namespace.clone();
    Ok((kube::Client::try_from(config)?, namespace))
}

/// The report, as text or JSON.
pub async fn report(
    access: &Access,
    service: Option<&str>,
    (class, ignore_unset_class): (String, bool),
    json: bool,
) -> anyhow::Result<String> {
    let (client, default_namespace) = client(access).await?;
    let install = access.install_namespace.as_str();
    let everything = ListParams::default();
    let mut lister = Lister::default();
    let mut snapshot = Snapshot {
        pools: lister.list(Api::<IPAddressPool>::all(client.clone()), &everything, "IPAddressPools").await?,
        advertisements: lister
            .list(Api::<L2Advertisement>::all(client.clone()), &everything, "L2Advertisements")
            .await?,
        bgp_advertisements: lister
            .list(Api::<ferrolb_crds::BGPAdvertisement>::all(client.clone()), &everything, "BGPAdvertisements")
            .await?,
        speakers: lister
            .list(Api::<SpeakerStatus>::namespaced(client.clone(), install), &everything, "SpeakerStatuses")
            .await?,
        announcements: lister
            .list(Api::<L2Announcement>::namespaced(client.clone(), install), &everything, "L2Announcements")
            .await?,
        class,
        ignore_unset_class,
        ..Default::default()
    };
    let text = match service {
        Some(target) => {
            let (namespace, name) = target.split_once('/').unwrap_or((default_namespace.as_str(), target));
            let services: Api<Service> = Api::namespaced(client.clone(), namespace);
            let object = services
                .get_opt(name)
                .await
                .with_context(|| format!("reading Service {namespace}/{name}"))?
                .with_context(|| format!("there is no Service {namespace}/{name}"))?;
            let slices = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
            snapshot.endpoint_slices = lister
                .list(Api::<EndpointSlice>::namespaced(client.clone(), namespace), &slices, "EndpointSlices")
                .await?;
            let announcing = ListParams::default().labels(&format!(
                "{}={namespace},{}={name}",
                ferrolb_crds::bgp_announcement::SERVICE_NAMESPACE_LABEL,
                ferrolb_crds::bgp_announcement::SERVICE_NAME_LABEL
            ));
            let bgp_announcements = Api::<ferrolb_crds::BGPAnnouncement>::namespaced(client.clone(), install);
            snapshot.bgp_announcements = lister.list(bgp_announcements, &announcing, "BGPAnnouncements").await?;
            let about = ListParams::default().fields(&format!("regarding.kind=Service,regarding.name={name}"));
            snapshot.events =
                lister.list(Api::<Event>::namespaced(client.clone(), namespace), &about, "Events").await?;
            snapshot.unreadable = lister.unreadable;
            let report = status::service_report(&object, &snapshot);
            if json { serde_json::to_string_pretty(&report)? + "\n" } else { report.to_text() }
        }
        None => {
            let speakers = ListParams::default().labels("app.kubernetes.io/component=speaker");
            snapshot.speaker_pods =
                lister.list(Api::<Pod>::namespaced(client.clone(), install), &speakers, "speaker pods").await?;
            let conflicts = ListParams::default().fields(&format!("reason={}", reason::IP_CONFLICT));
            snapshot.events = lister.list(Api::<Event>::all(client.clone()), &conflicts, "IPConflict Events").await?;
            snapshot.unreadable = lister.unreadable;
            let report = status::cluster_report(&snapshot);
            if json { serde_json::to_string_pretty(&report)? + "\n" } else { report.to_text() }
        }
    };
    Ok(text)
}

/// Lists objects, noting what these credentials may not read (or what is not installed) instead of failing:
/// the report says what it could not see.
#[derive(Default)]
struct Lister {
    unreadable: Vec<String>,
}

impl Lister {
    async fn list<K>(&mut self, api: Api<K>, params: &ListParams, what: &str) -> anyhow::Result<Vec<K>>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match api.list(params).await {
            Ok(list) => Ok(list.items),
            Err(kube::Error::Api(status)) if status.code == 403 || status.code == 404 => {
                self.unreadable.push(format!("{what}: {}", status.message));
                Ok(Vec::new())
            }
            Err(e) => Err(e).with_context(|| format!("listing {what}")),
        }
    }
}
