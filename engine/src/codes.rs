//! Rationale codes: the stable strings every decision carries.
//!
//! These are API: callers branch on them (`error.code` in the sidecar's JSON
//! error, `x-policybind-codes`), dashboards group by them and auditors read them.
//! A code is never renamed or reused for another meaning. [`ALL`] is the one
//! table of them; the README's table is checked against it by a test.

/// A rationale code with its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeInfo {
    pub code: &'static str,
    /// The check that produces it.
    pub stage: &'static str,
    pub meaning: &'static str,
}

macro_rules! codes {
    ($( $name:ident = $stage:literal, $meaning:literal; )*) => {
        $( #[doc = $meaning] pub const $name: &str = stringify!($name); )*
        /// Every rationale code, in documentation order.
        pub const ALL: &[CodeInfo] = &[ $( CodeInfo { code: stringify!($name), stage: $stage, meaning: $meaning }, )* ];
    };
}

codes! {
    TOKEN_MISSING = "token", "The request carries no `Authorization: Bearer` token.";
    TOKEN_UNKNOWN = "token", "The token matches no AccessToken in the bundle.";
    TOKEN_NOT_YET_VALID = "token", "The token's `notBefore` is in the future.";
    TOKEN_EXPIRED = "token", "The token's `expiresAt` has passed.";
    TOKEN_REVOKED = "token", "The token was revoked.";
    TOKEN_NAMESPACE_NOT_ALLOWED = "token", "The token is not valid in the request's namespace: it is valid in its own namespace and in its `additionalNamespaces` only.";
    TOKEN_MODEL_NOT_ALLOWED = "token", "The model is not in the token's `allowedModels`.";
    USE_CASE_NOT_ALLOWED = "token", "The declared use case is not in the token's `allowedUseCases`.";
    DATA_CLASSIFICATION_EXCEEDED = "token", "The request's data classification is above the token's `maxDataClassification`.";
    OUTSIDE_SCHEDULE = "token", "The request falls outside the token's schedule (also the default code of rules with a schedule condition).";
    BUDGET_EXCEEDED = "token", "The estimated cost or tokens would exceed a budget of the current period: the token's own, or a per-token AIBudget's default (the message names it).";
    BUDGET_LEASE_UNAVAILABLE = "token", "The token has a budget and this replica holds no share of it that covers the request: the operator's ledger cannot be read (API server away, or not yet read since start) or granted no more in time. Fails closed; retry later.";
    BUDGET_STORE_UNAVAILABLE = "token", "The token has a budget or rate limit kept in the shared budget store (Redis) and the store could not be used: unreachable within 200 ms, or it holds values PolicyBind did not write. Fails closed; retry later.";
    RATE_LIMITED = "token", "The token's requests or tokens per minute are used up (also a per-token AIBudget's default rate limit).";
    NAMESPACE_BUDGET_EXCEEDED = "scope", "The estimated cost or tokens would exceed a budget of an AIBudget of scope Namespace (the message names it).";
    TEAM_BUDGET_EXCEEDED = "scope", "The estimated cost or tokens would exceed a budget of an AIBudget of scope Team.";
    APPLICATION_BUDGET_EXCEEDED = "scope", "The estimated cost or tokens would exceed a budget of an AIBudget of scope Application.";
    GROUP_BUDGET_EXCEEDED = "scope", "The estimated cost or tokens would exceed a budget of an AIBudget of scope Tokens (a label-selected group of tokens).";
    NAMESPACE_RATE_LIMITED = "scope", "The requests or tokens per minute of an AIBudget of scope Namespace are used up.";
    TEAM_RATE_LIMITED = "scope", "The requests or tokens per minute of an AIBudget of scope Team are used up.";
    APPLICATION_RATE_LIMITED = "scope", "The requests or tokens per minute of an AIBudget of scope Application are used up.";
    GROUP_RATE_LIMITED = "scope", "The requests or tokens per minute of an AIBudget of scope Tokens are used up.";
    MODEL_NOT_REGISTERED = "registry", "No ModelDeployment registers this model.";
    MODEL_SUSPENDED = "registry", "The ModelDeployment is suspended.";
    MODEL_NOT_APPROVED = "registry", "The ModelDeployment needs approval (risk High or Critical) and has none, or was rejected.";
    MODEL_DATA_CLASSIFICATION_EXCEEDED = "registry", "The request's data classification is above the model's `maxDataClassification`.";
    MODEL_USE_CASE_NOT_APPROVED = "registry", "The use case is not among the model's `useCases`.";
    POLICY_ALLOW = "policy", "Default code of a rule with action Allow.";
    POLICY_DENY = "policy", "Default code of a rule with action Deny.";
    PII_REDACTED = "policy", "Default code of a rule with action Redact.";
    APPROVAL_REQUIRED = "policy", "Default code of a rule with action RequireApproval.";
    POLICY_DEGRADE = "policy", "Default code of a rule with action Degrade.";
    PII_DETECTED = "detector", "Added to every decision whose prompt holds personal data (EMAIL, PHONE, US_SSN, CREDIT_CARD, IBAN, IP_ADDRESS) or a custom detector's entity, whatever decided.";
    SECRET_IN_PROMPT = "detector", "Added to every decision whose prompt holds a SECRET (API key, token, private key), whatever decided.";
    PROMPT_INJECTION_DETECTED = "detector", "Added to every decision whose prompt the PROMPT_INJECTION classifier flags, whatever decided.";
    APPROVAL_GRANTED = "policy", "A RequireApproval decision let through because the request carries an approved reference.";
    POLICY_EVALUATION_ERROR = "policy", "A rule's CEL expression failed at run time; the request is denied (fail closed).";
    RESPONSE_BLOCKED = "response", "Default code of a rule on Response with action Deny: the response is withheld (or the stream cut).";
    RESPONSE_REDACTED = "response", "Default code of a rule on Response with action Redact.";
    PII_IN_RESPONSE = "response", "Added to every output decision whose response holds personal data or a custom detector's entity.";
    SECRET_IN_RESPONSE = "response", "Added to every output decision whose response holds a SECRET.";
    PROMPT_INJECTION_IN_RESPONSE = "response", "Added to every output decision whose response the PROMPT_INJECTION classifier flags.";
    NO_MATCHING_POLICY = "default", "No rule matched; the default effect (Deny unless configured) applies.";
    NO_POLICY_SET = "enforcement", "The enforcement point has no valid policy set loaded; every request is denied.";
    AUDIT_UNAVAILABLE = "enforcement", "The audit trail cannot take the record; the request is denied rather than decided unrecorded.";
    REQUEST_INVALID = "enforcement", "The request body or headers could not be read (malformed JSON, unknown header value, too large).";
    PATH_NOT_ALLOWED = "enforcement", "The path is not one the sidecar forwards.";
    ROUTE_UNAVAILABLE = "enforcement", "The model cannot be reached from this enforcement point: no endpoint and no upstream, a provider it does not route to (bedrock, vertex), or a provider key Secret that cannot be read.";
}

/// The detector codes for what was found in a prompt, in table order:
/// [`PII_DETECTED`], [`SECRET_IN_PROMPT`], [`PROMPT_INJECTION_DETECTED`].
pub fn prompt_detector_codes(entities: &[&str]) -> Vec<&'static str> {
    detector_codes(
        entities,
        [PII_DETECTED, SECRET_IN_PROMPT, PROMPT_INJECTION_DETECTED],
    )
}

/// The detector codes for what was found in a response, in table order:
/// [`PII_IN_RESPONSE`], [`SECRET_IN_RESPONSE`], [`PROMPT_INJECTION_IN_RESPONSE`].
pub fn response_detector_codes(entities: &[&str]) -> Vec<&'static str> {
    detector_codes(
        entities,
        [
            PII_IN_RESPONSE,
            SECRET_IN_RESPONSE,
            PROMPT_INJECTION_IN_RESPONSE,
        ],
    )
}

/// `[personal data, secret, injection]` codes for the entities present.
fn detector_codes(
    entities: &[&str],
    [pii, secret, injection]: [&'static str; 3],
) -> Vec<&'static str> {
    let has = |wanted: fn(&str) -> bool| entities.iter().any(|e| wanted(e));
    let mut codes = Vec::with_capacity(3);
    if has(|e| e != "SECRET" && e != crate::detect::PROMPT_INJECTION) {
        codes.push(pii);
    }
    if has(|e| e == "SECRET") {
        codes.push(secret);
    }
    if has(|e| e == crate::detect::PROMPT_INJECTION) {
        codes.push(injection);
    }
    codes
}

/// Looks a code up in the table.
pub fn info(code: &str) -> Option<&'static CodeInfo> {
    ALL.iter().find(|c| c.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_upper_snake() {
        let mut seen = std::collections::HashSet::new();
        for c in ALL {
            assert!(seen.insert(c.code), "duplicate code {}", c.code);
            assert!(
                c.code
                    .chars()
                    .all(|ch| ch.is_ascii_uppercase() || ch == '_')
            );
        }
        assert_eq!(info(TOKEN_EXPIRED).unwrap().stage, "token");
    }

    #[test]
    fn each_kind_of_entity_has_its_own_detector_code() {
        assert_eq!(prompt_detector_codes(&[]), Vec::<&str>::new());
        assert_eq!(
            prompt_detector_codes(&["EMAIL", "PROJECT_CODE"]),
            [PII_DETECTED]
        );
        assert_eq!(
            prompt_detector_codes(&["PROMPT_INJECTION", "SECRET", "PHONE"]),
            [PII_DETECTED, SECRET_IN_PROMPT, PROMPT_INJECTION_DETECTED]
        );
        assert_eq!(response_detector_codes(&["SECRET"]), [SECRET_IN_RESPONSE]);
    }
}
