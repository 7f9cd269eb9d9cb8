/*
 * Redemption and payout: the burn of iSTSi, the custody payout (a batch recorded before it is
 * sent, broadcast, fee-bumped by RBF, mined and confirmed), reorgs, crashes between broadcast and
 * record, and the compensation by re-mint (or refund) when the payout can never be paid.
 *
 * Code modelled (src/sluice/services/):
 *   issuance_redeem.burn_step      the burn recorded (issuance:<op>:burn) before it is sent, sent
 *                                  with that id as the ledger command id (deduplicated), the
 *                                  answer may be lost and the step runs again.
 *   issuance_redeem.payout_step    request_payout with the id redeem:<op>: a second request
 *                                  answers the first.
 *   issuance_redeem.confirm_step   completed -> done; _unpaid_for_good (cancelled) -> remint;
 *                                  otherwise wait.
 *   issuance_redeem.remint_step    reads the payout again and re-mints only while it can never be
 *                                  paid (record_mint, send_mint with issuance:<op>:remint).
 *   issuance_redeem.compensate     refund when no burn (a fence written failed), refused while
 *                                  the burn's outcome is unknown; after a burn: the payout is
 *                                  requested if missing, cancelled while not batched
 *                                  (btc_payouts.cancel_payout, a conditional update), and the
 *                                  re-mint follows only when it is then unpaid for good.
 *   issuance_router                one step (or the operator's compensation) at a time on an
 *                                  operation: its lease, the `claim` below.
 *   btc_payout_recording._record_batch
 *                                  a queued payout enters a batch in the transaction that records
 *                                  its signed transaction and reserves its inputs, before it is
 *                                  sent; then _send (broadcast, then _record_sent).
 *   btc_payout_batches._bump_one   a fee bump: a new version spending the very same inputs,
 *                                  recorded, then broadcast (it replaces the old one by RBF).
 *   btc_payout_worker._follow_one / _mined / _reorged / _reopened / _ensure_sent
 *                                  all inputs spent by one of the batch's versions: mined, and
 *                                  confirmed at confirmations_min (payouts completed); spends
 *                                  cleared by a reorg: back to broadcast (a confirmed batch is
 *                                  reopened); a signed batch found by the next round: recorded as
 *                                  sent if the node holds a version, else the recorded
 *                                  transaction is sent; a broadcast batch whose latest version
 *                                  the node does not hold: that very transaction is sent again.
 *
 * The node and chain: a transaction spends one custody coin; transactions spending the same coin
 * conflict and at most one of them is in the chain; a broadcast conflicting with a mempool
 * transaction replaces it (a bump pays more), one conflicting with the chain is refused; the
 * miner mines any mempool transaction; a mined one reaches confirmations_min (DEEP); a reorg
 * (bounded) takes a mined or confirmed transaction out, back to the mempool or dropped; an
 * eviction (bounded) drops a mempool transaction. The watcher is taken to record each block's
 * spends as the block is made (its lag only delays the worker), and one payout worker runs (two
 * workers are kept apart by the conditional updates, not modelled here). A reorg of the
 * deposits a batch spends (orphaned batches and their release) is not modelled.
 *
 * Bounds (defaults; -D to change): one redemption, NCOINS custody coins (2), CRASHES (1: of the
 * worker between broadcast and record or after a bump's record, or of the router after a
 * command was sent), BUMPS (1), REORGS (1, shallow or deep), EVICTIONS (1), at most MAXTX
 * signed transactions (4) and NB batches (2).
 *
 * Properties:
 *   paid_once        (assertion) never two transactions paying the payout in the chain at once:
 *                    refuted by MUTANT_REBUILD_AFTER_CRASH and by MUTANT_BUMP_OTHER_COIN.
 *   remint_xor_paid  (assertion) never both a re-mint sent and a transaction paying the payout
 *                    ever mined (nor a refund and a burn): refuted by MUTANT_COMPENSATE_UNCHECKED.
 *   done             (ltl, weak fairness) the redemption is eventually completed or compensated:
 *                    refuted by MUTANT_NO_REBROADCAST.
 *
 * Mutants:
 *   MUTANT_REBUILD_AFTER_CRASH   a signed batch found after a crash is taken as never sent: its
 *                                payout is queued again and paid by a new batch from other coins.
 *   MUTANT_BUMP_OTHER_COIN       a fee bump spends another coin than the version it replaces, so
 *                                the two do not conflict (both can be mined).
 *   MUTANT_COMPENSATE_UNCHECKED  the compensation and the remint step do not look at the
 *                                payout's final state (no cancel, no re-read): re-mint while a
 *                                batch pays it.
 *   MUTANT_NO_REBROADCAST        a broadcast batch the node no longer holds (evicted, or dropped
 *                                by a reorg) is not sent again.
 *
 * Events for the replay against the code (tests/verification/test_issuance_conformance.py) are
 * printed as "EV <name> [n]" lines.
 */

#ifndef NCOINS
#define NCOINS 2
#endif
#ifndef CRASHES
#define CRASHES 1
#endif
#ifndef BUMPS
#define BUMPS 1
#endif
#ifndef REORGS
#define REORGS 1
#endif
#ifndef EVICTIONS
#define EVICTIONS 1
#endif
#define MAXTX 4
#define NB 2

/* a transaction on the node */
#define TX_NONE    0
#define TX_MEMPOOL 1
#define TX_MINED   2   /* in a block, under confirmations_min */
#define TX_DEEP    3   /* at confirmations_min or more */

/* btc_batches.status */
#define B_NONE      0
#define B_SIGNED    1
#define B_BROADCAST 2
#define B_MINED     3
#define B_CONFIRMED 4
#define B_ABANDONED 5   /* MUTANT_REBUILD_AFTER_CRASH only */

/* btc_payouts.status */
#define P_NONE      0
#define P_QUEUED    1
#define P_BATCHED   2
#define P_BROADCAST 3
#define P_MINED     4
#define P_COMPLETED 5
#define P_CANCELLED 6

/* burn and re-mint records */
#define R_NONE      0
#define R_SUBMITTED 1
#define R_COMMITTED 2
#define R_FAILED    3   /* the refund's fence */

/* the operation's step */
#define S_BURN    0
#define S_PAYOUT  1
#define S_CONFIRM 2
#define S_REMINT  3
#define S_DONE    4
#define S_STUCK   5

#define SENT     1
#define REJECTED 2

byte tx_state[MAXTX];
byte tx_coin[MAXTX];
byte tx_batch[MAXTX];
byte ntx = 0;
byte spent_by[NCOINS];     /* the transaction (index + 1) spending the coin in the chain */
byte mined_count = 0;      /* ghost: transactions paying the payout in the chain */
bool ever_paid = 0;        /* ghost: one was mined once */

byte b_status[NB];
byte b_coin[NB];
byte b_latest[NB];
byte b_bumps[NB];
byte nb = 0;
byte reserved = 0;         /* coins reserved by a batch (bits) */

byte p_status = P_NONE;

byte burn_rec = R_NONE;
bool ledger_burn = 0;      /* the ledger committed the burn's command id */
byte remint_rec = R_NONE;
bool ledger_remint = 0;
bool refunded = 0;

byte op_step = S_BURN;
byte claim = 0;            /* the router's lease: 1 a step, 2 the operator's compensation */

byte crashes_left = CRASHES;
byte reorgs_left = REORGS;
byte evictions_left = EVICTIONS;

ltl done { <> (op_step == S_DONE) }

/* node.sendrawtransaction: already held -> sent; its coin spent in the chain by another ->
   refused; otherwise into the mempool, replacing what conflicts there (RBF) */
inline broadcast(t, result) {
  if
  :: tx_state[t] != TX_NONE -> result = SENT
  :: tx_state[t] == TX_NONE && spent_by[tx_coin[t]] != 0 -> result = REJECTED
  :: tx_state[t] == TX_NONE && spent_by[tx_coin[t]] == 0 ->
     j = 0;
     do
     :: j < ntx ->
        if
        :: j != t && tx_state[j] == TX_MEMPOOL && tx_coin[j] == tx_coin[t] -> tx_state[j] = TX_NONE
        :: else -> skip
        fi;
        j++
     :: else -> break
     od;
     tx_state[t] = TX_MEMPOOL;
     result = SENT
  fi
}

/* ---- the chain ------------------------------------------------------------------------------ */

inline mine(t) {
  printf("EV mine %d\n", t);
  tx_state[t] = TX_MINED;
  spent_by[tx_coin[t]] = t + 1;
  mined_count++;
  ever_paid = 1;
  j = 0;
  do
  :: j < ntx ->
     if
     :: j != t && tx_state[j] == TX_MEMPOOL && tx_coin[j] == tx_coin[t] -> tx_state[j] = TX_NONE
     :: else -> skip
     fi;
     j++
  :: else -> break
  od
}

inline unmine(t) {
  spent_by[tx_coin[t]] = 0;
  mined_count--;
  if
  :: tx_state[t] = TX_MEMPOOL   /* back to the node's mempool */
  :: tx_state[t] = TX_NONE      /* dropped */
  fi
}

#define CHAIN_ACTIONS(t) \
  :: atomic { tx_state[t] == TX_MEMPOOL && spent_by[tx_coin[t]] == 0 -> mine(t) } \
  :: atomic { tx_state[t] == TX_MINED -> tx_state[t] = TX_DEEP; printf("EV deep %d\n", t) } \
  :: atomic { reorgs_left > 0 && tx_state[t] >= TX_MINED -> reorgs_left--; printf("EV reorg %d\n", t); unmine(t) } \
  :: atomic { evictions_left > 0 && tx_state[t] == TX_MEMPOOL -> evictions_left--; tx_state[t] = TX_NONE; printf("EV evict %d\n", t) }

active proctype Chain() {
  byte j;
end:
  do
  CHAIN_ACTIONS(0)
  CHAIN_ACTIONS(1)
  CHAIN_ACTIONS(2)
  CHAIN_ACTIONS(3)
  od
}

/* ---- the payout worker (btc_payout_worker.PayoutWorker) --------------------------------------- */

/* _record_sent: a signed batch becomes broadcast (its payouts too); a broadcast one stays */
inline record_sent(b) {
  if
  :: b_status[b] == B_SIGNED ->
     b_status[b] = B_BROADCAST;
     if
     :: p_status == P_BATCHED -> p_status = P_BROADCAST
     :: else -> skip
     fi
  :: else -> skip
  fi
}

/* _send: broadcast the recorded latest version, then record it; a crash may come between */
inline send_and_record(b) {
  atomic { t = b_latest[b]; broadcast(t, result); printf("EV broadcast %d\n", t) };
  if
  :: atomic { crashes_left > 0 -> crashes_left-- }   /* crashed before recording */
  :: atomic { record_sent(b); printf("EV recorded %d\n", b) }
  fi
}

/* the batch's coin is spent in the chain by one of its own versions */
#define SPENT_BY_ITS_VERSION(b) \
  (spent_by[b_coin[b]] != 0 && tx_batch[spent_by[b_coin[b]] - 1] == b)
#define SPENDER(b) (spent_by[b_coin[b]] - 1)
#define FOLLOWED(b) (b_status[b] >= B_SIGNED && b_status[b] <= B_CONFIRMED)

#ifdef MUTANT_NO_REBROADCAST
#define REBROADCAST_ENABLED(b) false
#else
#define REBROADCAST_ENABLED(b) \
  (b_status[b] == B_BROADCAST && spent_by[b_coin[b]] == 0 && tx_state[b_latest[b]] != TX_MEMPOOL)
#endif

/* a version of batch b is in the mempool */
#define in_mempool(b) \
  ((tx_batch[0] == b && tx_state[0] == TX_MEMPOOL && ntx > 0) \
   || (tx_batch[1] == b && tx_state[1] == TX_MEMPOOL && ntx > 1) \
   || (tx_batch[2] == b && tx_state[2] == TX_MEMPOOL && ntx > 2) \
   || (tx_batch[3] == b && tx_state[3] == TX_MEMPOOL && ntx > 3))

inline follow(b) {
  if
  /* _mined: confirmed at confirmations_min (payouts completed), else mined */
  :: atomic {
       FOLLOWED(b) && SPENT_BY_ITS_VERSION(b) && tx_state[SPENDER(b)] == TX_DEEP && b_status[b] != B_CONFIRMED ->
       b_status[b] = B_CONFIRMED; p_status = P_COMPLETED
     }
  :: atomic {
       FOLLOWED(b) && SPENT_BY_ITS_VERSION(b) && tx_state[SPENDER(b)] == TX_MINED && b_status[b] != B_MINED ->
       b_status[b] = B_MINED;
       if
       :: p_status == P_BATCHED || p_status == P_BROADCAST -> p_status = P_MINED
       :: else -> skip
       fi
     }
  /* _reorged / _reopened: its spend cleared, back to broadcast, then _ensure_sent */
  :: atomic {
       (b_status[b] == B_MINED || b_status[b] == B_CONFIRMED) && spent_by[b_coin[b]] == 0 ->
       b_status[b] = B_BROADCAST; p_status = P_BROADCAST
     };
     if
     :: tx_state[b_latest[b]] != TX_MEMPOOL -> send_and_record(b)
     :: else -> skip
     fi
  /* _ensure_sent of a signed batch (a crash, or an unanswered broadcast) */
  :: atomic { b_status[b] == B_SIGNED && spent_by[b_coin[b]] == 0 ->
#ifdef MUTANT_REBUILD_AFTER_CRASH
       /* taken as never sent: its payout queued again, its coin still reserved */
       b_status[b] = B_ABANDONED; p_status = P_QUEUED
     }
#else
       skip
     };
     if
     :: atomic { in_mempool(b) -> record_sent(b) }
     :: !in_mempool(b) -> send_and_record(b)
     fi
#endif
  /* _ensure_sent of a broadcast batch the node does not hold: the same transaction again */
  :: REBROADCAST_ENABLED(b) -> send_and_record(b)
  :: else -> skip   /* another process moved it since FOLLOW_ENABLED was read */
  fi
}

#define FOLLOW_ENABLED(b) \
  (b < nb && ( \
    (FOLLOWED(b) && SPENT_BY_ITS_VERSION(b) && tx_state[SPENDER(b)] == TX_DEEP \
     && b_status[b] != B_CONFIRMED) \
    || (FOLLOWED(b) && SPENT_BY_ITS_VERSION(b) && tx_state[SPENDER(b)] == TX_MINED \
     && b_status[b] != B_MINED) \
    || ((b_status[b] == B_MINED || b_status[b] == B_CONFIRMED) && spent_by[b_coin[b]] == 0) \
    || (b_status[b] == B_SIGNED && spent_by[b_coin[b]] == 0) \
    || REBROADCAST_ENABLED(b)))

/* _bump_one: a new version of the same coin, recorded, then broadcast (replacing the old) */
#define BUMP_ENABLED(b) \
  (b < nb && b_status[b] == B_BROADCAST && spent_by[b_coin[b]] == 0 \
   && tx_state[b_latest[b]] == TX_MEMPOOL && b_bumps[b] < BUMPS && ntx < MAXTX)

active proctype Worker() {
  byte b, t, j, c, result;
end:
  do
  /* make_batches -> _record_batch: the payout into a batch with a free coin, recorded before
     it is sent, then sent (a crash after the record leaves it signed) */
  :: atomic {
       p_status == P_QUEUED && nb < NB && ntx < MAXTX && reserved != (1 << NCOINS) - 1 ->
       c = 0;
       do
       :: reserved & (1 << c) -> c++
       :: else -> break
       od;
       b = nb; nb++;
       b_coin[b] = c; reserved = reserved | (1 << c);
       t = ntx; ntx++;
       tx_coin[t] = c; tx_batch[t] = b; tx_state[t] = TX_NONE;
       b_latest[b] = t; b_status[b] = B_SIGNED; p_status = P_BATCHED;
       printf("EV batched %d\n", b)
     };
     if
     :: atomic { crashes_left > 0 -> crashes_left-- }   /* crashed after the record */
     :: send_and_record(b)
     fi
  :: FOLLOW_ENABLED(0) -> b = 0; follow(b)
  :: FOLLOW_ENABLED(1) -> b = 1; follow(b)
  :: atomic {
       BUMP_ENABLED(0) || BUMP_ENABLED(1) ->
       if
       :: BUMP_ENABLED(0) -> b = 0
       :: BUMP_ENABLED(1) -> b = 1
       fi;
       t = ntx; ntx++;
       tx_coin[t] = b_coin[b]; tx_batch[t] = b; tx_state[t] = TX_NONE;
#ifdef MUTANT_BUMP_OTHER_COIN
       /* the new version funded by another coin: it does not conflict with the old one */
       c = 0;
       do
       :: c < NCOINS && (reserved & (1 << c)) -> c++
       :: else -> break
       od;
       if
       :: c < NCOINS -> tx_coin[t] = c; reserved = reserved | (1 << c)
       :: else -> skip
       fi;
#endif
       b_latest[b] = t; b_bumps[b]++
     };
     if
     :: atomic { crashes_left > 0 -> crashes_left-- }   /* crashed before sending the bump */
     :: atomic { broadcast(t, result) }
     fi
  od
}

/* ---- the redemption operation (issuance_redeem.DEFINITION under issuance_router) ------------ */

active proctype Router() {
end:
  do
  /* burn_step: recorded, sent (the ledger deduplicates its command id), its answer recorded */
  :: atomic { claim == 0 && op_step == S_BURN -> claim = 1;
       if
       :: burn_rec == R_NONE -> burn_rec = R_SUBMITTED
       :: else -> skip
       fi
     };
     atomic { ledger_burn = 1 };
     if
     :: atomic { crashes_left > 0 -> crashes_left--; claim = 0 }   /* answer lost: run again */
     :: atomic { burn_rec = R_COMMITTED; op_step = S_PAYOUT; claim = 0; printf("EV burned\n") }
     fi
  /* payout_step: request_payout (the same id answers the first request) */
  :: atomic { claim == 0 && op_step == S_PAYOUT ->
       if
       :: p_status == P_NONE -> p_status = P_QUEUED
       :: else -> skip
       fi;
       op_step = S_CONFIRM;
       printf("EV payout_requested\n")
     }
  /* confirm_step: completed -> done; can never be paid -> remint; otherwise it waits */
  :: atomic { claim == 0 && op_step == S_CONFIRM && (p_status == P_COMPLETED || p_status == P_CANCELLED) ->
       if
       :: p_status == P_COMPLETED -> op_step = S_DONE; printf("EV completed\n")
       :: else -> op_step = S_REMINT; printf("EV to_remint\n")
       fi
     }
  /* remint_step: the payout read again; recorded, sent, its answer recorded */
  :: atomic { claim == 0 && op_step == S_REMINT -> claim = 1;
#ifndef MUTANT_COMPENSATE_UNCHECKED
       if
       :: p_status != P_CANCELLED -> op_step = S_STUCK; claim = 0; goto next
       :: else -> skip
       fi;
#endif
       if
       :: remint_rec == R_NONE -> remint_rec = R_SUBMITTED
       :: else -> skip
       fi
     };
     atomic { ledger_remint = 1 };
     if
     :: atomic { crashes_left > 0 -> crashes_left--; claim = 0 }   /* answer lost: run again */
     :: atomic { remint_rec = R_COMMITTED; op_step = S_DONE; claim = 0; printf("EV reminted\n") }
     fi
  od;
next:
  goto end
}

/* ---- the operator's compensation (issuance_redeem.compensate), once, at any time ------------ */

active proctype Operator() {
end:
  atomic { claim == 0 && op_step != S_DONE && op_step != S_STUCK -> claim = 2 };
  if
  :: atomic { burn_rec == R_NONE || burn_rec == R_FAILED ->
       /* _refund: the burn fenced as failed, the customer's iSTSi given back */
       burn_rec = R_FAILED; refunded = 1; op_step = S_DONE; claim = 0; printf("EV refunded\n") }
  :: atomic { burn_rec == R_SUBMITTED -> claim = 0 }   /* refused: its outcome is unknown */
  :: burn_rec == R_COMMITTED ->
#ifdef MUTANT_COMPENSATE_UNCHECKED
     atomic {
       if
       :: p_status != P_COMPLETED -> op_step = S_REMINT; printf("EV compensated\n")
       :: else -> skip
       fi;
       claim = 0
     }
#else
     atomic {
       if
       :: p_status == P_NONE -> p_status = P_QUEUED   /* requested, to be cancelled at once */
       :: else -> skip
       fi
     };
     atomic {
       if
       :: p_status == P_QUEUED -> p_status = P_CANCELLED; op_step = S_REMINT;   /* cancel_payout */
          printf("EV compensated\n")
       :: p_status == P_CANCELLED -> op_step = S_REMINT; printf("EV compensated\n")
       :: else -> printf("EV compensation_refused\n")   /* completed, or batched: refused (41) */
       fi;
       claim = 0
     }
#endif
  fi
}

/* paid_once and remint_xor_paid, checked in every state */
active proctype Invariants() {
end:
  atomic {
    !(mined_count <= 1 && !(ledger_remint && ever_paid) && !(refunded && ledger_burn)) ->
    assert(mined_count <= 1);                   /* paid_once */
    assert(!(ledger_remint && ever_paid));      /* remint_xor_paid */
    assert(!(refunded && ledger_burn))          /* refund_xor_burn */
  }
}
