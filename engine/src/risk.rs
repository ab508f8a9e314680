//! Model risk scoring.
//!
//! The score is a sum of weighted factors, capped at 100, so anyone can redo it by
//! hand from a ModelDeployment:
//!
//! | factor                     | points |
//! |----------------------------|--------|
//! | automatedDecisions         | 25     |
//! | customerFacing             | 20     |
//! | processesPersonalData      | 15     |
//! | toolUse                    | 15     |
//! | fineTunedOnInternalData    | 10     |
//! | codeExecution              | 10     |
//!
//! Levels: 0-24 Low, 25-49 Medium, 50-74 High, 75-100 Critical. A manual
//! `risk.level` overrides the level (the score is still reported). High and
//! Critical need an approved ApprovalRequest.

use policybind_crds::RiskLevel;
use policybind_crds::model_deployment::RiskAssessment;

/// Score and level of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assessment {
    pub score: u32,
    pub level: RiskLevel,
}

/// Scores the declared factors; a manual level wins over the computed one.
pub fn assess(risk: &RiskAssessment) -> Assessment {
    let f = &risk.factors;
    let score: u32 = [
        (f.automated_decisions, 25),
        (f.customer_facing, 20),
        (f.processes_personal_data, 15),
        (f.tool_use, 15),
        (f.fine_tuned_on_internal_data, 10),
        (f.code_execution, 10),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, points)| points)
    .sum::<u32>()
    .min(100);
    Assessment {
        score,
        level: risk.level.unwrap_or_else(|| level_for(score)),
    }
}

/// Level for a score.
pub fn level_for(score: u32) -> RiskLevel {
    match score {
        0..=24 => RiskLevel::Low,
        25..=49 => RiskLevel::Medium,
        50..=74 => RiskLevel::High,
        _ => RiskLevel::Critical,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policybind_crds::model_deployment::RiskFactors;

    #[test]
    fn no_factors_is_low() {
        assert_eq!(
            assess(&RiskAssessment::default()),
            Assessment {
                score: 0,
                level: RiskLevel::Low
            }
        );
    }

    #[test]
    fn customer_facing_personal_data_with_tools_is_high() {
        let risk = RiskAssessment {
            level: None,
            factors: RiskFactors {
                customer_facing: true,
                processes_personal_data: true,
                tool_use: true,
                ..Default::default()
            },
        };
        assert_eq!(assess(&risk).score, 50);
        assert_eq!(assess(&risk).level, RiskLevel::High);
    }

    #[test]
    fn all_factors_cap_at_100_and_critical() {
        let risk = RiskAssessment {
            level: None,
            factors: RiskFactors {
                customer_facing: true,
                automated_decisions: true,
                processes_personal_data: true,
                tool_use: true,
                fine_tuned_on_internal_data: true,
                code_execution: true,
            },
        };
        assert_eq!(assess(&risk).score, 95);
        assert_eq!(assess(&risk).level, RiskLevel::Critical);
    }

    #[test]
    fn manual_level_overrides_score() {
        let risk = RiskAssessment {
            level: Some(RiskLevel::Critical),
            factors: RiskFactors::default(),
        };
        assert_eq!(assess(&risk).level, RiskLevel::Critical);
        assert_eq!(assess(&risk).score, 0);
    }

    #[test]
    fn level_boundaries() {
        assert_eq!(level_for(24), RiskLevel::Low);
        assert_eq!(level_for(25), RiskLevel::Medium);
        assert_eq!(level_for(50), RiskLevel::High);
        assert_eq!(level_for(75), RiskLevel::Critical);
    }
}
