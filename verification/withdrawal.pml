/*
 * The withdrawal protocol of sluice, for spin.
 *
 * One withdrawal of a customer, paid by a direct transfer from the treasury's holdings, with the
 * steps of the code (each DB transaction of the code is one atomic step here):
 *
 *   request        services/withdrawals.request_withdrawal      (the initial state: queued)
 *   reserve        services/withdrawal_worker.reserve_queued,
 *                  withdrawal_attempts._drop_spent_anchor, _try_reserve
 *   claim          withdrawal_worker.submit_reserved (status submitting, committed before the call)
 *   call           withdrawal_worker._submit / _submit_fence -> LedgerCommands.submit_transfer
 *   record         withdrawal_worker.submit_reserved's last transaction
 *                  (update_many(expected_status="submitting", same_attempt=True))
 *   settle         withdrawal_worker.settle_expired / _settle (retry around the anchor, fence,
 *                  or credit back when nothing of the record can commit any more)
 *   ingest         services/ingestion + domain/withdrawals.book_withdrawal_entry
 *                  (transfer -> completed; fence -> failed and credited back; every transaction
 *                  archives the holdings it spent; the cursor's record time advances with each
 *                  transaction and checkpoint)
 *   restore        an Integration DB restore to an earlier backup, then
 *                  withdrawal_attempts.hold_until_safe (services/recovery.py's runbook)
 *
 * The ledger: a submission commits (its response may be lost), is rejected, or is lost and may
 * commit later, within its max_record_time (trec_tgt) or, as a local party's submission can,
 * after it (a late commit). A transaction commits only if every input holding is still live,
 * and archives them. Another transaction (an operator's transfer, a transaction the restored DB
 * forgot) may spend a holding, the anchor included. Record time: every item of the update stream
 * (a transaction or a checkpoint) has its own record time, one more than the one before, so the
 * stream is an array indexed by record time.
 *
 * Bounds (the defaults; each is a -D define):
 *   WORKERS  2   withdrawal workers, stateless, running side by side
 *   AMAX     2   attempts_max (fence attempts come after, as many as time allows)
 *   SPAN     2   trec_span_s, in record-time steps
 *   TMAX     9   the record time at which the ledger stops (the horizon of every run)
 *   CRASHES  1   worker crashes (at each point between two of its DB transactions or calls)
 *   FAULTS   2   ledger faults: a rejection, a lost response, a submission lost to commit later
 *   LATE     1   commits after max_record_time
 *   OTHERS   1   spends of a holding by a transaction that is not the record's
 *   RESTORE      one DB backup and one restore of it (off unless defined). LATE is then 0:
 *                the hold after a restore rests on time (a forgotten attempt commits by its
 *                trec_tgt; the Canton adapter's local_margin_s). RESTORE_WITH_LATE keeps late
 *                commits, and spin shows the double payment the hold then cannot prevent.
 *   TIMELY       the liveness runs' scheduling assumption: record time advances only while the
 *                record waits for time (an attempt out and unseen, the hold), not while a worker
 *                has work in hand; without it, record time advances freely up to TMAX
 *
 * The checks (tests/verification/test_withdrawal_model.py; docs/verification.md has their bounds
 * and figures) run three mixes of these bounds for safety and one, with TIMELY, for liveness.
 *
 * Properties: one_transfer and no_refund_of_paid (assertions of the monitor, in every state);
 * settles (ltl, under weak fairness).
 *
 * Mutants (-D), each refuted by spin:
 *   MUTANT_RETRY_FRESH_INPUTS       a retry chooses its inputs afresh      -> one_transfer
 *   MUTANT_REFUND_ON_COMMAND_ERROR  credit back on a command's error       -> no_refund_of_paid
 *   MUTANT_REFUND_WITHOUT_FENCE     credit back once the last trec_tgt passed, with no fence
 *                                                                          -> no_refund_of_paid
 *   MUTANT_RECORD_ANY_ATTEMPT       the record step writes over a later attempt
 *                                                                          -> no_refund_of_paid
 *   MUTANT_RESTORE_WITHOUT_HOLD     no hold_until_safe after a restore    -> one_transfer
 *   MUTANT_SETTLE_SUBMITTED_ONLY    a record left submitting is never settled -> settles
 *
 * Not modelled: offers (two-step transfers), merges and splits, cancels, compliance blocks,
 * circuit breakers, amounts and fees (one holding covers the withdrawal), a DB restored to before
 * the request (ingestion's rebuild of the record from the transfer's metadata).
 */

#ifndef WORKERS
#define WORKERS 2
#endif
#ifndef AMAX
#define AMAX 2
#endif
#ifndef SPAN
#define SPAN 2
#endif
#ifndef TMAX
#define TMAX 9
#endif
#ifndef CRASHES
#define CRASHES 1
#endif
#ifndef FAULTS
#define FAULTS 2
#endif
#if defined(RESTORE) && !defined(RESTORE_WITH_LATE)
#undef LATE
#define LATE 0
#endif
#ifndef LATE
#define LATE 1
#endif
#ifndef OTHERS
#define OTHERS 1
#endif

#define NH 2          /* holdings of the treasury, each covers the withdrawal */
#define NONE 255
#define PENDING 2     /* submissions lost in the ledger, that may commit later */

/* withdrawal statuses (domain/withdrawals.py) */
mtype = { QUEUED, RESERVED, SUBMITTING, SUBMITTED, COMPLETED, FAILED };

/* the update stream: kind of the transaction at each record time (0: a checkpoint) */
#define TX_PAY 1      /* a transfer of the withdrawal (reason = its id): any attempt */
#define TX_FENCE 2    /* the fence: a self-transfer of the anchor, kind fence */
#define TX_OTHER 3    /* a transaction that is not the record's */
byte stream_kind[TMAX + 1];
byte stream_inputs[TMAX + 1];   /* the holdings it archived (bit h: holding h) */

/* --- the ledger's truth ------------------------------------------------------------------- */
byte now = 0;                   /* the ledger's record time: of the last item of the stream */
byte live = 3;                  /* holdings active on the ledger (bit mask, NH = 2) */
byte committed = 0;             /* transfers of the withdrawal committed (fences not counted) */
bool pending_live[PENDING];
byte pending_inputs[PENDING];
byte pending_deadline[PENDING]; /* its max_record_time */
bool pending_fence[PENDING];

/* --- the Integration DB ------------------------------------------------------------------- */
mtype status = QUEUED;
byte attempt = 1;
byte anchor = NONE;             /* Withdrawal.anchor: the first input, reserved until the end */
byte inputs = 0;                /* reserved holdings of the current attempt (bit mask) */
byte trec_tgt = 0;
bool fenced = false;            /* Withdrawal.failure set: its attempts are fences now */
byte known_active = 3;          /* holdings ingestion has not seen archived */
byte cursor = 0;                /* ingestion's cursor: the record time it has reached */
byte refunds = 0;               /* withdrawal_refunded postings (credit back) */
byte paid_booked = 0;           /* withdrawal_paid postings */
byte hold = 0;                  /* the hold after a restore (0: none) */

/* --- faults left ---------------------------------------------------------------------------- */
byte crashes = CRASHES;
byte faults = FAULTS;
byte late = LATE;
byte others = OTHERS;
byte in_hand = 0;               /* workers between their claim and their record */
bool paid_twice_alert = false;  /* ingestion saw a transfer of a finished record (implied
                                 * by the properties: a second transfer, or a paid refund) */

#define awaiting (status == RESERVED || status == SUBMITTING || status == SUBMITTED)
#define finished (status == COMPLETED || status == FAILED)
#define hold_in_force (hold != 0 && cursor < hold)
#define may_have_left (attempt > 1 || status == SUBMITTING || status == SUBMITTED)

#ifdef MUTANT_SETTLE_SUBMITTED_ONLY
/* The naive settle: a record left submitting by a crash is never settled. */
#define settle_claimable (status == RESERVED || status == SUBMITTED)
#else
#define settle_claimable awaiting
#endif

/* An item ingestion has read is never read again (so it is forgotten, which keeps the state
 * space small) unless a restore will rewind the cursor to before it: a backup taken later has a
 * cursor at or past it. */
#ifdef RESTORE
byte phase = 0;                 /* 0: no backup yet; 1: a backup taken; 2: restored */
byte saved_cursor;
#define may_forget(c) (phase != 1 || c <= saved_cursor)
#else
#define may_forget(c) true
#endif

/* When record time advances by a checkpoint. Only while the record waits on time: ticks
 * before a reservation or after the end only shift every time by one. Under TIMELY, only when
 * nothing but time can move the record: no worker has a claim in hand, ingestion has read all
 * there is, and the record waits for its trec_tgt or the hold (the workers' and ingestion's
 * rounds are short against trec_span_s). */
#ifdef TIMELY
#define tick_allowed (in_hand == 0 && cursor == now \
    && ((status == SUBMITTING || status == SUBMITTED) && trec_tgt > cursor || hold_in_force))
#else
#define tick_allowed (!finished && (awaiting || hold_in_force))
#endif

/* Each step prints its name and the state after it when spin replays a trail (pan prints
 * nothing): tests/verification/test_withdrawal_conformance.py drives the code through them. */
#define STEP(name) printf("STEP "); printf(name); \
    printf(" now=%d status=%e attempt=%d committed=%d refunds=%d\n", now, status, attempt, \
        committed, refunds)

/* The properties. */
#define one_transfer (committed <= 1)
#define no_refund_of_paid (refunds == 0 || committed == 0)
#define settled ((status == COMPLETED && committed == 1 && paid_booked == 1 && refunds == 0) \
              || (status == FAILED && committed == 0 && refunds == 1))

/* The ledger commits a transaction at the next record time (callers check now < TMAX). */
inline commit(kind, spent) {
    now++;
    stream_kind[now] = kind;
    stream_inputs[now] = spent;
    live = live & ~spent;
    if
    :: kind == TX_PAY -> committed++
    :: else -> skip
    fi
}

/* Submissions that can never commit any more are forgotten: an input archived, or past their
 * deadline when no late commit is left. */
inline prune() {
    for (i : 0 .. PENDING - 1) {
        if
        :: pending_live[i] && ((pending_inputs[i] & live) != pending_inputs[i]
                               || (now >= pending_deadline[i] && late == 0)) ->
            pending_live[i] = false; pending_inputs[i] = 0; pending_deadline[i] = 0;
            pending_fence[i] = false
        :: else -> skip
        fi
    }
}

/* LedgerCommands.submit_transfer, as the ledger answers it. ok: the worker got an answer that
 * it committed (the correct code ignores the answer either way). */
inline submit(spent, deadline, is_fence, ok) {
    ok = false;
    if
    :: (spent & live) == spent && now + 1 <= deadline && now < TMAX ->
        /* commits in time; its answer arrives, or is lost (a fault) */
        commit((is_fence -> TX_FENCE : TX_PAY), spent);
        if
        :: ok = true; STEP("call-commit")
        :: faults > 0 -> faults--; STEP("call-commit-unanswered")
        fi
    :: (spent & live) != spent || now + 1 > deadline || now >= TMAX ->
        STEP("call-reject")                     /* rejected: an input archived, or too late */
    :: faults > 0 && (spent & live) == spent ->
        faults--; STEP("call-reject-fault")     /* rejected anyway (a fault) */
    :: faults > 0 && (spent & live) == spent ->
        /* lost: no answer, and it may still commit later */
        faults--;
        if
        :: !pending_live[0] -> i = 0
        :: else -> i = 1
        fi;
        pending_live[i] = true; pending_inputs[i] = spent;
        pending_deadline[i] = deadline; pending_fence[i] = is_fence;
        STEP("call-lost")
    fi
}

/* Withdrawal.credit_back, posted (withdrawal_refunded). */
inline refund() {
    refunds++;
    status = FAILED;
    inputs = 0;
    anchor = NONE
}

/* withdrawal_worker._settle: ingestion has passed trec_tgt and saw no transfer of the record. */
inline settle() {
    unsent = (status == RESERVED);
    step = (unsent -> 0 : 1);
    /* repo.release(record.id), then reserve([anchor]) again: it is anchored if ingestion has not
     * seen it archived (a transaction that is not the record's spent it). */
    anchored = (anchor != NONE && (known_active & (1 << anchor)) != 0);
    final = (fenced || (!unsent && attempt >= AMAX));
#ifdef MUTANT_RETRY_FRESH_INPUTS
    /* The naive retry: the next attempt chooses its inputs afresh (with no attempt left, the
     * fence still takes the anchor). */
    anchored = anchored && final;
#endif
    if
    :: !anchored && !final ->
        status = QUEUED; attempt = attempt + step; inputs = 0; anchor = NONE
    :: anchored && !final ->
        status = QUEUED; attempt = attempt + step; inputs = 1 << anchor
#ifdef MUTANT_REFUND_WITHOUT_FENCE
    :: final ->
        /* The naive refund: the last attempt's deadline has passed, so credit back. */
        refund()
#else
    :: final && anchored && may_have_left ->
        status = RESERVED; attempt = attempt + step; inputs = 1 << anchor;
        trec_tgt = now + SPAN; fenced = true
    :: final && !(anchored && may_have_left) ->
        refund()
#endif
    fi
}

/* The withdrawal workers: stateless, everything they know is in the DB. */
active [WORKERS] proctype worker() {
    byte my_attempt, my_inputs, my_deadline;
    bool my_fence, ok;
    bool unsent, anchored, final;
    byte step, h, i;
end_idle:
    do
    :: atomic {   /* settle_expired: claim(AWAITING_OUTCOME_STATUSES, trec_tgt <= record time) */
        settle_claimable && cursor > 0 && trec_tgt <= cursor ->
        settle();
        STEP("settle");
        unsent = false; anchored = false; final = false; step = 0
    }
    :: atomic {   /* reserve_queued: _drop_spent_anchor, then _try_reserve */
        status == QUEUED ->
        if
        :: anchor != NONE && (known_active & (1 << anchor)) == 0 ->
            anchor = NONE; inputs = 0          /* its anchor was spent elsewhere: afresh */
        :: else -> skip
        fi;
        if
        :: anchor != NONE ->
            inputs = 1 << anchor; status = RESERVED; trec_tgt = now + SPAN
        :: anchor == NONE ->
            /* select_inputs over the holdings ingestion shows live, not reserved */
            if
            :: (known_active & 1) -> h = 0
            :: (known_active & 2) -> h = 1
            :: known_active == 0 -> h = NONE   /* none: the record waits */
            fi;
            if
            :: h != NONE ->
                anchor = h; inputs = 1 << h; status = RESERVED; trec_tgt = now + SPAN
            :: else -> skip
            fi;
            h = 0
        fi;
        STEP("reserve")
    }
    :: atomic {   /* submit_reserved: claim, status submitting, committed before any call */
        status == RESERVED && !hold_in_force ->
        if
        :: hold != 0 -> hold = 0                /* ingestion has passed it */
        :: else -> skip
        fi;
        status = SUBMITTING;
        my_attempt = attempt; my_inputs = inputs; my_deadline = trec_tgt; my_fence = fenced;
        in_hand++;
        STEP("claim")
    };
        if
        :: atomic { crashes > 0 -> crashes--; in_hand--; STEP("crash"); goto forget }  /* before the call */
        :: atomic {
            /* (An option never starts with an if that has an else: spin would take that else
             * only when the crash option is not executable either.) */
            ok = false;
            /* _submit_fence sends nothing when ingestion shows the anchor archived */
            if
            :: my_fence && (known_active & my_inputs) != my_inputs -> STEP("call-fence-not-sent")
            :: else -> submit(my_inputs, my_deadline, my_fence, ok)
            fi;
            prune()
        }
        fi;
        if
        :: atomic { crashes > 0 -> crashes--; in_hand--; STEP("crash"); goto forget }  /* before recording */
        :: atomic {
            in_hand--;
#ifdef MUTANT_REFUND_ON_COMMAND_ERROR
            /* The naive answer to an error: credit back at once. */
            if
            :: !ok && !my_fence && status == SUBMITTING && attempt == my_attempt -> refund()
            :: else -> skip
            fi;
#endif
            /* update_many(done, expected_status="submitting", same_attempt=True) */
            if
#ifdef MUTANT_RECORD_ANY_ATTEMPT
            /* Without same_attempt: the attempt this worker sent is written back over a later
             * one another worker has claimed meanwhile. */
            :: status == SUBMITTING ->
                status = SUBMITTED; attempt = my_attempt; inputs = my_inputs;
                trec_tgt = my_deadline; fenced = my_fence;
                anchor = (my_inputs == 1 -> 0 : 1)
#else
            :: status == SUBMITTING && attempt == my_attempt -> status = SUBMITTED
#endif
            :: else -> skip
            fi;
            STEP("record")
        }
        fi;
forget:
        atomic { my_attempt = 0; my_inputs = 0; my_deadline = 0; my_fence = false; ok = false }
    od
}

/* Ingestion: reads the stream in order, one item (a transaction or a checkpoint) per step,
 * and commits what it booked with its cursor. */
active proctype ingestion() {
    byte kind, spent;
end_idle:
    do
    :: atomic {
        cursor < now ->
        cursor++;
        kind = stream_kind[cursor];
        spent = stream_inputs[cursor];
        if
        :: may_forget(cursor) -> stream_kind[cursor] = 0; stream_inputs[cursor] = 0
        :: else -> skip
        fi;
        known_active = known_active & ~spent;
        if
        :: kind == TX_PAY && !finished ->
            /* a transfer of any attempt completes the record; its inputs are released */
            status = COMPLETED; paid_booked++; inputs = 0; anchor = NONE; fenced = false
        :: kind == TX_PAY && finished ->
            paid_twice_alert = true             /* to suspense, with a critical alert */
        :: kind == TX_FENCE && awaiting ->
            refund()                            /* the fence committed: credited back */
        :: kind == TX_FENCE && !awaiting ->
            skip                                /* withdrawal_fence_unexpected */
        :: else -> skip
        fi;
        STEP("ingest");
        kind = 0; spent = 0
    }
    od
}

/* Record time advancing by checkpoints; submissions lost earlier committing now (in time, or
 * late); other transactions spending a holding. */
active proctype ledger() {
    byte i, h;
end_idle:
    do
    :: atomic {
        now < TMAX && tick_allowed -> now++; stream_kind[now] = 0; stream_inputs[now] = 0; prune();
        STEP("tick")
    }
    :: atomic {
        now < TMAX && (pending_live[0] || pending_live[1]) ->
        if
        :: pending_live[0] -> i = 0
        :: pending_live[1] -> i = 1
        fi;
        if
        :: now + 1 > pending_deadline[i] -> late--; h = 1    /* after its max_record_time */
        :: else -> h = 0
        fi;
        commit((pending_fence[i] -> TX_FENCE : TX_PAY), pending_inputs[i]);
        if
        :: h == 1 -> STEP("late-commit")
        :: else -> STEP("pending-commit")
        fi;
        h = 0;
        pending_live[i] = false; pending_inputs[i] = 0; pending_deadline[i] = 0;
        pending_fence[i] = false;
        prune();
        i = 0
    }
    :: atomic {
        now < TMAX && others > 0 && live != 0 ->
        others--;
        if
        :: (live & 1) -> h = 1
        :: (live & 2) -> h = 2
        fi;
        commit(TX_OTHER, h);
        STEP("other-spend");
        prune();
        h = 0
    }
    od
}

#ifdef RESTORE
/* A backup of the Integration DB, and later its restore, then hold_until_safe. */
mtype saved_status;
byte saved_attempt, saved_anchor, saved_inputs, saved_trec_tgt, saved_known_active;
byte saved_refunds, saved_paid_booked;
bool saved_fenced;

active proctype operator() {
    atomic {
        saved_status = status; saved_attempt = attempt; saved_anchor = anchor;
        saved_inputs = inputs; saved_trec_tgt = trec_tgt; saved_fenced = fenced;
        saved_known_active = known_active; saved_cursor = cursor; saved_refunds = refunds;
        saved_paid_booked = paid_booked; phase = 1;
        STEP("backup")
    };
    atomic {
        in_hand == 0 ->   /* the workers are stopped for the restore */
        status = saved_status; attempt = saved_attempt; anchor = saved_anchor;
        inputs = saved_inputs; trec_tgt = saved_trec_tgt; fenced = saved_fenced;
        known_active = saved_known_active; cursor = saved_cursor; refunds = saved_refunds;
        paid_booked = saved_paid_booked; phase = 2;
#ifndef MUTANT_RESTORE_WITHOUT_HOLD
        /* hold_until_safe: the latest trec_tgt the DB knows, or now + the span */
        hold = now + SPAN;
        if
        :: awaiting && trec_tgt > hold -> hold = trec_tgt
        :: else -> skip
        fi;
#endif
        STEP("restore")
    }
}
#endif

/* The safety properties, checked in every reachable state (each its own assertion, so that a
 * counterexample names the one it breaks; -DCHECK_ONE_TRANSFER or -DCHECK_NO_REFUND_OF_PAID
 * checks one alone, both are checked otherwise). */
#if !defined(CHECK_ONE_TRANSFER) && !defined(CHECK_NO_REFUND_OF_PAID)
#define CHECK_ONE_TRANSFER
#define CHECK_NO_REFUND_OF_PAID
#endif
active proctype monitor() {
end_watch:
    if
#ifdef CHECK_ONE_TRANSFER
    :: atomic { !one_transfer -> assert(one_transfer) }
    :: atomic { !(paid_booked <= 1) -> assert(paid_booked <= 1) }
#endif
#ifdef CHECK_NO_REFUND_OF_PAID
    :: atomic { !no_refund_of_paid -> assert(no_refund_of_paid) }
    :: atomic { !(refunds <= 1) -> assert(refunds <= 1) }
#endif
    fi
}

/* A test's probe (-DREACH_...): spin reports a state of the situation named as an assertion
 * violation, which shows that the checks reach a situation the properties must survive (a proof
 * over a model that never gets there would say little). */
#if defined(REACH_LATE_COMMIT_AFTER_RETRY)
#define REACHABLE (late == 0 && committed == 1 && attempt == 2)
#elif defined(REACH_RETRY_COMPLETES)
#define REACHABLE (status == COMPLETED && attempt == 2 && late == 1)
#elif defined(REACH_FENCE_CREDITS_BACK)
#define REACHABLE (status == FAILED && fenced && refunds == 1)
#elif defined(REACH_TWO_CLAIMS)
#define REACHABLE (in_hand == 2)
#elif defined(REACH_STALE_CLAIM)
#define REACHABLE (in_hand == 2 && status == SUBMITTING && attempt == 2)
#elif defined(REACH_ANCHOR_SPENT_ELSEWHERE_THEN_PAID)
#define REACHABLE (others == 0 && (known_active & 1) == 0 && status == COMPLETED && committed == 1)
#elif defined(REACH_RESTORED_DB_COMPLETES)
#define REACHABLE (phase == 2 && saved_status != COMPLETED && status == COMPLETED && hold != 0)
#endif
#ifdef REACHABLE
active proctype probe() {
end_probe:
    atomic { REACHABLE -> assert(false) }
}
#endif

#ifdef TIMELY
/* A run that stops (every process blocked: time is up) is extended by this idle step (taken
 * only then: spin's timeout), so that
 * the liveness search under weak fairness sees it as an infinite run (pan -f does not extend
 * such runs by itself): a record left unsettled at the end is then a counterexample. */
active proctype stutter() {
end_idle:
    do
    :: timeout -> skip
    od
}
#endif

/* Every withdrawal is eventually completed (paid once) or failed and credited back, for good. */
ltl settles { <> [] settled }
