//! Two-phase jobs: the payer pays a small fee for an evaluation of the request,
//! then, if it is accepted, pays for the work; the work is re-priced at its
//! actual cost when it finishes and the rest is refunded.
//!
//! ```text
//! awaiting_eval_payment --EvalPaid--> evaluating --Accepted--> awaiting_work_payment --WorkPaid--> executing --Completed--> complete
//!                                         |  \--Rejected--> rejected                                   \--Failed--> failed
//!                                         \--Failed--> failed
//! ```
//!
//! Money follows the phases (see [`crate::Posting::job_paid`] and
//! [`crate::Posting::job_settle`]): each paid invoice is held on `job:<id>`;
//! the evaluation phase is settled when the evaluation ends (accepted or
//! rejected: the fee is earned), the work phase when the work ends. A phase
//! that fails settles with a zero charge, so its whole payment becomes a refund.
//! [`JobState::held_phase`] says which payment is still held in each state.

/// The default maximum request length, in Unicode characters.
pub const DEFAULT_MAX_REQUEST_CHARS: usize = 500;

/// A job's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Created; the evaluation invoice is not paid yet.
    AwaitingEvalPayment,
    /// The evaluation fee is paid; the request is being evaluated.
    Evaluating,
    /// Accepted and quoted; the work invoice is not paid yet.
    AwaitingWorkPayment,
    /// The evaluation refused the request. Terminal.
    Rejected,
    /// The work is paid for and running.
    Executing,
    /// The work finished. Terminal.
    Complete,
    /// The evaluation or the work failed; the held payment is refunded. Terminal.
    Failed,
}

/// Every state, for tests and exhaustive tables.
pub const ALL_JOB_STATES: [JobState; 7] = [
    JobState::AwaitingEvalPayment,
    JobState::Evaluating,
    JobState::AwaitingWorkPayment,
    JobState::Rejected,
    JobState::Executing,
    JobState::Complete,
    JobState::Failed,
];

impl JobState {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::AwaitingEvalPayment => "awaiting_eval_payment",
            JobState::Evaluating => "evaluating",
            JobState::AwaitingWorkPayment => "awaiting_work_payment",
            JobState::Rejected => "rejected",
            JobState::Executing => "executing",
            JobState::Complete => "complete",
            JobState::Failed => "failed",
        }
    }

    /// Parse the wire and database name.
    pub fn parse(s: &str) -> Option<Self> {
        ALL_JOB_STATES.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether no event can change this state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Rejected | JobState::Complete | JobState::Failed
        )
    }

    /// The phase whose payment is held on `job:<id>` and not yet settled in
    /// this state: what a failure here must refund.
    pub fn held_phase(self) -> Option<JobPhase> {
        match self {
            JobState::Evaluating => Some(JobPhase::Eval),
            JobState::Executing => Some(JobPhase::Work),
            _ => None,
        }
    }
}

/// The two paid phases of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobPhase {
    /// The evaluation, paid by the evaluation invoice.
    Eval,
    /// The work, paid by the work invoice.
    Work,
}

impl JobPhase {
    /// The stored name (used in idempotency keys).
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Eval => "eval",
            JobPhase::Work => "work",
        }
    }
}

/// Something that happens to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// The evaluation invoice settled.
    EvalPaid,
    /// The evaluation accepted the request.
    Accepted,
    /// The evaluation accepted the request and the free tier pays for all of
    /// the work: no work invoice, the work starts at once.
    AcceptedFree,
    /// The evaluation refused the request.
    Rejected {
        /// Why, for the payer.
        reason: String,
    },
    /// The work invoice settled.
    WorkPaid,
    /// The work finished.
    Completed,
    /// The evaluation or the work failed.
    Failed {
        /// Why, for the payer (no prompt text).
        reason: String,
    },
}

impl JobEvent {
    /// The event's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::EvalPaid => "eval_paid",
            JobEvent::Accepted => "accepted",
            JobEvent::AcceptedFree => "accepted_free",
            JobEvent::Rejected { .. } => "rejected",
            JobEvent::WorkPaid => "work_paid",
            JobEvent::Completed => "completed",
            JobEvent::Failed { .. } => "failed",
        }
    }
}

/// Errors from job rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The job is finished; nothing can change it.
    #[error("the job is {} and cannot change", state.as_str())]
    Terminal {
        /// Its terminal state.
        state: JobState,
    },
    /// The event does not apply in this state.
    #[error("event {event} is not valid for a job that is {}", state.as_str())]
    InvalidTransition {
        /// The job's state.
        state: JobState,
        /// The event's name.
        event: &'static str,
    },
    /// The request text is missing or blank.
    #[error("the request is missing or empty")]
    RequestMissing,
    /// The request text is longer than allowed.
    #[error("the request is {chars} characters long; the limit is {max_chars}")]
    RequestTooLong {
        /// The limit.
        max_chars: usize,
        /// The request's length in Unicode characters.
        chars: usize,
    },
}

/// The state after `event`, or why it does not apply. Terminal states are absorbing.
pub fn next(state: JobState, event: &JobEvent) -> Result<JobState, JobError> {
    use JobState as S;
    if state.is_terminal() {
        return Err(JobError::Terminal { state });
    }
    Ok(match (state, event) {
        (S::AwaitingEvalPayment, JobEvent::EvalPaid) => S::Evaluating,
        (S::Evaluating, JobEvent::Accepted) => S::AwaitingWorkPayment,
        (S::Evaluating, JobEvent::AcceptedFree) => S::Executing,
        (S::Evaluating, JobEvent::Rejected { .. }) => S::Rejected,
        // An evaluation that cannot be done (the model is gone, the request
        // breaks it) must end somewhere, with its fee refunded.
        (S::Evaluating, JobEvent::Failed { .. }) => S::Failed,
        (S::AwaitingWorkPayment, JobEvent::WorkPaid) => S::Executing,
        (S::Executing, JobEvent::Completed) => S::Complete,
        (S::Executing, JobEvent::Failed { .. }) => S::Failed,
        _ => {
            return Err(JobError::InvalidTransition {
                state,
                event: event.name(),
            });
        }
    })
}

/// What a restarted process must do with a job it finds in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestartAction {
    /// Run the current phase again.
    Resume,
    /// Apply [`JobEvent::Failed`] and refund the held phase's payment in full.
    FailAndRefund,
    /// Nothing: the job waits for an outside event, or is finished.
    Nothing,
}

/// What to do on restart with a job found in `state`.
///
/// - `evaluating` → [`RestartAction::Resume`]: the evaluation is cheap, has no
///   effect outside the job, and only its first result can move the job on
///   (the transition out of `evaluating` happens once), so running it again is
///   idempotent.
/// - `executing` → [`RestartAction::FailAndRefund`]: the work may have run in
///   part, its output died with the process and nobody is waiting for a
///   re-run; and a request that crashed the process would crash it again on
///   every resume. Failing it refunds the whole work payment now, which the
///   payer can claim, instead of leaving their money behind a job that may
///   never finish.
/// - `awaiting_*` → [`RestartAction::Nothing`]: the invoice watcher moves the
///   job on when the invoice settles.
/// - terminal states → [`RestartAction::Nothing`].
pub fn on_restart(state: JobState) -> RestartAction {
    match state {
        JobState::Evaluating => RestartAction::Resume,
        JobState::Executing => RestartAction::FailAndRefund,
        JobState::AwaitingEvalPayment
        | JobState::AwaitingWorkPayment
        | JobState::Rejected
        | JobState::Complete
        | JobState::Failed => RestartAction::Nothing,
    }
}

/// Check a job's request text: present, not blank, and at most `max_chars`
/// Unicode characters (counted as `char`s, so every script counts alike).
pub fn validate_request(text: Option<&str>, max_chars: usize) -> Result<(), JobError> {
    let text = text.ok_or(JobError::RequestMissing)?;
    if text.trim().is_empty() {
        return Err(JobError::RequestMissing);
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(JobError::RequestTooLong { max_chars, chars });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn failed() -> JobEvent {
        JobEvent::Failed {
            reason: "boom".into(),
        }
    }

    #[test]
    fn the_happy_path_and_the_rejection() {
        let mut s = JobState::AwaitingEvalPayment;
        for e in [
            JobEvent::EvalPaid,
            JobEvent::Accepted,
            JobEvent::WorkPaid,
            JobEvent::Completed,
        ] {
            s = next(s, &e).unwrap();
        }
        assert_eq!(s, JobState::Complete);
        let r = next(
            JobState::Evaluating,
            &JobEvent::Rejected {
                reason: "not a job".into(),
            },
        );
        assert_eq!(r, Ok(JobState::Rejected));
    }

    #[test]
    fn work_cannot_start_unpaid_and_finished_jobs_stay_finished() {
        assert_eq!(
            next(JobState::AwaitingWorkPayment, &JobEvent::Completed),
            Err(JobError::InvalidTransition {
                state: JobState::AwaitingWorkPayment,
                event: "completed"
            })
        );
        assert!(next(JobState::AwaitingEvalPayment, &JobEvent::Accepted).is_err());
        assert_eq!(
            next(JobState::Complete, &failed()),
            Err(JobError::Terminal {
                state: JobState::Complete
            })
        );
        assert_eq!(next(JobState::Executing, &failed()), Ok(JobState::Failed));
    }

    #[test]
    fn state_names_round_trip() {
        for s in ALL_JOB_STATES {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("done"), None);
    }

    #[test]
    fn restart_resumes_evaluation_and_refunds_interrupted_work() {
        assert_eq!(on_restart(JobState::Evaluating), RestartAction::Resume);
        assert_eq!(
            on_restart(JobState::Executing),
            RestartAction::FailAndRefund
        );
        assert_eq!(
            on_restart(JobState::AwaitingWorkPayment),
            RestartAction::Nothing
        );
        assert_eq!(on_restart(JobState::Complete), RestartAction::Nothing);
        // A refund on restart is for the phase that was held, and the failure is a valid transition.
        for s in ALL_JOB_STATES {
            if on_restart(s) == RestartAction::FailAndRefund {
                assert!(s.held_phase().is_some());
                assert_eq!(next(s, &failed()), Ok(JobState::Failed));
            }
        }
    }

    #[test]
    fn requests_are_checked_for_presence_and_length_in_characters() {
        assert_eq!(validate_request(None, 500), Err(JobError::RequestMissing));
        assert_eq!(
            validate_request(Some("  \n"), 500),
            Err(JobError::RequestMissing)
        );
        let ok = "é".repeat(DEFAULT_MAX_REQUEST_CHARS); // 1000 bytes, 500 chars
        assert_eq!(
            validate_request(Some(&ok), DEFAULT_MAX_REQUEST_CHARS),
            Ok(())
        );
        let long = "字".repeat(DEFAULT_MAX_REQUEST_CHARS + 1);
        let err = validate_request(Some(&long), DEFAULT_MAX_REQUEST_CHARS).unwrap_err();
        assert_eq!(
            err,
            JobError::RequestTooLong {
                max_chars: 500,
                chars: 501
            }
        );
        assert!(err.to_string().contains("limit is 500"));
    }

    fn event() -> impl Strategy<Value = JobEvent> {
        prop_oneof![
            Just(JobEvent::EvalPaid),
            Just(JobEvent::Accepted),
            Just(JobEvent::Rejected { reason: "r".into() }),
            Just(JobEvent::WorkPaid),
            Just(JobEvent::Completed),
            Just(JobEvent::Failed { reason: "f".into() }),
        ]
    }

    proptest! {
        #[test]
        fn random_events_never_skip_a_payment_and_terminal_states_absorb(
            events in proptest::collection::vec(event(), 0..40)
        ) {
            let mut s = JobState::AwaitingEvalPayment;
            let (mut eval_paid, mut accepted, mut work_paid) = (false, false, false);
            for e in events {
                match next(s, &e) {
                    Ok(n) => {
                        prop_assert!(!s.is_terminal(), "{:?} left terminal {:?}", e, s);
                        match e {
                            JobEvent::EvalPaid => eval_paid = true,
                            JobEvent::Accepted => accepted = true,
                            JobEvent::WorkPaid => work_paid = true,
                            _ => {}
                        }
                        s = n;
                    }
                    Err(JobError::Terminal { state }) => prop_assert!(state.is_terminal() && state == s),
                    Err(err) => {
                        let invalid = matches!(err, JobError::InvalidTransition { .. });
                        prop_assert!(invalid, "unexpected error {:?}", err);
                    }
                }
                // Each state implies the payments and decisions that lead to it.
                match s {
                    JobState::AwaitingEvalPayment => prop_assert!(!eval_paid),
                    JobState::Evaluating | JobState::Rejected => prop_assert!(eval_paid && !accepted && !work_paid),
                    JobState::AwaitingWorkPayment => prop_assert!(eval_paid && accepted && !work_paid),
                    JobState::Executing | JobState::Complete => prop_assert!(eval_paid && accepted && work_paid),
                    JobState::Failed => prop_assert!(eval_paid && (accepted == work_paid)),
                }
            }
        }
    }
}
