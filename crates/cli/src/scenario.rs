//! `sagaflow test <SAGA_TYPE> --script scenario.yaml`: run a saga definition
//! offline against scripted service replies on a virtual clock.
//!
//! The engine is pure and takes `now` as an argument, so the runner here is
//! a small deterministic driver on the engine's [`VirtualClock`]: scripted
//! inputs (replies and awaited events, each at a virtual time) plus the
//! timers the engine arms. It always applies the earliest input next
//! (scripted inputs before timers due at the same instant) and jumps the
//! clock straight to it; nothing sleeps. Every step of the way is recorded as a trace line with its
//! virtual time offset, then compared with the scenario's `expect:`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use sagaflow_config::Spans;
use sagaflow_engine::definition::StepKind;
use sagaflow_engine::virtual_clock::{SameInstant, VirtualClock};
use sagaflow_engine::{
    AwaitedEvent, CommandKind, Effect, Engine, Input, LifecycleKind, Outcome, Reply, ReplyOutcome,
    SagaDefinition, SagaStatus, TimerPurpose, Timestamp, TriggerEvent,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::exit::{CliResult, Failure};

/// Default bound on virtual time from the trigger to the last input.
const DEFAULT_MAX_VIRTUAL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Default bound on the number of inputs applied.
const DEFAULT_MAX_INPUTS: u64 = 10_000;

#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    /// The saga type to run (its `type:`; the latest version).
    saga_type: String,
    /// The scenario file: trigger, scripted replies, awaited events, expectations.
    #[arg(long, value_name = "FILE")]
    script: PathBuf,
    /// Topology directory holding services.yaml and sagas/.
    #[arg(long, default_value = "topology", value_name = "DIR")]
    dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    /// One line per step of the path, then the status.
    Text,
    /// One JSON object: trace, status, result, emitted events, mismatches.
    Json,
}

// ------------------------------------------------------------ scenario file

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawScenario {
    /// Optional: the saga type this scenario is written for.
    saga: Option<String>,
    #[serde(default)]
    description: Option<String>,
    trigger: RawTrigger,
    #[serde(default)]
    replies: BTreeMap<String, Value>,
    #[serde(default)]
    events: Vec<RawEvent>,
    expect: RawExpect,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawTrigger {
    event_type: Option<String>,
    topic: Option<String>,
    /// RFC 3339 start time of the virtual clock (default the Unix epoch).
    start: Option<String>,
    payload: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawEvent {
    event_type: String,
    topic: Option<String>,
    at: String,
    #[serde(default)]
    payload: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawExpect {
    status: ExpectedStatus,
    path: Option<Vec<String>>,
    result: Option<Value>,
    emitted: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ExpectedStatus {
    Completed,
    Compensated,
    Failed,
}

impl ExpectedStatus {
    fn status(self) -> SagaStatus {
        match self {
            Self::Completed => SagaStatus::Completed,
            Self::Compensated => SagaStatus::Compensated,
            Self::Failed => SagaStatus::Failed,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawLimits {
    max_virtual_time: Option<String>,
    max_inputs: Option<u64>,
}

/// How a scripted service answers one attempt.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Ok(Value),
    Fail(String),
    Transient(String),
    NoReply,
}

#[derive(Debug, Clone, PartialEq)]
struct ScriptedReply {
    answer: Answer,
    after_ms: u64,
}

#[derive(Debug)]
struct ScriptedEvent {
    event_type: String,
    topic: Option<String>,
    at_ms: u64,
    payload: Value,
}

/// A validated scenario.
#[derive(Debug)]
struct Scenario {
    file: String,
    saga: Option<String>,
    description: Option<String>,
    trigger_event_type: Option<String>,
    trigger_topic: Option<String>,
    start_ms: u64,
    payload: Value,
    /// `service.operation` → one reply per attempt (the last one repeats).
    replies: BTreeMap<String, Vec<ScriptedReply>>,
    events: Vec<ScriptedEvent>,
    expect: RawExpect,
    max_virtual_ms: u64,
    max_inputs: u64,
}

fn at(file: &str, spans: &Spans, path: &str, msg: impl std::fmt::Display) -> String {
    format!("{file}:{}: {msg}", spans.find(path))
}

fn duration_ms(file: &str, spans: &Spans, path: &str, v: &str) -> Result<u64, String> {
    humantime::parse_duration(v.trim())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|e| {
            at(
                file,
                spans,
                path,
                format!("`{v}` is not a duration ({e}); write e.g. `250ms`, `30s`, `2h`"),
            )
        })
}

const REPLY_HELP: &str = "a reply is `ok: {payload}`, `fail: reason`, `transient: reason` or `no-reply`, with an optional `after: <duration>`";

fn parse_reply(file: &str, spans: &Spans, path: &str, v: &Value) -> Result<ScriptedReply, String> {
    match v {
        Value::String(s) if s == "no-reply" => Ok(ScriptedReply {
            answer: Answer::NoReply,
            after_ms: 0,
        }),
        Value::Object(m) => {
            let mut answer = None;
            let mut after_ms = 0;
            for (k, val) in m {
                let p = format!("{path}.{k}");
                let text = |val: &Value| match val {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                let a = match k.as_str() {
                    "ok" => Answer::Ok(if val.is_null() {
                        json!({})
                    } else {
                        val.clone()
                    }),
                    "fail" => Answer::Fail(text(val)),
                    "transient" => Answer::Transient(text(val)),
                    "no-reply" => {
                        if val != &Value::Bool(true) {
                            return Err(at(file, spans, &p, "`no-reply` takes `true`"));
                        }
                        Answer::NoReply
                    }
                    "after" => {
                        let Value::String(s) = val else {
                            return Err(at(
                                file,
                                spans,
                                &p,
                                "`after` is a duration string like `2s`",
                            ));
                        };
                        after_ms = duration_ms(file, spans, &p, s)?;
                        continue;
                    }
                    other => {
                        return Err(at(
                            file,
                            spans,
                            &p,
                            format!("unknown key `{other}`: {REPLY_HELP}"),
                        ));
                    }
                };
                if answer.replace(a).is_some() {
                    return Err(at(
                        file,
                        spans,
                        &p,
                        format!("a reply has exactly one outcome: {REPLY_HELP}"),
                    ));
                }
            }
            match answer {
                Some(answer) => Ok(ScriptedReply { answer, after_ms }),
                None => Err(at(file, spans, path, format!("no outcome: {REPLY_HELP}"))),
            }
        }
        _ => Err(at(file, spans, path, REPLY_HELP)),
    }
}

/// The `service.operation`s a definition can send commands to.
fn operations(def: &SagaDefinition) -> Vec<String> {
    let mut ops = Vec::new();
    for step in def.steps() {
        if let StepKind::Call(c) = &step.kind {
            ops.push(format!("{}.{}", c.service, c.operation));
            if let Some(comp) = &c.compensate {
                ops.push(format!("{}.{}", comp.service, comp.operation));
            }
        }
    }
    ops.sort();
    ops.dedup();
    ops
}

impl Scenario {
    /// Parses and checks a scenario against the definition it will run.
    fn parse(file: &str, source: &str, def: &SagaDefinition) -> Result<Scenario, String> {
        let (value, spans) = sagaflow_config::load(source)
            .map_err(|e| format!("{file}:{}: invalid YAML: {}", e.position, e.message))?;
        let raw: RawScenario = serde_path_to_error::deserialize(value).map_err(|e| {
            let mut path = String::new();
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => {
                        path.push_str(&format!("[{index}]"))
                    }
                    serde_path_to_error::Segment::Map { key } => {
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(key);
                    }
                    _ => {}
                }
            }
            let msg = e.inner().to_string();
            if let Some(rest) = msg.strip_prefix("unknown field `")
                && let Some(end) = rest.find('`')
            {
                let key = if path.is_empty() {
                    rest[..end].to_string()
                } else {
                    format!("{path}.{}", &rest[..end])
                };
                if spans.get(&key).is_some() {
                    path = key;
                }
            }
            at(file, &spans, &path, msg)
        })?;
        let start_ms = match &raw.trigger.start {
            None => 0,
            Some(s) => humantime::parse_rfc3339_weak(s)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .ok_or_else(|| {
                    at(
                        file,
                        &spans,
                        "trigger.start",
                        format!("`{s}` is not an RFC 3339 time like `2026-01-01T09:00:00Z`"),
                    )
                })?,
        };
        let known = operations(def);
        let mut replies = BTreeMap::new();
        for (op, v) in &raw.replies {
            let path = format!("replies.{op}");
            if !known.contains(op) {
                return Err(at(
                    file,
                    &spans,
                    &path,
                    format!(
                        "saga {} never calls `{op}`; it calls {}",
                        def.saga_type,
                        known.join(", ")
                    ),
                ));
            }
            let list = match v {
                Value::Array(items) if items.is_empty() => {
                    return Err(at(file, &spans, &path, "empty reply list"));
                }
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| parse_reply(file, &spans, &format!("{path}[{i}]"), item))
                    .collect::<Result<Vec<_>, _>>()?,
                single => vec![parse_reply(file, &spans, &path, single)?],
            };
            replies.insert(op.clone(), list);
        }
        let mut events = Vec::new();
        for (i, e) in raw.events.into_iter().enumerate() {
            let path = format!("events[{i}]");
            let awaited = def.steps().iter().any(|s| {
                matches!(&s.kind, StepKind::Await(a) if a.event_type == e.event_type
                    && e.topic.as_ref().is_none_or(|t| *t == a.topic))
            });
            if !awaited {
                return Err(at(
                    file,
                    &spans,
                    &format!("{path}.event-type"),
                    format!(
                        "saga {} awaits no `{}` event{}",
                        def.saga_type,
                        e.event_type,
                        e.topic
                            .as_ref()
                            .map(|t| format!(" on {t}"))
                            .unwrap_or_default()
                    ),
                ));
            }
            events.push(ScriptedEvent {
                at_ms: duration_ms(file, &spans, &format!("{path}.at"), &e.at)?,
                event_type: e.event_type,
                topic: e.topic,
                payload: e.payload,
            });
        }
        let max_virtual_ms = match &raw.limits.max_virtual_time {
            Some(s) => duration_ms(file, &spans, "limits.max-virtual-time", s)?,
            None => DEFAULT_MAX_VIRTUAL_MS,
        };
        Ok(Scenario {
            file: file.to_string(),
            saga: raw.saga,
            description: raw.description,
            trigger_event_type: raw.trigger.event_type,
            trigger_topic: raw.trigger.topic,
            start_ms,
            payload: raw.trigger.payload,
            replies,
            events,
            expect: raw.expect,
            max_virtual_ms,
            max_inputs: raw.limits.max_inputs.unwrap_or(DEFAULT_MAX_INPUTS),
        })
    }
}

// ------------------------------------------------------------------- runner

/// One line of the path taken.
#[derive(Debug, Clone, PartialEq)]
struct TraceLine {
    at_ms: u64,
    line: String,
}

/// What a run produced.
#[derive(Debug)]
struct Run {
    saga_id: String,
    trace: Vec<TraceLine>,
    status: SagaStatus,
    result: Option<Value>,
    emitted: Vec<Value>,
}

/// Why a run could not finish.
#[derive(Debug, PartialEq)]
enum RunError {
    /// The scenario does not fit the saga (exit 2).
    Script(String),
    /// The saga ran away past the limits (exit 1).
    Runaway(String),
}

struct Runner<'a> {
    engine: &'a Engine,
    def: &'a SagaDefinition,
    sc: &'a Scenario,
    start: u64,
    clock: VirtualClock,
    /// Command id → `service.operation`.
    commands: HashMap<String, String>,
    run: Run,
}

/// `+1m30s200ms`-style offset.
fn offset(ms: u64) -> String {
    if ms == 0 {
        return "+0ms".into();
    }
    let mut out = String::from("+");
    let (h, m, s, r) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (r, "ms")] {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

impl Runner<'_> {
    /// Virtual milliseconds since the trigger.
    fn elapsed(&self) -> u64 {
        self.clock.now().0 - self.start
    }

    fn line(&mut self, line: String) {
        self.run.trace.push(TraceLine {
            at_ms: self.elapsed(),
            line,
        });
    }

    fn handle(&mut self, effects: Vec<Effect>) -> Result<(), RunError> {
        for fx in effects {
            match fx {
                Effect::Command(c) => {
                    let op = format!("{}.{}", c.service, c.operation);
                    let verb = match c.kind {
                        CommandKind::Action => "command",
                        CommandKind::Compensation => "compensate",
                    };
                    self.line(format!("{verb} {op} (attempt {})", c.attempt));
                    let Some(script) = self.sc.replies.get(&op) else {
                        return Err(RunError::Script(format!(
                            "{}: no reply scripted for `{op}` (step `{}` sent it at {}); add it under `replies:`, e.g. `{op}: {{ ok: {{}} }}`, or `{op}: no-reply` to let its timeout fire",
                            self.sc.file,
                            c.step,
                            offset(self.elapsed())
                        )));
                    };
                    let index = usize::try_from(c.attempt.saturating_sub(1))
                        .unwrap_or(usize::MAX)
                        .min(script.len() - 1);
                    let scripted = script[index].clone();
                    self.commands.insert(c.command_id.clone(), op);
                    let (outcome, data, error) = match scripted.answer {
                        Answer::NoReply => continue,
                        Answer::Ok(data) => (ReplyOutcome::Success, data, None),
                        Answer::Fail(r) => (ReplyOutcome::BusinessFailure, Value::Null, Some(r)),
                        Answer::Transient(r) => {
                            (ReplyOutcome::TransientFailure, Value::Null, Some(r))
                        }
                    };
                    self.clock.schedule_in(
                        scripted.after_ms,
                        Input::Reply(Reply {
                            message_id: format!("reply:{}", c.command_id),
                            command_id: c.command_id,
                            outcome,
                            data,
                            error,
                        }),
                    );
                }
                Effect::ArmTimer {
                    timer_id,
                    fire_at,
                    purpose,
                } => {
                    if matches!(
                        purpose,
                        TimerPurpose::RetryBackoff | TimerPurpose::CompensationBackoff
                    ) {
                        let what = self.timer_subject(&timer_id);
                        self.line(format!(
                            "backoff {what} {}",
                            offset(fire_at.0.saturating_sub(self.clock.now().0))
                                .trim_start_matches('+')
                        ));
                    }
                }
                // The clock reads armed timers from the saga's state.
                Effect::CancelTimer { .. } => {}
                Effect::Emit(e) => {
                    self.line(format!("emit {} on {}", e.event_type, e.topic));
                    self.run.emitted.push(json!({
                        "event_type": e.event_type,
                        "topic": e.topic,
                        "key": e.key,
                        "payload": e.payload,
                    }));
                }
                Effect::Result(r) => self.run.result = Some(r.output),
                Effect::Lifecycle(l) => {
                    let step = l.step.clone().unwrap_or_default();
                    let detail = l.detail.clone().unwrap_or_default();
                    let kind = self
                        .def
                        .step_by_path(&step)
                        .map(|id| &self.def.step(id).kind);
                    match l.kind {
                        LifecycleKind::StepStarted => match kind {
                            Some(StepKind::Choice { .. }) => {
                                self.line(format!("choice {step}: {detail}"))
                            }
                            Some(StepKind::Await(_)) => {
                                self.line(format!("await {step}: {detail}"))
                            }
                            _ => {}
                        },
                        LifecycleKind::StepFailed => {
                            self.line(format!("step {step} failed: {detail}"))
                        }
                        LifecycleKind::LateReply => {
                            self.line(format!("late reply {step}: {detail}"))
                        }
                        LifecycleKind::Compensating => self.line(format!("compensating: {detail}")),
                        LifecycleKind::CompensationStepFailed => {
                            self.line(format!("compensation {step} failed: {detail}"))
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// `service.operation` (or the step) a timer belongs to, for the trace.
    fn timer_subject(&self, timer_id: &str) -> String {
        // `<saga id>/<step path>/<purpose…>/<attempt>`
        let rest = timer_id
            .strip_prefix(&self.run.saga_id)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(timer_id);
        let path = ["/timeout/", "/backoff/", "/deadline/", "/compensate/"]
            .iter()
            .filter_map(|m| rest.find(m))
            .min()
            .map_or(rest, |i| &rest[..i]);
        let compensation = rest[path.len()..].starts_with("/compensate/");
        match self
            .def
            .step_by_path(path)
            .map(|id| &self.def.step(id).kind)
        {
            Some(StepKind::Call(c)) => match (&c.compensate, compensation) {
                (Some(comp), true) => format!("{}.{}", comp.service, comp.operation),
                _ => format!("{}.{}", c.service, c.operation),
            },
            _ => path.to_string(),
        }
    }

    fn describe(&self, input: &Input) -> String {
        match input {
            Input::Reply(r) => {
                let op = self
                    .commands
                    .get(&r.command_id)
                    .cloned()
                    .unwrap_or_else(|| r.command_id.clone());
                let err = r.error.as_deref().unwrap_or("");
                match r.outcome {
                    ReplyOutcome::Success => format!("reply {op} ok"),
                    ReplyOutcome::BusinessFailure => format!("reply {op} failed: {err}"),
                    ReplyOutcome::TransientFailure => format!("reply {op} transient: {err}"),
                }
            }
            Input::Event(e) => format!("event {} on {}", e.event_type, e.topic),
            Input::TimerFired { timer_id } => {
                let what = self.timer_subject(timer_id);
                let attempt = timer_id.rsplit('/').next().unwrap_or("?");
                if timer_id.contains("/deadline/") {
                    format!("deadline {what}")
                } else if timer_id.contains("/backoff/") {
                    // The next attempt's command line says it all.
                    String::new()
                } else {
                    format!("timeout {what} (attempt {attempt})")
                }
            }
            Input::Retry { .. } => "operator retry".into(),
            Input::Abort { reason, .. } => format!("operator abort: {reason}"),
        }
    }

    /// Whether an awaited event belongs to this saga (as the runtime's
    /// routing would decide), or why not.
    fn correlates(&self, e: &AwaitedEvent, key: &str) -> Result<(), String> {
        let hits = self.engine.correlate(&e.topic, &e.event_type, &e.payload);
        let mine: Vec<_> = hits
            .iter()
            .filter(|c| c.saga_type == self.def.saga_type)
            .collect();
        if mine.iter().any(|c| c.key == key) {
            return Ok(());
        }
        match mine.first() {
            Some(c) => Err(format!(
                "it correlates to key `{}`, the saga's key is `{key}`",
                c.key
            )),
            None => Err("its correlation expression does not evaluate on this payload".into()),
        }
    }
}

fn run(engine: &Engine, def: &SagaDefinition, sc: &Scenario) -> Result<Run, RunError> {
    let trigger = TriggerEvent {
        message_id: "scenario-trigger".into(),
        topic: sc
            .trigger_topic
            .clone()
            .unwrap_or_else(|| def.trigger.topic.clone()),
        event_type: sc
            .trigger_event_type
            .clone()
            .unwrap_or_else(|| def.trigger.event_type.clone()),
        payload: sc.payload.clone(),
    };
    let start = sc.start_ms;
    // A reply due when a timer fires wins the race.
    let clock = VirtualClock::new(Timestamp(start), SameInstant::InputsFirst);
    let (mut state, effects) = clock.start(engine, &def.saga_type, &trigger).map_err(|e| {
        RunError::Script(format!(
            "{}: the trigger does not start the saga: {e}",
            sc.file
        ))
    })?;
    let mut r = Runner {
        engine,
        def,
        sc,
        start,
        clock,
        commands: HashMap::new(),
        run: Run {
            saga_id: state.saga_id.clone(),
            trace: Vec::new(),
            status: state.status,
            result: None,
            emitted: Vec::new(),
        },
    };
    r.line(format!(
        "start {} ({} on {}, saga {})",
        def.saga_type, trigger.event_type, trigger.topic, state.saga_id
    ));
    for (i, e) in sc.events.iter().enumerate() {
        let topic = e.topic.clone().unwrap_or_else(|| {
            def.steps()
                .iter()
                .find_map(|s| match &s.kind {
                    StepKind::Await(a) if a.event_type == e.event_type => Some(a.topic.clone()),
                    _ => None,
                })
                .unwrap_or_default()
        });
        r.clock.schedule_at(
            Timestamp(start.saturating_add(e.at_ms)),
            Input::Event(AwaitedEvent {
                message_id: format!("scenario-event-{i}"),
                topic,
                event_type: e.event_type.clone(),
                payload: e.payload.clone(),
            }),
        );
    }
    r.handle(effects)?;
    let mut inputs = 0u64;
    while !state.status.is_terminal() {
        let Some((Timestamp(at), input)) = r.clock.next_input(&state) else {
            break;
        };
        inputs += 1;
        if inputs > sc.max_inputs {
            return Err(RunError::Runaway(format!(
                "{}: stopped after {} inputs at {} with the saga still {} (limits.max-inputs); is a retry or await looping?",
                sc.file,
                sc.max_inputs,
                offset(r.elapsed()),
                state.status
            )));
        }
        if at.saturating_sub(start) > sc.max_virtual_ms {
            return Err(RunError::Runaway(format!(
                "{}: the next input is due at {}, past limits.max-virtual-time ({}), with the saga still {}",
                sc.file,
                offset(at - start),
                offset(sc.max_virtual_ms),
                state.status
            )));
        }
        r.clock.advance_to(Timestamp(at));
        let what = r.describe(&input);
        if let Input::Event(e) = &input
            && let Err(why) = r.correlates(e, &state.key)
        {
            r.line(format!("{what} (ignored: {why})"));
            continue;
        }
        let applied = r.clock.apply(engine, &mut state, input);
        match applied.outcome {
            Outcome::Applied => {
                if !what.is_empty() {
                    r.line(what);
                }
                r.handle(applied.effects)?;
            }
            Outcome::Stale(why) => r.line(format!("{what} (ignored: {why})")),
            Outcome::Duplicate => r.line(format!("{what} (ignored: duplicate)")),
            Outcome::Rejected(e) => r.line(format!("{what} (rejected: {e})")),
        }
    }
    r.run.status = state.status;
    Ok(r.run)
}

// ------------------------------------------------------------- expectations

/// A line diff of `expected` against `actual` (longest common subsequence):
/// `  ` both, `- ` expected only, `+ ` actual only.
fn diff(expected: &[String], actual: &[String]) -> Vec<String> {
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            out.push(format!("  {}", expected[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+ {}", actual[j]));
            j += 1;
        } else {
            out.push(format!("- {}", expected[i]));
            i += 1;
        }
    }
    out
}

/// Every way the run differs from `expect:`, each a printable block.
fn check(expect: &RawExpect, run: &Run) -> Vec<String> {
    let mut out = Vec::new();
    let want = expect.status.status();
    if run.status != want {
        out.push(format!("status: expected {want}, got {}", run.status));
    }
    if let Some(path) = &expect.path {
        let actual: Vec<String> = run.trace.iter().map(|t| t.line.clone()).collect();
        if *path != actual {
            let mut block = String::from("path differs (- expected, + actual):");
            for l in diff(path, &actual) {
                block.push_str("\n  ");
                block.push_str(&l);
            }
            out.push(block);
        }
    }
    if let Some(result) = &expect.result
        && run.result.as_ref() != Some(result)
    {
        out.push(format!(
            "result differs:\n  - expected {result}\n  + actual   {}",
            run.result
                .as_ref()
                .map_or("(no result)".to_string(), Value::to_string)
        ));
    }
    if let Some(emitted) = &expect.emitted {
        let actual: Vec<String> = run
            .emitted
            .iter()
            .map(|e| e["event_type"].as_str().unwrap_or_default().to_string())
            .collect();
        if *emitted != actual {
            out.push(format!(
                "emitted events differ:\n  - expected [{}]\n  + actual   [{}]",
                emitted.join(", "),
                actual.join(", ")
            ));
        }
    }
    out
}

// --------------------------------------------------------------- command

pub(crate) async fn run_test(args: TestArgs) -> CliResult {
    let engine = Engine::new(crate::topology::load_valid(&args.dir)?);
    let def = crate::topology::latest(engine.registry(), &args.saga_type)?;
    let file = args.script.display().to_string();
    let source = std::fs::read_to_string(&args.script)
        .map_err(|e| Failure::Usage(format!("cannot read {file}: {e}")))?;
    let scenario = Scenario::parse(&file, &source, def).map_err(Failure::Usage)?;
    if let Some(saga) = &scenario.saga
        && *saga != def.saga_type
    {
        return Err(Failure::Usage(format!(
            "{file}: the scenario is for saga `{saga}`, not `{}`",
            def.saga_type
        )));
    }
    let outcome = match run(&engine, def, &scenario) {
        Ok(outcome) => outcome,
        Err(RunError::Script(m)) => return Err(Failure::Usage(m)),
        Err(RunError::Runaway(m)) => return Err(Failure::Found(m)),
    };
    let mismatches = check(&scenario.expect, &outcome);
    print!(
        "{}",
        render(args.output, &scenario, def, &outcome, &mismatches)
    );
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(Failure::Found(format!(
            "{file}: {} expectation(s) not met",
            mismatches.len()
        )))
    }
}

fn render(
    format: OutputFormat,
    sc: &Scenario,
    def: &SagaDefinition,
    run: &Run,
    mismatches: &[String],
) -> String {
    let file = &sc.file;
    let mut out = String::new();
    match format {
        OutputFormat::Text => {
            if let Some(d) = &sc.description {
                let _ = writeln!(out, "# {d}");
            }
            for t in &run.trace {
                let _ = writeln!(out, "{:<10} {}", offset(t.at_ms), t.line);
            }
            let _ = writeln!(out, "status: {}", run.status);
            if let Some(result) = &run.result {
                let _ = writeln!(out, "result: {result}");
            }
            if mismatches.is_empty() {
                let _ = writeln!(out, "ok: {file} matches its expectations");
            } else {
                let _ = writeln!(out, "FAILED: {file} does not match its expectations:");
                for m in mismatches {
                    let _ = writeln!(out, "{m}");
                }
            }
        }
        OutputFormat::Json => {
            let trace: Vec<Value> = run
                .trace
                .iter()
                .map(|t| json!({ "at_ms": t.at_ms, "offset": offset(t.at_ms), "line": t.line }))
                .collect();
            let doc = json!({
                "scenario": file,
                "description": sc.description,
                "saga_type": def.saga_type,
                "saga_version": def.version,
                "saga_id": run.saga_id,
                "trace": trace,
                "status": run.status,
                "result": run.result,
                "emitted": run.emitted,
                "ok": mismatches.is_empty(),
                "mismatches": mismatches,
            });
            let _ = writeln!(out, "{doc}");
        }
    }
    out
}

#[cfg(test)]
#[path = "scenario_tests.rs"]
mod tests;
