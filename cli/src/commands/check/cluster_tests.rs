//! Each verdict from fixture objects, including what a workload could forge.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinitionCondition, CustomResourceDefinitionStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, MicroTime, Time};
use kube::api::ObjectMeta;
use policybind_engine::audit::{AuditSigningKey, KeyringEntry};
use policybind_engine::bundle::BundlePolicy;
use policybind_engine::bundle_codec::{DEFAULT_MAX_PART_BYTES, encode};
use policybind_operator::controllers::namespace::bundle_config_maps;
use policybind_operator::testing::{policy, rule};

use super::*;
use crate::commands::check::report::Verdict;

const HOME: &str = "policybind-system";
const LEASE: &str = "policybind-operator";

fn now() -> DateTime<Utc> {
    "2026-12-01T12:00:00Z".parse().unwrap()
}

fn jiff(t: DateTime<Utc>) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).unwrap()
}

fn established(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.status = Some(CustomResourceDefinitionStatus {
        conditions: Some(vec![CustomResourceDefinitionCondition {
            type_: "Established".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    crd
}

#[test]
fn crds_pass_when_every_kind_serves_the_version_and_name_the_missing_one() {
    let all: Vec<_> = policybind_crds::crds()
        .into_iter()
        .map(established)
        .collect();
    let lines = crd_lines(&all);
    assert_eq!(lines.len(), all.len());
    assert!(
        lines.iter().all(|l| l.verdict == Verdict::Pass),
        "{lines:?}"
    );

    let mut broken = all.clone();
    broken.remove(0);
    broken[0].spec.versions[0].served = false;
    broken[1].status = None;
    let lines = crd_lines(&broken);
    assert_eq!(
        lines[0].problem.as_deref(),
        Some("CRD aipolicies.policybind.io is not installed")
    );
    assert!(
        lines[0]
            .run
            .as_deref()
            .unwrap()
            .contains("kubectl apply --server-side")
    );
    assert_eq!(
        lines[1].problem.as_deref(),
        Some("version v1alpha1 of clusteraipolicies.policybind.io is not served")
    );
    assert!(
        lines[2]
            .problem
            .as_deref()
            .unwrap()
            .ends_with("is not Established")
    );
    assert!(lines[3..].iter().all(|l| l.verdict == Verdict::Pass));
}

fn lease(holder: &str, renewed: DateTime<Utc>) -> Lease {
    Lease {
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(jiff(renewed))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn the_lease_passes_only_while_renewed_within_its_duration() {
    let fresh = lease("operator-0", now() - Duration::seconds(4));
    let line = lease_line(Some(&fresh), HOME, LEASE, now());
    assert_eq!(line.verdict, Verdict::Pass);
    assert!(
        line.check.contains("operator-0, renewed 4s ago"),
        "{}",
        line.check
    );

    let stale = lease("operator-0", now() - Duration::seconds(60));
    let line = lease_line(Some(&stale), HOME, LEASE, now());
    assert_eq!(line.verdict, Verdict::Fail);
    assert!(
        line.problem
            .unwrap()
            .starts_with("operator-0 last renewed the Lease 60s ago")
    );

    let line = lease_line(None, HOME, LEASE, now());
    assert_eq!(line.verdict, Verdict::Fail);
    assert!(line.problem.unwrap().contains("does not exist"));
    let unheld = lease("", now());
    assert_eq!(
        lease_line(Some(&unheld), HOME, LEASE, now()).verdict,
        Verdict::Fail
    );
}

/// An AIPolicy in `ns` with its status as the operator writes it for `spec_of`.
fn reported_policy(ns: &str, name: &str, spec_of: &AIPolicy) -> AIPolicy {
    let mut p = policy(ns, name, vec![rule("r", "Deny", &["gpt-*"])]);
    p.metadata.generation = Some(2);
    p.status = Some(PolicyStatus {
        observed_generation: Some(2),
        fingerprint: Some(policy_fingerprint(&BundlePolicy::from_ai_policy(spec_of))),
        ..Default::default()
    });
    p
}

fn bundle_of(
    ns: &str,
    policies: &[AIPolicy],
    max_part: usize,
    written: DateTime<Utc>,
) -> Vec<ConfigMap> {
    let bundle = Bundle {
        namespace: Some(ns.into()),
        policies: policies.iter().map(BundlePolicy::from_ai_policy).collect(),
        ..Default::default()
    };
    let mut cms = bundle_config_maps(HOME, ns, None, &encode(&bundle, max_part));
    for cm in &mut cms {
        cm.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            time: Some(Time(jiff(written))),
            ..Default::default()
        }]);
    }
    cms
}

fn state_with(policies: Vec<AIPolicy>, bundles: Vec<ConfigMap>) -> ClusterState {
    ClusterState {
        now: now(),
        home: HOME.into(),
        enforced: ["team-a".to_string()].into(),
        policies,
        bundles,
        ..Default::default()
    }
}

#[test]
fn a_bundle_carrying_the_reported_policy_versions_passes() {
    let p = policy("team-a", "no-gpt", vec![rule("r", "Deny", &["gpt-*"])]);
    let reported = reported_policy("team-a", "no-gpt", &p);
    let state = state_with(
        vec![reported],
        bundle_of("team-a", &[p], DEFAULT_MAX_PART_BYTES, now()),
    );
    let lines = bundle_lines(&state);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].verdict, Verdict::Pass, "{lines:?}");
    assert!(lines[0].check.contains("(sha256:"), "{}", lines[0].check);
}

#[test]
fn a_deleted_bundle_is_a_failure_naming_the_config_map() {
    let state = state_with(vec![], vec![]);
    let line = &bundle_lines(&state)[0];
    assert_eq!(line.verdict, Verdict::Fail);
    assert_eq!(
        line.problem.as_deref(),
        Some(
            "bundle policybind-system/policybind-bundle.team-a: ConfigMap policybind-bundle.team-a is missing: new sidecars in team-a cannot start and fail closed"
        )
    );
    assert!(
        line.run
            .as_deref()
            .unwrap()
            .starts_with("kubectl -n policybind-system get configmap policybind-bundle.team-a")
    );
}

#[test]
fn a_bundle_behind_the_newest_policy_version_is_stale() {
    let old = policy("team-a", "no-gpt", vec![rule("r", "Deny", &["gpt-*"])]);
    let new = policy(
        "team-a",
        "no-gpt",
        vec![rule("r", "Deny", &["gpt-*", "claude-*"])],
    );
    let state = state_with(
        vec![reported_policy("team-a", "no-gpt", &new)],
        bundle_of("team-a", &[old], DEFAULT_MAX_PART_BYTES, now()),
    );
    let line = &bundle_lines(&state)[0];
    assert_eq!(line.verdict, Verdict::Fail);
    assert!(
        line.problem
            .as_deref()
            .unwrap()
            .contains("is stale: it carries another version of AIPolicy team-a/no-gpt"),
        "{line:?}"
    );

    let missing = state_with(
        vec![reported_policy("team-a", "no-gpt", &new)],
        bundle_of("team-a", &[], DEFAULT_MAX_PART_BYTES, now()),
    );
    assert!(
        bundle_lines(&missing)[0]
            .problem
            .as_deref()
            .unwrap()
            .contains("does not carry AIPolicy team-a/no-gpt")
    );
}

#[test]
fn a_policy_not_yet_compiled_is_a_warning() {
    let p = policy("team-a", "no-gpt", vec![rule("r", "Deny", &["gpt-*"])]);
    let mut reported = reported_policy("team-a", "no-gpt", &p);
    reported.metadata.generation = Some(3);
    let state = state_with(
        vec![reported],
        bundle_of("team-a", &[p], DEFAULT_MAX_PART_BYTES, now()),
    );
    let line = &bundle_lines(&state)[0];
    assert_eq!(line.verdict, Verdict::Warn);
    assert!(
        line.problem
            .as_deref()
            .unwrap()
            .contains("newest generation of AIPolicy team-a/no-gpt")
    );
}

#[test]
fn edited_content_and_missing_parts_are_refused_as_a_sidecar_would() {
    let p = policy("team-a", "no-gpt", vec![rule("r", "Deny", &["gpt-*"])]);
    let mut edited = bundle_of(
        "team-a",
        std::slice::from_ref(&p),
        DEFAULT_MAX_PART_BYTES,
        now(),
    );
    let data = edited[0].data.as_mut().unwrap();
    let json = data.get_mut(keys::BUNDLE_JSON).unwrap();
    *json = json.replace("gpt-*", "gpt-5");
    let problem = read_bundle(&edited, "team-a").unwrap_err();
    assert!(problem.contains("its content has fingerprint"), "{problem}");

    let mut split = bundle_of("team-a", &[p], 64, now());
    assert!(split.len() > 2, "the fixture is split into parts");
    split.remove(1);
    let problem = read_bundle(&split, "team-a").unwrap_err();
    assert!(
        problem.starts_with("part policybind-bundle.team-a.1 of"),
        "{problem}"
    );
}

fn injected_pod(ns: &str, name: &str) -> PartialObjectMeta<Pod> {
    PartialObjectMeta {
        types: None,
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        _phantom: Default::default(),
    }
}

fn usage_report(ns: &str, pod: &str, writer: &str, fingerprint: Option<&str>) -> ConfigMap {
    let mut cm = policybind_sidecar::usage::report_config_map(ns, pod, "{}".into(), None);
    cm.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(labels::WRITER_POD.into(), writer.into());
    cm.metadata.annotations = fingerprint
        .map(|f| BTreeMap::from([(annotations::FINGERPRINT.to_string(), f.to_string())]));
    cm
}

fn sidecar_state(written: DateTime<Utc>, reports: Vec<ConfigMap>) -> (ClusterState, String) {
    let p = policy("team-a", "no-gpt", vec![rule("r", "Deny", &["gpt-*"])]);
    let mut state = state_with(
        vec![],
        bundle_of("team-a", &[p], DEFAULT_MAX_PART_BYTES, written),
    );
    let current = read_bundle(&state.bundles, "team-a").unwrap().fingerprint;
    state.pods = vec![
        injected_pod("team-a", "bot-1"),
        injected_pod("team-a", "bot-2"),
    ];
    state.usage_reports = reports;
    (state, current)
}

#[test]
fn sidecars_on_the_current_bundle_pass() {
    let (mut state, current) = sidecar_state(now() - Duration::hours(1), vec![]);
    state.usage_reports = vec![
        usage_report("team-a", "bot-1", "bot-1", Some(&current)),
        usage_report("team-a", "bot-2", "bot-2", Some(&current)),
    ];
    let lines = sidecar_lines(&state);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].verdict, Verdict::Pass, "{lines:?}");
    assert!(
        lines[0]
            .check
            .starts_with("2 sidecar(s) in team-a run bundle sha256:")
    );
}

#[test]
fn a_sidecar_behind_fails_after_the_grace_period_and_warns_within_it() {
    let old = "sha256:0000000000000000";
    for (written, verdict) in [
        (now() - Duration::hours(1), Verdict::Fail),
        (now() - Duration::seconds(10), Verdict::Warn),
    ] {
        let (mut state, current) = sidecar_state(written, vec![]);
        state.usage_reports = vec![
            usage_report("team-a", "bot-1", "bot-1", Some(&current)),
            usage_report("team-a", "bot-2", "bot-2", Some(old)),
        ];
        let line = &sidecar_lines(&state)[0];
        assert_eq!(line.verdict, verdict, "{line:?}");
        assert!(
            line.problem
                .as_deref()
                .unwrap()
                .starts_with("on an older bundle: bot-2 (sha256:000000000000)")
        );
    }
}

#[test]
fn a_report_written_under_another_pods_name_does_not_count_for_it() {
    let (mut state, current) = sidecar_state(now() - Duration::hours(1), vec![]);
    // bot-1 writes a report named after bot-2, claiming bot-2 is current.
    state.usage_reports = vec![
        usage_report("team-a", "bot-1", "bot-1", Some(&current)),
        usage_report("team-a", "bot-2", "bot-1", Some(&current)),
    ];
    let line = &sidecar_lines(&state)[0];
    assert_eq!(line.verdict, Verdict::Warn);
    assert!(
        line.problem
            .as_deref()
            .unwrap()
            .contains("no usage report naming a bundle yet from: bot-2")
    );
}

fn keyring(entries: &[(&[&str], bool)]) -> ConfigMap {
    let mut document = KeyringDocument::default();
    for (index, (writers, retired)) in entries.iter().enumerate() {
        let key = AuditSigningKey::from_seed(&[index as u8 + 1; 32]).verifying_key();
        let mut entry =
            KeyringEntry::new(&key, writers.iter().map(|w| w.to_string()).collect(), now())
                .unwrap();
        entry.retired_at = retired.then(now);
        document.keys.push(entry);
    }
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(names::AUDIT_KEYRING.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            keys::AUDIT_KEYRING.to_string(),
            document.to_json(),
        )])),
        ..Default::default()
    }
}

#[test]
fn the_keyring_must_hold_a_key_in_use_for_every_writer() {
    let mut state = state_with(vec![], vec![]);
    state.keyring = Some(keyring(&[
        (&["operator/*"], false),
        (&["webhook/*"], false),
        (&["sidecar/team-a/*", "gateway/team-a/*"], false),
    ]));
    let lines = audit_lines(&state);
    assert_eq!(lines.len(), 4);
    assert!(
        lines.iter().all(|l| l.verdict == Verdict::Pass),
        "{lines:?}"
    );

    state.keyring = Some(keyring(&[
        (&["operator/*"], false),
        (&["webhook/*"], false),
        (&["sidecar/team-a/*"], true),
    ]));
    let lines = audit_lines(&state);
    assert_eq!(lines[3].verdict, Verdict::Fail);
    assert!(
        lines[3]
            .problem
            .as_deref()
            .unwrap()
            .starts_with("no key in use is bound to sidecar/team-a/*")
    );

    state.keyring = None;
    assert_eq!(audit_lines(&state)[0].verdict, Verdict::Fail);
    let mut garbage = keyring(&[]);
    garbage.data = Some(BTreeMap::from([(
        keys::AUDIT_KEYRING.to_string(),
        "{not json".to_string(),
    )]));
    state.keyring = Some(garbage);
    assert!(
        audit_lines(&state)[0]
            .problem
            .as_deref()
            .unwrap()
            .starts_with("the keyring does not parse")
    );
}
