//! Who may read `/metrics`. The speaker runs on the host network, so anything else there (any hostNetwork
//! pod) could read its metrics, and through them the cluster's Services, VIPs and nodes. With
//! [`MetricsAccess::Kubernetes`] a scrape must carry a bearer token that the API server authenticates
//! (TokenReview) and authorises for `get` on the non-resource URL `/metrics` (SubjectAccessReview), as
//! kube-rbac-proxy checks for MetalLB. The health endpoints stay open: kubelets probe them without a token.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

/// The clap value of `--metrics-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsAuth {
    /// Anyone who reaches the port reads the metrics.
    None,
    /// A bearer token authorised for `get /metrics` (TokenReview + SubjectAccessReview).
    Kubernetes,
}

/// How `/metrics` is guarded.
#[derive(Clone)]
pub enum MetricsAccess {
    Open,
    Kubernetes(std::sync::Arc<TokenAuthorizer>),
}

impl MetricsAccess {
    pub fn new(auth: MetricsAuth, client: &kube::Client) -> Self {
        match auth {
            MetricsAuth::None => Self::Open,
            MetricsAuth::Kubernetes => Self::Kubernetes(std::sync::Arc::new(TokenAuthorizer::new(client.clone()))),
        }
    }
}

/// What the API server said of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No token, or one the API server does not accept (401).
    Unauthenticated(String),
    /// A valid token whose user may not `get /metrics` (403).
    Forbidden(String),
}

#[derive(Debug, thiserror::Error)]
#[error("asking the API server about the token: {0}")]
pub struct ReviewError(#[from] kube::Error);

/// An allowed token is trusted this long, so a scrape every few seconds costs two API calls a minute, not
/// two a scrape; a refusal is kept shorter, so a newly granted scraper is let in within seconds.
const ALLOWED_TTL: Duration = Duration::from_secs(60);
const REFUSED_TTL: Duration = Duration::from_secs(10);
/// At most this many tokens are remembered: random tokens sent by a stranger cannot grow the cache unbounded.
const MAX_REMEMBERED: usize = 256;
/// At most this many reviews are asked of the API server at once; more scrapes wait for a free one, so a
/// flood of made-up tokens costs the API server a bounded load.
const CONCURRENT_REVIEWS: usize = 4;
/// Longer tokens are refused unread (ServiceAccount tokens are about 1 KiB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

pub struct TokenAuthorizer {
    client: kube::Client,
    /// By a keyed hash of the token (the token itself is never kept; the key is this process's own).
    verdicts: Mutex<HashMap<u64, (Verdict, Instant)>>,
    seed: u64,
    reviews: tokio::sync::Semaphore,
}

impl TokenAuthorizer {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            verdicts: Mutex::new(HashMap::new()),
            seed: std::collections::hash_map::RandomState::new().hash_one(0u8),
            reviews: tokio::sync::Semaphore::new(CONCURRENT_REVIEWS),
        }
    }

    /// The verdict for the `Authorization` header's value, if any.
    pub async fn check(&self, authorization: Option<&str>) -> Result<Verdict, ReviewError> {
        let Some(token) = bearer_token(authorization) else {
            return Ok(Verdict::Unauthenticated("a bearer token is required (Authorization: Bearer ...)".into()));
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Ok(Verdict::Unauthenticated("the token is too long".into()));
        }
        let key = xxhash_rust::xxh3::xxh3_64_with_seed(token.as_bytes(), self.seed);
        if let Some(verdict) = self.remembered(key) {
            return Ok(verdict);
        }
        // The permit is never closed; should it be, reviewing without one is still correct.
        let _permit = self.reviews.acquire().await.ok();
        // Another scrape with the same token may have been reviewed while this one waited.
        if let Some(verdict) = self.remembered(key) {
            return Ok(verdict);
        }
        let verdict = self.review(token).await?;
        self.remember(key, verdict.clone());
        Ok(verdict)
    }

    fn remembered(&self, key: u64) -> Option<Verdict> {
        let verdicts = self.verdicts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        verdicts.get(&key).filter(|(verdict, at)| fresh(verdict, *at)).map(|(verdict, _)| verdict.clone())
    }

    fn remember(&self, key: u64, verdict: Verdict) {
        let mut verdicts = self.verdicts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        verdicts.retain(|_, (verdict, at)| fresh(verdict, *at));
        if verdicts.len() >= MAX_REMEMBERED {
            // Refusals go first: a stranger's made-up tokens must not evict the scraper's allowed verdict.
            verdicts.retain(|_, (verdict, _)| *verdict == Verdict::Allowed);
        }
        if verdicts.len() >= MAX_REMEMBERED {
            verdicts.clear();
        }
        verdicts.insert(key, (verdict, Instant::now()));
    }

    async fn review(&self, token: &str) -> Result<Verdict, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_string(), ..Default::default() },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone()).create(&PostParams::default(), &review).await?;
        let status = reviewed.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            let why = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "the token is not valid".into());
            return Ok(Verdict::Unauthenticated(why));
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".into()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let decided =
            Api::<SubjectAccessReview>::all(self.client.clone()).create(&PostParams::default(), &access).await?;
        let name = user.username.unwrap_or_default();
        Ok(match decided.status {
            Some(status) if status.allowed => Verdict::Allowed,
            _ => Verdict::Forbidden(format!(
                "{name} may not get /metrics (grant the ferrolb metrics-reader ClusterRole)"
            )),
        })
    }
}

fn fresh(verdict: &Verdict, at: Instant) -> bool {
    at.elapsed() < if *verdict == Verdict::Allowed { ALLOWED_TTL } else { REFUSED_TTL }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive, RFC 6750).
pub fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline_authorizer() -> TokenAuthorizer {
        // Nothing listens there: a test that reached the API server would fail.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        TokenAuthorizer::new(kube::Client::try_from(config).unwrap())
    }

    #[tokio::test]
    async fn a_stranger_cannot_evict_the_scrapers_verdict_or_send_huge_tokens() {
        let authorizer = offline_authorizer();
        authorizer.remember(1, Verdict::Allowed);
        for key in 2..(MAX_REMEMBERED as u64 * 3) {
            authorizer.remember(key, Verdict::Unauthenticated("made up".into()));
        }
        assert_eq!(authorizer.remembered(1), Some(Verdict::Allowed));
        assert!(authorizer.verdicts.lock().unwrap().len() <= MAX_REMEMBERED);

        let huge = format!("Bearer {}", "x".repeat(MAX_TOKEN_BYTES + 1));
        let verdict = authorizer.check(Some(&huge)).await.unwrap();
        assert_eq!(verdict, Verdict::Unauthenticated("the token is too long".into()));
        assert!(matches!(authorizer.check(None).await.unwrap(), Verdict::Unauthenticated(_)));
    }

    #[test]
    fn only_a_bearer_token_is_taken() {
        assert_eq!(bearer_token(Some("Bearer abc.def")), Some("abc.def"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("Basic dXNlcjpwdw==")), None);
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(Some("Bearer")), None);
        assert_eq!(bearer_token(None), None);
    }
}
