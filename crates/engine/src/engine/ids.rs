//! Deterministic ids: saga ids from the correlation key, command and
//! timer ids from saga, step and attempt (and back).

use serde_json::json;

use crate::definition::SagaDefinition;
use crate::error::EngineError;
use crate::state::TimerPurpose;

use super::CommandKind;

/// The saga id for a correlation key: it follows from type and key only.
pub(super) fn saga_id(def: &SagaDefinition, key: &str) -> Result<String, EngineError> {
    let err = |reason: String| EngineError::TriggerExpression {
        saga_type: def.saga_type.clone(),
        reason,
    };
    let id = def
        .trigger
        .saga_id
        .eval_string(&json!({ "key": key, "type": &def.saga_type }))
        .map_err(err)?;
    if id.is_empty() {
        return Err(err("the saga id is empty".into()));
    }
    // `/` separates the parts of command and timer ids: escape it (and
    // the escape character) so ids stay unambiguous.
    Ok(id.replace('%', "%25").replace('/', "%2F"))
}

/// The command id of an action or compensation attempt.
pub fn command_id(saga_id: &str, step_path: &str, kind: CommandKind, attempt: u32) -> String {
    match kind {
        CommandKind::Action => format!("{saga_id}/{step_path}/{attempt}"),
        CommandKind::Compensation => format!("{saga_id}/{step_path}/compensate/{attempt}"),
    }
}

pub(super) fn timer_id(
    saga_id: &str,
    step_path: &str,
    purpose: TimerPurpose,
    attempt: u32,
) -> String {
    match purpose {
        TimerPurpose::StepTimeout => format!("{saga_id}/{step_path}/timeout/{attempt}"),
        TimerPurpose::RetryBackoff => format!("{saga_id}/{step_path}/backoff/{attempt}"),
        TimerPurpose::AwaitDeadline => format!("{saga_id}/{step_path}/deadline/{attempt}"),
        TimerPurpose::CompensationTimeout => {
            format!("{saga_id}/{step_path}/compensate/timeout/{attempt}")
        }
        TimerPurpose::CompensationBackoff => {
            format!("{saga_id}/{step_path}/compensate/backoff/{attempt}")
        }
        TimerPurpose::SagaDeadline => saga_deadline_id(saga_id),
        TimerPurpose::LateReply => format!("{saga_id}/{step_path}/late/{attempt}"),
    }
}

/// Whether the timer of this id (one [`timer_id`] made) awaits an input:
/// [`TimerPurpose::awaits_input`], read back from the id alone, so a
/// runtime can hold such timers without thawing their sagas. Ids the
/// engine did not make (a runtime's own housekeeping timers) await
/// nothing.
pub fn timer_awaits_input(timer_id: &str) -> bool {
    if timer_id.ends_with("/saga-deadline") {
        return true;
    }
    // `…/<purpose>/<attempt>`; a compensation's is `…/compensate/<purpose>/<attempt>`.
    let Some((head, attempt)) = timer_id.rsplit_once('/') else {
        return false;
    };
    if attempt.parse::<u32>().is_err() {
        return false;
    }
    matches!(
        head.rsplit_once('/'),
        Some((_, "timeout" | "deadline" | "late"))
    )
}

/// The id of the saga's own deadline timer. Step names cannot contain
/// `-`, so it cannot be mistaken for a step's timer.
pub(super) fn saga_deadline_id(saga_id: &str) -> String {
    format!("{saga_id}/saga-deadline")
}

pub(super) fn parse_command_id<'a>(
    saga_id: &str,
    command_id: &'a str,
) -> Option<(&'a str, CommandKind, u32)> {
    let rest = command_id.strip_prefix(saga_id)?.strip_prefix('/')?;
    let (head, attempt) = rest.rsplit_once('/')?;
    let attempt = attempt.parse().ok()?;
    match head.strip_suffix("/compensate") {
        Some(path) => Some((path, CommandKind::Compensation, attempt)),
        None => Some((head, CommandKind::Action, attempt)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PURPOSES: [TimerPurpose; 7] = [
        TimerPurpose::StepTimeout,
        TimerPurpose::RetryBackoff,
        TimerPurpose::AwaitDeadline,
        TimerPurpose::CompensationTimeout,
        TimerPurpose::CompensationBackoff,
        TimerPurpose::SagaDeadline,
        TimerPurpose::LateReply,
    ];

    #[test]
    fn a_timer_id_tells_whether_it_awaits_an_input() {
        // Step names that spell a purpose, nested paths and a saga id with
        // escaped slashes must not confuse the reading.
        let paths = [
            "late",
            "charge",
            "a/b",
            "timeout",
            "deadline",
            "backoff",
            "compensate",
            "x/compensate",
        ];
        for saga in ["order-checkout:o-1", "t:a%2Fb%2Ftimeout%2F1"] {
            for path in paths {
                for purpose in PURPOSES {
                    for attempt in [1, 12] {
                        let id = timer_id(saga, path, purpose, attempt);
                        assert_eq!(
                            timer_awaits_input(&id),
                            purpose.awaits_input(),
                            "{id} ({purpose:?})"
                        );
                    }
                }
            }
        }
        for other in [
            "",
            "@expire",
            "@early-expire",
            "s/x/timeout/",
            "s/x/timeout/one",
        ] {
            assert!(!timer_awaits_input(other), "{other}");
        }
    }
}
