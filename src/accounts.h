/*
 * accounts.h — per-backend cache of account facts (enrolment, cohort,
 * segments, tier history), filled in one batched query per statement.
 */
#ifndef LOYALTY_ACCOUNTS_H
#define LOYALTY_ACCOUNTS_H

#include "rules.h"

/*
 * Resolves keys[0..n) (distinct) of a program; auto-enrols unknown accounts
 * when the program says so (as the extension owner).  Returns one
 * AccountInfo per key, never NULL (enrolled = false when unknown).  Caller
 * is connected to SPI.
 */
extern void accounts_begin(void);
extern AccountInfo **accounts_resolve(Program *prog, char **keys, int n, bool enroll);

/* Forget every cached account; read one account again. */
extern void accounts_forget(void);
extern AccountInfo *accounts_refresh(Program *prog, const char *key);

/*
 * Moves to the front of keys[0..n) the accounts another transaction in
 * progress is auto-enrolling right now (a dirty read, no wait); returns how
 * many.
 */
extern int	accounts_enrolling_elsewhere(int32 program_id, char **keys, int n);

/* An upgrade this backend recorded: keep its own cache exact. */
extern void accounts_note_tier(Program *prog, const char *key, const char *tier, DateADT effective_from);

#endif
