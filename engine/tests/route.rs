//! Model routes: the registry tells the enforcement point where a model's
//! requests go and which Secret holds the provider key, never the key itself.

mod support;

use policybind_crds::{ProviderCredentials, SecretKeyRef};
use policybind_engine::PolicySet;
use support::*;

#[test]
fn a_model_route_gives_provider_endpoint_and_secret_reference_by_name_and_alias() {
    let mut bundle = bundle(vec![]);
    let gpt = &mut bundle.models[0];
    gpt.spec.aliases = vec!["gpt-4o-2024-08-06".into()];
    gpt.spec.endpoint = Some("https://api.openai.com/v1".into());
    gpt.spec.credentials = Some(ProviderCredentials {
        secret_ref: SecretKeyRef {
            name: "openai".into(),
            key: "api-key".into(),
        },
    });
    let set = PolicySet::compile(&bundle).unwrap();
    for name in ["gpt-4o", "gpt-4o-2024-08-06"] {
        let route = set.model_route(name, "ns").unwrap();
        assert_eq!(route.deployment, "ai/gpt-4o");
        assert_eq!(route.provider, "openai");
        assert_eq!(route.endpoint, Some("https://api.openai.com/v1"));
        assert_eq!(route.credentials.unwrap().name, "openai");
    }
    let llama = set.model_route("llama", "ns").unwrap();
    assert_eq!((llama.provider, llama.endpoint), ("self-hosted", None));
    assert!(llama.credentials.is_none());
    assert!(set.model_route("unregistered", "ns").is_none());
}
