/*
 * The mint guard: concurrent mints (deposits' and a redemption's re-mint), a redemption and
 * operators' payouts, against confirmed reserves, with deposits removed (and brought back) by
 * reorgs.
 *
 * Code modelled (src/sluice/services/ unless said otherwise):
 *   mint_guard.record_mint      guard checked and mint recorded in ONE transaction, under
 *                               IssuanceRepository.lock_guard (the atomic block in record_mint
 *                               below); a mint recorded under the same id is answered as it is;
 *                               halted -> MintingHaltedError (the step waits); check refused ->
 *                               MintNotReadyError (waits); guard refused -> minting halted,
 *                               MintGuardError (the step fails: stuck).
 *   mint_guard.send_mint        the ledger commits a command id once (its deduplication); the
 *                               answer may be lost and the step runs again (retry).
 *   mint_guard.resume_minting   an operator resumes (bounded by RESUMES).
 *   issuance_deposit.reserve    confirmed -> credited (btc_watch.mark_credited).
 *   issuance_deposit.mint       record_mint with _reserve_still_credited as its check; the mint
 *                               record id is issuance:<operation id>:mint.
 *   issuance_intake.open_deposit_operations
 *                               the operation id is btc-deposit:<txid>:<vout> (the outpoint),
 *                               opened once, in the watcher's confirming transaction.
 *   issuance_intake.on_deposits_reorged
 *                               a credited deposit reorged halts minting in the rollback's
 *                               transaction.
 *   btc_watcher / store.bitcoin_watch_repository
 *                               reorged outputs are "reorged"; seen again they are confirmed, or
 *                               credited again when they had been credited (credited_at).
 *   btc_payouts.request_payout / _dips_into_backing
 *                               an operator's payout is checked under the guard's lock in the
 *                               transaction that inserts it: refused when supply + unminted
 *                               deposits + redemptions awaiting their re-mint > reserves -
 *                               pending - amount, whatever the supply; pending from then until
 *                               the watcher sees its batch's inputs spent.
 *   issuance_redeem.burn_step / remint_step and store.issuance_repository.guard_figures
 *                               supply = mints not failed - burns committed; reserves = custody
 *                               outputs confirmed or credited, unspent; pending = redemptions
 *                               burned, not at the remint step, whose payout's inputs the watcher
 *                               has not seen spent (spent and pending change together).
 *
 * Abstractions: amounts are whole units (a deposit 1, the redemption 1); the ledger's supply
 * (record_mint takes the larger of it and the records') is left out: every mint goes through
 * sluice here, so the records' supply is never below it. KYC and the credit step are left out
 * (they mint nothing). The redemption's payout is either paid (its inputs, the old coin, seen
 * spent; a reorg may undo that once) or can never be paid (the remint step); the payout protocol
 * itself is verification/redemption.pml. The guard's lock is a Promela atomic block.
 *
 * Bounds (defaults; -D to change): ND deposits of 1 unit (2), REDEMPTIONS (1, of the initial
 * supply of 1 backed by an old coin of 1), PAYOUTS operators' payouts of 1 unit (2), EXCESS
 * (1 unit of the exchange's own Bitcoin in custody), REORGS (1, of deposits or of the
 * redemption's payout), RESUMES (1), CRASHES (1: a mint whose answer is lost and whose step runs
 * again).
 *
 * Properties (assertions; pan -DSAFETY):
 *   P1 guard_at_commit   at every mint's commit, supply <= reserves - pending (the figures of
 *                        that very moment): refuted by MUTANT_GUARD_OUTSIDE_TX.
 *   P2 no_double_mint    no deposit has two mint records nor two ledger mints: refuted by
 *                        MUTANT_DEPOSIT_KEY.
 *   P3 backing           in every state supply <= reserves - pending + lost, where lost is what
 *                        reorged credited deposits held (each such reorg halts minting, asserted
 *                        where it happens): refuted by MUTANT_PAYOUT_CHECK_OUTSIDE_LOCK,
 *                        MUTANT_PAYOUT_ZERO_SUPPLY_EXEMPT and MUTANT_PAYOUT_REMINT_UNOWED (the
 *                        two gaps spin found in the operators' payout check as it was, see
 *                        _dips_into_backing below), and by MUTANT_DEPOSIT_KEY with
 *                        MUTANT_NO_GUARD (the guard keeps a double mint from breaking it).
 *
 * SKIP_P1 / SKIP_P2 leave that assertion out, to look at another property alone under a mutant.
 *
 * Mutants:
 *   MUTANT_GUARD_OUTSIDE_TX  record_mint reads the figures in a transaction of its own, before
 *                            the one that records the mint (two mints both pass).
 *   MUTANT_DEPOSIT_KEY       the deposit's operation (and so its mint record) is keyed by the
 *                            outpoint and its block, not the outpoint alone: a deposit a reorg
 *                            takes away and brings back opens a second operation.
 *   MUTANT_NO_GUARD          record_mint does not compare (for the P3 demonstration).
 *   MUTANT_PAYOUT_CHECK_OUTSIDE_LOCK
 *                            an operator's payout is checked on figures read before the
 *                            transaction that inserts it (two payouts both pass).
 *   MUTANT_NO_HALT_ON_REORG  a reorg of a credited deposit does not halt minting.
 *   MUTANT_PAYOUT_ZERO_SUPPLY_EXEMPT, MUTANT_PAYOUT_REMINT_UNOWED
 *                            the operators' payout check as it was (see below).
 *
 * Events for the replay against the code (tests/verification/test_issuance_conformance.py) are
 * printed as "EV <name> <args>" lines.
 */

#ifndef ND
#define ND 2
#endif
#ifndef REDEMPTIONS
#define REDEMPTIONS 1
#endif
#ifndef PAYOUTS
#define PAYOUTS 2
#endif
#ifndef EXCESS
#define EXCESS 1
#endif
#ifndef REORGS
#define REORGS 1
#endif
#ifndef RESUMES
#define RESUMES 1
#endif
#ifndef CRASHES
#define CRASHES 1
#endif

/* custody output status (btc_outputs.status) */
#define UNSEEN    0
#define CONFIRMED 1
#define CREDITED  2
#define REORGED   3

/* mint record status (issuance_mints.status) */
#define NONE      0
#define SUBMITTED 1
#define COMMITTED 2

#define REMINT_KEY (2 * ND)   /* the re-mint's record id, issuance:<op>:remint */
#define KEYS (2 * ND + 1)

byte dep[ND];               /* each deposit's custody output */
bool credited_at[ND];       /* btc_outputs.credited_at: it was credited once */
byte ops[ND];               /* operations opened for the deposit */
byte mint_rec[KEYS];        /* mint records by id */
bool ledger_cmd[KEYS];      /* the ledger's deduplication: command ids it committed */
byte recorded[ND];          /* ghost: mint records written for the deposit */
byte ledger_mints[ND];      /* ghost: mints the ledger committed for the deposit */

short supply = REDEMPTIONS;            /* iSTSi in circulation: the supply to start with */
short reserves = REDEMPTIONS + EXCESS; /* the old coin backing it, and the exchange's own */
short pending = 0;            /* pending redemptions and pending payouts */
short pending_redemptions = 0;
byte remint_owed = 0;          /* a redemption at its re-mint step whose re-mint is not recorded */
bool redemption_coin_held = 0; /* the redemption's batch reserves a coin the chain has not spent */
byte lost = 0;                /* ghost: units of credited deposits reorged out, not back */
bool halted = 0;

byte reorgs_left = REORGS;
byte resumes_left = RESUMES;
byte crashes_left = CRASHES;

/* guard_figures' unminted_deposits: deposits confirmed in the chain with no mint record */
#define UNMINTED_1(d) \
  ((d < ND && (dep[d] == CONFIRMED || dep[d] == CREDITED) && mint_rec[d] == NONE) -> 1 : 0)
#define UNMINTED (UNMINTED_1(0) + UNMINTED_1(1) + UNMINTED_1(2))

#define P1 (supply <= reserves - pending)
#define P3 (supply <= reserves - pending + lost)

/* issuance_intake.open_deposit_operations (in the confirming transaction) */
inline open_operation(d) {
#ifdef MUTANT_DEPOSIT_KEY
  if
  :: ops[d] < 2 -> run DepositOp(d, d + ND * ops[d]); ops[d]++
  :: else -> skip
  fi
#else
  if
  :: ops[d] == 0 -> run DepositOp(d, d); ops[d] = 1
  :: else -> skip
  fi
#endif
}

/* mint_guard.record_mint's comparison and insert, inside its transaction. `deposit` is the
   deposit the mint is for (ND for the re-mint). */
inline guard_and_insert(k, deposit) {
#if defined(MUTANT_NO_GUARD)
  if :: true -> goto insert_ok fi;
#elif defined(MUTANT_GUARD_OUTSIDE_TX)
  if
  :: seen_supply + 1 <= seen_cover -> goto insert_ok
  :: else -> goto refused
  fi;
#else
  if
  :: supply + 1 <= reserves - pending -> goto insert_ok
  :: else -> goto refused
  fi;
#endif
insert_ok:
  mint_rec[k] = SUBMITTED;
  supply++;
  if
  :: deposit < ND -> recorded[deposit]++
  :: else -> remint_owed = 0   /* the re-mint is in the supply from its record on */
  fi;
  printf("EV commit %d\n", k);
#ifndef SKIP_P1
  assert(P1);   /* P1 guard_at_commit */
#endif
  goto recorded_done;
refused:
  /* the guard refused: rolled back, minting halted (a transaction of its own), stuck */
  halted = 1;
  printf("EV breach %d\n", k);
  goto stuck;
recorded_done:
  skip
}

/* mint_guard.send_mint: the ledger commits the command id once; the answer may be lost */
inline send(k, deposit) {
  atomic {
    if
    :: mint_rec[k] == SUBMITTED && !ledger_cmd[k] ->
       ledger_cmd[k] = 1;
       if
       :: deposit < ND -> ledger_mints[deposit]++
       :: else -> skip
       fi
    :: else -> skip
    fi
  }
  if
  :: atomic { crashes_left > 0 -> crashes_left--; printf("EV lost_answer %d\n", k) };
     goto mint   /* IssuerOutcomeUnknownError: the step runs again */
  :: atomic { mint_rec[k] = COMMITTED; printf("EV sent %d\n", k) }   /* commit_mint */
  fi
}

/* The bitcoin_deposit operation of deposit d, mint record key k (issuance_deposit.DEFINITION);
   the router runs one step of it at a time (its lease). */
proctype DepositOp(byte d; byte k) {
  short seen_supply, seen_cover;
  /* issuance_deposit.reserve: confirmed -> credited; credited is accepted; otherwise wait */
end_reserve:
  atomic {
    (dep[d] == CONFIRMED || dep[d] == CREDITED) ->
    dep[d] = CREDITED; credited_at[d] = 1;
    printf("EV reserve %d\n", d)
  }
mint:
#ifdef MUTANT_GUARD_OUTSIDE_TX
  atomic { seen_supply = supply; seen_cover = reserves - pending; printf("EV read %d\n", k) }
#endif
  /* issuance_deposit.mint -> record_mint, under the guard's lock. Waits (the step answers
     wait and runs again) while minting is halted or the deposit is not credited, unless the
     record is committed already (answered as it is). */
end_mint:
  atomic {
    (mint_rec[k] == COMMITTED || (!halted && dep[d] == CREDITED)) ->
    if
    :: mint_rec[k] == COMMITTED -> goto done
    :: mint_rec[k] == SUBMITTED -> skip   /* answered as it is: sent again below */
    :: mint_rec[k] == NONE -> guard_and_insert(k, d)
    fi
  }
  send(k, d);
done:
  /* credit: ingestion books it (left out) */
  skip;
end_stuck:
stuck:
  skip
}

/* A deposit's custody output on the chain as the watcher records it (btc_watcher). */
proctype DepositChain(byte d) {
  atomic {
    dep[d] = CONFIRMED; reserves++;
    printf("EV confirm %d\n", d);
    open_operation(d)
  }
end:
  do
  :: atomic {
       reorgs_left > 0 && (dep[d] == CONFIRMED || dep[d] == CREDITED) ->
       reorgs_left--; reserves--;
       printf("EV reorg %d\n", d);
       if
       :: dep[d] == CREDITED ->
          lost++;
#ifndef MUTANT_NO_HALT_ON_REORG
          halted = 1;   /* issuance_intake.on_deposits_reorged */
#endif
          assert(halted)
       :: else -> skip
       fi;
       dep[d] = REORGED
     }
  :: atomic {
       dep[d] == REORGED ->
       reserves++;
       printf("EV readd %d\n", d);
       if
       :: credited_at[d] -> dep[d] = CREDITED; lost--
       :: else -> dep[d] = CONFIRMED
       fi;
       open_operation(d)
     }
  od
}

/* A redemption of the initial supply (issuance_redeem), as the guard's figures see it. */
proctype Redemption() {
  short seen_supply, seen_cover;
  byte d = ND;
  byte k = REMINT_KEY;
  /* burn_step, commit_burn: out of the supply, pending from then on */
  atomic { supply--; pending++; pending_redemptions++; printf("EV burn\n") }
  if
  :: /* the payout's batch mined: the watcher sees its inputs (the old coin) spent */
     atomic { reserves > 0 -> reserves--; pending--; pending_redemptions--; printf("EV paid\n") };
     if
     :: atomic {
          reorgs_left > 0 -> reorgs_left--; reserves++; pending++; pending_redemptions++;
          redemption_coin_held = 1;   /* back unspent, still reserved by its batch */
          printf("EV unpaid\n")
        };
        atomic {
          reserves--; pending--; pending_redemptions--; redemption_coin_held = 0;
          printf("EV paid\n")
        }
     :: skip
     fi;
     goto done
  :: /* the payout can never be paid: confirm_step moves to remint, no longer pending */
     atomic { pending--; pending_redemptions--; remint_owed = 1; printf("EV to_remint\n") }
  fi;
mint:
#ifdef MUTANT_GUARD_OUTSIDE_TX
  atomic { seen_supply = supply; seen_cover = reserves - pending; printf("EV read %d\n", k) }
#endif
  /* remint_step -> record_mint (no check of its own) */
end_remint:
  atomic {
    (mint_rec[k] == COMMITTED || !halted) ->
    if
    :: mint_rec[k] == COMMITTED -> goto done
    :: mint_rec[k] == SUBMITTED -> skip
    :: mint_rec[k] == NONE -> guard_and_insert(k, d)
    fi
  }
  send(k, d);
done:
  skip;
end_stuck:
stuck:
  skip
}

/* An operator's payout of one unit (btc_payouts.request_payout of kind "operator"): checked by
   _dips_into_backing under the guard's lock in the transaction that inserts it, pending from then
   until the watcher sees its batch's inputs spent (which takes them out of the reserves). */
/* What _dips_into_backing counts as owed: the supply, the deposits not minted yet and a
   redemption waiting for its re-mint (burned: out of the supply; at remint: no longer pending;
   its Bitcoin is the re-mint's), and every payout is checked. The rule before had two gaps
   that spin found, kept as mutants:
   - MUTANT_PAYOUT_ZERO_SUPPLY_EXEMPT: a payout not checked while the supply is 0 or less, which
     it also is once everything issued was burned for redemptions still to be paid: the payout
     may take the Bitcoin owed to them;
   - MUTANT_PAYOUT_REMINT_UNOWED: a redemption at its re-mint step counted nowhere, so the
     Bitcoin its re-mint needs looks like excess.
   (Narrowing the exemption to "nothing owed at all" is not enough: a reorg can undo a
   redemption's payout after an exempt payout was queued beyond the reserves.) */
#ifdef MUTANT_PAYOUT_REMINT_UNOWED
#define OWED (supply + UNMINTED)
#else
#define OWED (supply + UNMINTED + remint_owed)
#endif
#ifdef MUTANT_PAYOUT_ZERO_SUPPLY_EXEMPT
#define EXEMPT (supply <= 0)
#else
#define EXEMPT false
#endif

proctype OperatorPayout(byte n) {
  short seen_owed, seen_cover;
#ifdef MUTANT_PAYOUT_CHECK_OUTSIDE_LOCK
  atomic { seen_owed = OWED; seen_cover = reserves - pending - 1; printf("EV payout_read %d\n", n) }
#else
  skip;
#endif
  atomic {
#ifdef MUTANT_PAYOUT_CHECK_OUTSIDE_LOCK
    if
    :: EXEMPT || seen_owed <= seen_cover -> pending++; printf("EV payout_requested %d\n", n)
    :: else -> printf("EV payout_refused %d\n", n); goto refused
    fi
#else
    if
    :: EXEMPT || OWED <= reserves - pending - 1 ->
       pending++; printf("EV payout_requested %d\n", n)
    :: else -> printf("EV payout_refused %d\n", n); goto refused
    fi
#endif
  };
end_unpaid:
  /* batched with a coin no other batch reserves, mined, seen spent */
  atomic {
    reserves - redemption_coin_held > 0 ->
    reserves--; pending--; printf("EV payout_paid %d\n", n)
  };
refused:
  skip
}

/* An operator resumes minting (the approved issuance.resume_minting). */
active proctype Operator() {
end:
  do
  :: atomic { halted && resumes_left > 0 -> halted = 0; resumes_left--; printf("EV resume\n") }
  od
}

/* P2 and P3, checked in every state. */
active proctype Invariants() {
  byte i;
end:
  atomic {
    !(P3
#ifndef SKIP_P2
      && recorded[0] <= 1 && ledger_mints[0] <= 1
#if ND > 1
      && recorded[1] <= 1 && ledger_mints[1] <= 1
#endif
#if ND > 2
      && recorded[2] <= 1 && ledger_mints[2] <= 1
#endif
#endif
     ) ->
#ifndef SKIP_P2
    for (i : 0 .. ND - 1) {
      assert(recorded[i] <= 1 && ledger_mints[i] <= 1)   /* P2 no_double_mint */
    }
#endif
    assert(P3)   /* P3 backing */
  }
}

init {
  byte i;
  atomic {
    for (i : 0 .. ND - 1) {
      run DepositChain(i)
    }
#if REDEMPTIONS > 0
    run Redemption();
#endif
#if PAYOUTS > 0
    for (i : 1 .. PAYOUTS) {
      run OperatorPayout(i)
    }
#endif
  }
}
