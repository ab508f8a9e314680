//! ModelDeployment: the registry entry for a model in use.

use chrono::{DateTime, NaiveDate, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{DataClassification, Pricing, RiskLevel};

/// A model this organisation uses: who owns it, what it may see, what it costs, how
/// risky it is. Requests and workloads naming an unregistered, unapproved or
/// suspended model are denied.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policybind.io",
    version = "v1alpha1",
    kind = "ModelDeployment",
    doc = "ModelDeployment: the registry entry of an AI model in use, with owner, data limits, pricing, risk, approval and review schedule.",
    plural = "modeldeployments",
    shortname = "md",
    shortname = "aimodel",
    category = "policybind",
    namespaced,
    status = "ModelDeploymentStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model"}"#,
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"Risk","type":"string","jsonPath":".status.riskLevel"}"#,
    printcolumn = r#"{"name":"Approval","type":"string","jsonPath":".status.approval"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspended"}"#,
    printcolumn = r#"{"name":"Scope","type":"string","jsonPath":".spec.scope","priority":1}"#,
    printcolumn = r#"{"name":"Next-Review","type":"date","jsonPath":".status.nextReviewAt","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentSpec {
    /// Provider: `openai`, `anthropic`, `azure-openai`, `bedrock`, `vertex`, or `self-hosted`
    /// (vLLM, TGI, Ollama, KServe in this cluster). External providers raise the risk score.
    #[schemars(length(min = 1, max = 63))]
    pub provider: String,
    /// Model id exactly as callers send it in the request body (`model`), e.g. `gpt-4o`.
    #[schemars(length(min = 1, max = 253))]
    pub model: String,
    /// Other names that refer to this model (e.g. dated snapshots).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub aliases: Vec<String>,
    /// Model version or snapshot, for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Base URL requests for this model are forwarded to, e.g. `https://api.openai.com/v1`,
    /// `https://api.anthropic.com`, `https://<resource>.openai.azure.com/openai/v1` or
    /// `http://vllm.team-a.svc:8000/v1`. The enforcement point appends the API path (a
    /// trailing `/v1` is not repeated). Unset: requests go to the enforcement point's
    /// `--upstream` (the injected sidecar's model container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 8, max = 2048),
        regex(pattern = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$")
    )]
    pub endpoint: Option<String>,
    /// The provider API key the enforcement point sends upstream for this model, in the
    /// provider's own header (OpenAI `Authorization: Bearer`, Anthropic `x-api-key`, Azure
    /// OpenAI `api-key`). Only the Secret reference is kept here and in policy bundles; the
    /// value is read from the Secret mounted into the gateway and never logged, audited,
    /// written to a status or returned to callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<ProviderCredentials>,
    /// Region the model runs in, e.g. `eu-west-1`; policies can match on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Accountable person or group (email or name).
    #[schemars(length(min = 1, max = 253))]
    pub owner: String,
    /// Team that owns the deployment.
    #[schemars(length(min = 1, max = 63))]
    pub team: String,
    /// Use cases this model is approved for. Empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub use_cases: Vec<String>,
    /// Highest data classification this model may receive. Default Internal.
    #[serde(default = "default_classification")]
    pub max_data_classification: DataClassification,
    /// Price per 1,000 tokens, used to estimate and settle cost against budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// Risk assessment: declared factors, or a manual level that overrides the score.
    #[serde(default)]
    pub risk: RiskAssessment,
    /// Days between reviews. Default 90. An overdue review makes the deployment non-compliant.
    #[serde(default = "default_review_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub review_interval_days: u32,
    /// When the model was last reviewed; the next review is due `reviewIntervalDays` later.
    /// Unset means counted from creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reviewed_at: Option<DateTime<Utc>>,
    /// Suspend the deployment automatically when its review is overdue.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend_when_review_overdue: bool,
    /// Pods serving this model (counted in status; admission checks their `policybind.io/model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<LabelSelector>,
    /// Stop all use at once: every bundle denies requests to this model with MODEL_SUSPENDED.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    /// Who may resolve this registration by its model name. `Namespace` (default): only
    /// requests and workloads in this namespace. `Cluster`: every namespace that has no
    /// registration of the same name of its own. Setting `Cluster` needs the `share` verb on
    /// `modeldeployments.policybind.io` (checked at admission), because a shared name decides
    /// where other teams' requests go.
    #[serde(default, skip_serializing_if = "ModelScope::is_namespace")]
    pub scope: ModelScope,
    /// What the model is for and under which rules: intended purpose, EU AI Act risk
    /// category, the parties that provide and deploy it, and the data it was built with and
    /// is fed. Compliance reports, model cards and evidence gates read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<Governance>,
    /// Evaluation results (quality, subgroup fairness delta, harmful-output rate, drift, ...),
    /// each with metric, value, dataset, date and source. Evidence gates (kind EvidenceGate)
    /// compare the newest result of each metric with their thresholds before an approval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub evaluations: Vec<EvaluationResult>,
}

impl ModelDeploymentSpec {
    /// The spec without what only compliance tools read (`governance`, `evaluations`):
    /// what policy bundles carry, so that recording an evaluation result neither grows
    /// every sidecar's bundle nor changes its fingerprint.
    pub fn decision_fields(&self) -> ModelDeploymentSpec {
        ModelDeploymentSpec {
            governance: None,
            evaluations: Vec::new(),
            ..self.clone()
        }
    }
}

/// What compliance frameworks ask of a model's registration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Governance {
    /// What the system is intended to do, for whom and in which setting, in the provider's
    /// words (EU AI Act Art. 13, NIST AI RMF MAP 1.1, ISO/IEC 42001 A.9.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub intended_purpose: Option<String>,
    /// EU AI Act risk category: Prohibited (may never be approved), High, Limited
    /// (transparency duties) or Minimal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eu_ai_act_category: Option<EuAiActCategory>,
    /// Who provides and who deploys the system (EU AI Act Art. 3 roles), with a contact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub roles: Vec<PartyRole>,
    /// Data the model was trained, fine-tuned or evaluated on, and the data it is fed at run
    /// time (retrieval sources, inputs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub data_sources: Vec<DataSource>,
}

/// EU AI Act risk category of an AI system.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum EuAiActCategory {
    /// A prohibited practice (Art. 5): the model can never be approved.
    Prohibited,
    /// High-risk (Art. 6 and Annex III): the high-risk obligations apply.
    High,
    /// Limited risk: transparency obligations (Art. 50) apply.
    Limited,
    /// Minimal risk: no specific obligations.
    Minimal,
}

impl EuAiActCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            EuAiActCategory::Prohibited => "Prohibited",
            EuAiActCategory::High => "High",
            EuAiActCategory::Limited => "Limited",
            EuAiActCategory::Minimal => "Minimal",
        }
    }
}

/// One party and the role it holds for the system.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartyRole {
    /// Provider (develops the system or has it developed and puts it into service under its
    /// own name) or Deployer (uses it under its authority).
    pub role: OperatorRole,
    /// The organisation or unit holding the role.
    #[schemars(length(min = 1, max = 253))]
    pub party: String,
    /// How to reach the party about this system (e-mail or team address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub contact: Option<String>,
}

/// Roles of the EU AI Act's value chain that PolicyBind records.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum OperatorRole {
    Provider,
    Deployer,
}

/// A data source of a model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSource {
    /// Name of the data set or source, e.g. `loan-applications-2019-2025`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Training, FineTuning, Evaluation, Retrieval or Input.
    pub purpose: DataPurpose,
    /// Where it comes from and how it was collected (provenance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub origin: Option<String>,
    /// Highest classification of the data in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<DataClassification>,
    /// Whether it holds personal data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub personal_data: bool,
}

/// What a data source is used for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum DataPurpose {
    /// Training the model.
    Training,
    /// Fine-tuning a pre-trained model.
    FineTuning,
    /// Testing and evaluation.
    Evaluation,
    /// Retrieved into prompts at run time.
    Retrieval,
    /// Sent by callers at run time.
    Input,
}

impl DataPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            DataPurpose::Training => "Training",
            DataPurpose::FineTuning => "FineTuning",
            DataPurpose::Evaluation => "Evaluation",
            DataPurpose::Retrieval => "Retrieval",
            DataPurpose::Input => "Input",
        }
    }
}

/// One evaluation result: a measured value of a metric on a data set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationResult {
    /// Metric, lower-case, e.g. `accuracy`, `subgroup-fairness-delta`, `harmful-output-rate`,
    /// `psi` (population stability index, for drift). Evidence gates name metrics this way.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9._]{0,61}[a-z0-9])?$")
    )]
    pub metric: String,
    /// The measured value.
    pub value: f64,
    /// Data set it was measured on.
    #[schemars(length(min = 1, max = 253))]
    pub dataset: String,
    /// Day it was measured (YYYY-MM-DD).
    pub date: NaiveDate,
    /// Who or what produced it: evaluation pipeline and run, report id, vendor card.
    #[schemars(length(min = 1, max = 512))]
    pub source: String,
}

/// Visibility of a ModelDeployment's model name.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ModelScope {
    /// Only the deployment's own namespace resolves the name to it.
    #[default]
    Namespace,
    /// Shared: every namespace without its own registration of the name resolves to it.
    Cluster,
}

impl ModelScope {
    pub fn is_namespace(&self) -> bool {
        *self == ModelScope::Namespace
    }
}

/// Where a model's provider API key comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderCredentials {
    /// Secret in the ModelDeployment's namespace holding the key. Mount it into the
    /// gateway (chart value `gateway.providerSecrets`); rotating its value takes effect
    /// without a restart.
    pub secret_ref: SecretKeyRef,
}

/// One key of one Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Data key within the Secret. Default `api-key`.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_secret_key() -> String {
    crate::wire::keys::PROVIDER_API_KEY.to_string()
}

fn default_classification() -> DataClassification {
    DataClassification::Internal
}

fn default_review_days() -> u32 {
    90
}

/// Declared risk factors. See the scoring table in the README ("Model risk").
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RiskAssessment {
    /// Manual risk level; overrides the computed level when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<RiskLevel>,
    /// Factors that raise the computed score.
    #[serde(default)]
    pub factors: RiskFactors,
}

/// Factors that feed the risk score (0-100).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RiskFactors {
    /// Outputs reach customers or the public directly (+20).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub customer_facing: bool,
    /// Outputs drive decisions about people without human review (+25).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub automated_decisions: bool,
    /// Prompts may contain personal data (+15).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub processes_personal_data: bool,
    /// The model can call tools or act on systems (+15).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tool_use: bool,
    /// Fine-tuned on internal data (+10).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fine_tuned_on_internal_data: bool,
    /// Generated code is executed or merged (+10).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub code_execution: bool,
}

/// Approval state of a ModelDeployment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ApprovalState {
    /// Risk Low or Medium: usable without approval.
    NotRequired,
    /// Risk High or Critical and no decision yet.
    Pending,
    /// An approver granted use.
    Approved,
    /// An approver refused use.
    Rejected,
}

impl ApprovalState {
    /// Whether the model may be used in this state.
    pub fn usable(self) -> bool {
        matches!(self, ApprovalState::NotRequired | ApprovalState::Approved)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::NotRequired => "NotRequired",
            ApprovalState::Pending => "Pending",
            ApprovalState::Approved => "Approved",
            ApprovalState::Rejected => "Rejected",
        }
    }
}

/// Status of a ModelDeployment, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Approved` (may be used), `Compliant` (review not overdue), `Suspended`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Computed risk score, 0-100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_score: Option<u32>,
    /// Risk level in force (manual level if set, else from the score).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_level: Option<RiskLevel>,
    /// Approval state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalState>,
    /// Name of the ApprovalRequest raised for this deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_request: Option<String>,
    /// Who approved (or rejected), from the ApprovalRequest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// When the next review is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_review_at: Option<DateTime<Utc>>,
    /// Pods currently matched by `workloadSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_workloads: Option<u32>,
    /// Compliance per framework (eu-ai-act, nist-ai-rmf, iso-42001, soc2), with the reason
    /// when not compliant; the `Compliant` condition sums them up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["framework"]))]
    pub compliance: Vec<FrameworkCompliance>,
}

/// Compliance frameworks PolicyBind reports on.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum Framework {
    /// EU AI Act (Regulation (EU) 2024/1689).
    #[serde(rename = "eu-ai-act")]
    EuAiAct,
    /// NIST AI Risk Management Framework 1.0.
    #[serde(rename = "nist-ai-rmf")]
    NistAiRmf,
    /// ISO/IEC 42001:2023 Annex A.
    #[serde(rename = "iso-42001")]
    Iso42001,
    /// SOC 2 common criteria (2017 Trust Services Criteria).
    #[serde(rename = "soc2")]
    Soc2,
}

impl Framework {
    pub const ALL: [Framework; 4] = [
        Framework::EuAiAct,
        Framework::NistAiRmf,
        Framework::Iso42001,
        Framework::Soc2,
    ];

    /// The identifier used in flags, files and statuses.
    pub fn id(self) -> &'static str {
        match self {
            Framework::EuAiAct => "eu-ai-act",
            Framework::NistAiRmf => "nist-ai-rmf",
            Framework::Iso42001 => "iso-42001",
            Framework::Soc2 => "soc2",
        }
    }

    /// Parses an identifier as [`Framework::id`] writes it.
    pub fn parse(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.id() == id)
    }
}

impl std::fmt::Display for Framework {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

/// Whether a model meets what one framework asks of its registration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FrameworkCompliance {
    /// eu-ai-act, nist-ai-rmf, iso-42001 or soc2.
    pub framework: Framework,
    /// Whether every check of this framework passes.
    pub compliant: bool,
    /// CamelCase reason: `Compliant`, or the first failing check (e.g. `EvidenceGateFailed`).
    pub reason: String,
    /// What fails, in words, naming gates, values and missing fields.
    #[schemars(length(max = 4096))]
    pub message: String,
}
