//! From findings and errors to a verdict and an exit code. A threat seen always wins over an
//! error: a payload that crashes the loader after acting is still a threat.

use serde::Serialize;

use monitor_rules::Severity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Loaded completely, the whole trace judged, nothing of low severity or above.
    Clean,
    /// Findings below high severity (or at --fail-on when that is lower).
    Suspicious,
    /// A finding of high severity or above.
    Malicious,
    /// The scan could not be completed and no threat was seen: never read as clean.
    Error,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Clean,
        Verdict::Suspicious,
        Verdict::Malicious,
        Verdict::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Suspicious => "suspicious",
            Verdict::Malicious => "malicious",
            Verdict::Error => "error",
        }
    }
}

/// The process exit codes of `monitorctl scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u8")]
pub enum ExitCode {
    Clean = 0,
    Threat = 1,
    Error = 2,
}

impl From<ExitCode> for u8 {
    fn from(code: ExitCode) -> u8 {
        code as u8
    }
}

/// Decides the verdict from the worst finding, whether anything went wrong, and the severity
/// at which a finding fails the scan.
pub fn decide(worst: Option<Severity>, failed: bool, fail_on: Severity) -> (Verdict, ExitCode) {
    let threat = worst.is_some_and(|w| w >= fail_on);
    let verdict = match worst {
        Some(w) if w >= Severity::High => Verdict::Malicious,
        _ if threat => Verdict::Suspicious,
        _ if failed => Verdict::Error,
        Some(w) if w >= Severity::Low => Verdict::Suspicious,
        _ => Verdict::Clean,
    };
    let code = if threat {
        ExitCode::Threat
    } else if failed {
        ExitCode::Error
    } else {
        ExitCode::Clean
    };
    (verdict, code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Severity::*;

    #[test]
    fn a_threat_wins_over_an_error() {
        assert_eq!(
            decide(Some(Critical), true, High),
            (Verdict::Malicious, ExitCode::Threat)
        );
        assert_eq!(
            decide(Some(High), false, High),
            (Verdict::Malicious, ExitCode::Threat)
        );
    }

    #[test]
    fn an_error_without_a_threat_is_never_clean() {
        assert_eq!(decide(None, true, High), (Verdict::Error, ExitCode::Error));
        assert_eq!(
            decide(Some(Medium), true, High),
            (Verdict::Error, ExitCode::Error)
        );
        assert_eq!(
            decide(Some(Info), true, High),
            (Verdict::Error, ExitCode::Error)
        );
    }

    #[test]
    fn fail_on_sets_the_exit_code_not_the_severity_names() {
        assert_eq!(
            decide(Some(Medium), false, High),
            (Verdict::Suspicious, ExitCode::Clean)
        );
        assert_eq!(
            decide(Some(Medium), false, Medium),
            (Verdict::Suspicious, ExitCode::Threat)
        );
        assert_eq!(
            decide(Some(Medium), true, Medium),
            (Verdict::Suspicious, ExitCode::Threat)
        );
        assert_eq!(
            decide(Some(Info), false, High),
            (Verdict::Clean, ExitCode::Clean)
        );
        assert_eq!(decide(None, false, High), (Verdict::Clean, ExitCode::Clean));
    }
}
