-- The tables and the breaker function of the PostgreSQL storages. `{t}` is the table
-- (optionally `schema.table`), `{bare}` its name without the schema, `{lock}` the name of
-- the advisory lock that serialises migrations between processes.
--
-- The rules are stated in circuitpy/src/rules/mod.rs; `{t}_op` does what rules/row.rs
-- does, field for field, and the differential test holds it to that. Times are
-- microseconds since the Unix epoch by the database's clock (`clock_timestamp()`), or the
-- time a test gives (`p_at_us`). A deadline at or before now means what it bounds is over.
--
-- The last forcing's audit trail (forced_at, forced_by, forced_reason) is written by the
-- force ops from p_actor and p_reason (NULL when not given) and cleared with the rest of the
-- row by a trip, a close or a reset, as rules/row.rs does.
--
-- Op codes: 0 read, 1 success, 2 failure, 3 acquire trial, 4 trial success, 5 trial
-- failure, 6 force open, 7 force closed, 8 reset, 9 release trial, 10 override. Policies: 0 consecutive,
-- 1 count in window, 2 rate. States: 0 closed, 1 open, 2 half-open, 3 forced open, 4
-- forced closed.

SELECT pg_advisory_xact_lock(hashtext('{lock}'));

-- A table from before rounds were numbered holds times of another type: breaker state
-- is short-lived, so it is made anew.
DO $drop$
BEGIN
    IF to_regclass('{t}') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = to_regclass('{t}') AND attname = 'round' AND NOT attisdropped
    ) THEN
        EXECUTE 'DROP TABLE {t}';
        EXECUTE 'DROP TABLE IF EXISTS {t}_counts';
    END IF;
END
$drop$;

CREATE TABLE IF NOT EXISTS {t} (
    key text PRIMARY KEY,
    mode smallint NOT NULL DEFAULT 0,
    mode_until bigint NOT NULL DEFAULT 0,
    open_until bigint NOT NULL DEFAULT 0,
    opened_at bigint NOT NULL DEFAULT 0,
    tripped_until bigint NOT NULL DEFAULT 0,
    failures bigint NOT NULL DEFAULT 0,
    failures_until bigint NOT NULL DEFAULT 0,
    round bigint NOT NULL DEFAULT 0,
    trials integer NOT NULL DEFAULT 0,
    passed integer NOT NULL DEFAULT 0,
    round_until bigint NOT NULL DEFAULT 0,
    b_ids bigint[] NOT NULL DEFAULT array_fill(0::bigint, ARRAY[10]),
    b_calls bigint[] NOT NULL DEFAULT array_fill(0::bigint, ARRAY[10]),
    b_errs bigint[] NOT NULL DEFAULT array_fill(0::bigint, ARRAY[10]),
    expires_at bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS {bare}_expires ON {t} (expires_at);
-- The audit trail of the last forcing (who, why, when), written by force ops only.
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS forced_at bigint NOT NULL DEFAULT 0;
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS forced_by text;
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS forced_reason text;
-- Failed trial rounds in a row since the breaker last closed: the backoff's step.
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS reopens integer NOT NULL DEFAULT 0;
-- An operator's runtime overrides (0: not overridden), in force until o_until; kept through
-- every transition and a reset.
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS o_threshold integer NOT NULL DEFAULT 0;
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS o_recovery_us bigint NOT NULL DEFAULT 0;
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS o_trials integer NOT NULL DEFAULT 0;
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS o_until bigint NOT NULL DEFAULT 0;
-- An overridden backoff: its factor (0: not overridden, 1: overridden off) and max.
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS o_backoff double precision NOT NULL DEFAULT 0;
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS o_backoff_max_us bigint NOT NULL DEFAULT 0;
-- Under a quorum: the distinct reporters of the failures counted, and until when each one's
-- failures count (rules::row::Row::report).
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS q_ids bigint[] NOT NULL DEFAULT '{}';
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS q_until bigint[] NOT NULL DEFAULT '{}';

CREATE TABLE IF NOT EXISTS {t}_counts (
    key text PRIMARY KEY,
    count bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS {bare}_counts_expires ON {t}_counts (expires_at);

DROP FUNCTION IF EXISTS {t}_op(text, integer, integer, bigint, integer, integer, bigint,
    double precision, integer, bigint, bigint);
DROP FUNCTION IF EXISTS {t}_op(text, integer, integer, bigint, integer, integer, bigint,
    double precision, integer, bigint, bigint, bigint, bigint, bigint);
DROP FUNCTION IF EXISTS {t}_op(text, integer, integer, bigint, integer, integer, bigint,
    double precision, integer, bigint, bigint, bigint, bigint, bigint, integer);
DROP FUNCTION IF EXISTS {t}_op(text, integer, integer, bigint, integer, integer, bigint,
    double precision, integer, bigint, bigint, bigint, bigint, bigint, integer, text, text);
DROP FUNCTION IF EXISTS {t}_op(text, integer, integer, bigint, integer, integer, bigint,
    double precision, integer, bigint, bigint, bigint, bigint, bigint, integer, text, text,
    double precision, bigint);
DROP FUNCTION IF EXISTS {t}_op(text, integer, integer, bigint, integer, integer, bigint,
    double precision, integer, bigint, bigint, bigint, bigint, bigint, integer, text, text,
    double precision, bigint, double precision, bigint);
DROP FUNCTION IF EXISTS {t}_op(text, integer, integer, bigint, integer, integer, bigint,
    double precision, integer, bigint, bigint, bigint, bigint, bigint, integer, text, text,
    double precision, bigint, double precision, bigint, integer, bigint, integer);
DROP FUNCTION IF EXISTS {t}_op(text, integer, integer, bigint, integer, integer, bigint,
    double precision, integer, bigint, bigint, bigint, bigint, bigint, integer, text, text,
    double precision, bigint, double precision, bigint, integer, bigint, integer,
    double precision, bigint);

-- The same arguments as the function below, returning a set: made by a development version
-- of this one.
DROP FUNCTION IF EXISTS {t}_op(text, integer, integer, bigint, integer, integer, bigint,
    double precision, integer, bigint, bigint, bigint, bigint, bigint, integer, text, text,
    double precision, bigint, double precision, bigint, integer, bigint, integer,
    double precision, bigint, integer, bigint);

CREATE OR REPLACE FUNCTION {t}_op(
    p_key text, p_op integer, p_threshold integer, p_recovery_us bigint, p_trials integer,
    p_policy integer, p_window_us bigint, p_rate double precision, p_min_calls integer,
    p_retention_us bigint, p_forced_us bigint, p_count bigint, p_round bigint,
    p_at_us bigint, p_lock_ms integer, p_actor text, p_reason text,
    p_backoff double precision, p_backoff_max_us bigint, p_jitter double precision,
    p_seed bigint, p_set_threshold integer, p_set_recovery_us bigint, p_set_trials integer,
    p_set_backoff double precision, p_set_backoff_max_us bigint, p_quorum integer,
    p_reporter bigint,
    -- One row, not a set: no tuple store to fill and read back.
    OUT state integer, OUT permit boolean, OUT retry_in_us bigint, OUT open_since_us bigint,
    OUT failures bigint, OUT round bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    now_ bigint := coalesce(p_at_us, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
    r {t}%ROWTYPE;
    existed boolean;
    inserted boolean := false;
    placed integer;
    st integer;
    f bigint;
    changed boolean := false;
    permit_ boolean := false;
    round_ bigint := 0;
    trips boolean := false;
    this_round boolean;
    width bigint;
    cur bigint;
    slot integer;
    calls_ bigint;
    errs_ bigint;
    expires bigint;
    n integer;
    open_us bigint;
    open_ms bigint;
    max_ms bigint;
    x bigint;
    share double precision;
    q_lapse bigint;
BEGIN
    -- Closed with nothing counted, until an operation changes it.
    state := 0; permit := true; failures := 0; round := 0;
    -- Breaker state is advisory: after a server crash, losing the last few milliseconds of
    -- counts is harmless, and not waiting for the WAL flush makes a write as cheap as a
    -- read. Local to this statement's transaction.
    PERFORM set_config('synchronous_commit', 'off', true);
    -- A row another session holds locked is waited for no longer than the caller waits:
    -- the statement then fails on the server too, and its write never lands later.
    PERFORM set_config('lock_timeout', p_lock_ms::text, true);

    IF p_op = 8 THEN
        -- A reset keeps runtime overrides in force.
        DELETE FROM {t} WHERE key = p_key AND o_until <= now_;
        IF NOT FOUND THEN
            UPDATE {t} SET mode = 0, mode_until = 0, open_until = 0, opened_at = 0,
                tripped_until = 0, failures = 0, failures_until = 0, round = 0, trials = 0,
                passed = 0, round_until = 0, b_ids = array_fill(0::bigint, ARRAY[10]),
                b_calls = array_fill(0::bigint, ARRAY[10]),
                b_errs = array_fill(0::bigint, ARRAY[10]), forced_at = 0, forced_by = NULL,
                forced_reason = NULL, reopens = 0, q_ids = '{}', q_until = '{}',
                expires_at = o_until
            WHERE key = p_key;
        END IF;
        RETURN;
    END IF;
    IF p_op = 0 THEN
        SELECT * INTO r FROM {t} WHERE key = p_key;
    ELSE
        SELECT * INTO r FROM {t} WHERE key = p_key FOR UPDATE;
    END IF;
    existed := FOUND;
    IF NOT existed THEN
        -- No row: closed with nothing counted. Only some operations write one.
        IF p_op IN (0, 3, 4, 5, 9) OR (p_op = 1 AND p_policy <> 2) THEN
            RETURN;
        END IF;
        -- A placeholder taken under the key's lock, so that concurrent first writers queue.
        -- Whoever inserted it (and only they) deletes it again if the operation writes
        -- nothing; a row that vanished in between (a reset) is inserted anew.
        LOOP
            INSERT INTO {t} (key, expires_at) VALUES (p_key, now_ + 86400000000)
                ON CONFLICT (key) DO NOTHING;
            GET DIAGNOSTICS placed = ROW_COUNT;
            inserted := placed > 0;
            SELECT * INTO r FROM {t} WHERE key = p_key FOR UPDATE;
            EXIT WHEN FOUND;
        END LOOP;
    END IF;

    -- Runtime overrides in force are decided by; expired ones are forgotten.
    IF r.o_until > now_ THEN
        IF r.o_threshold > 0 THEN p_threshold := r.o_threshold; END IF;
        IF r.o_recovery_us > 0 THEN p_recovery_us := r.o_recovery_us; END IF;
        IF r.o_trials > 0 THEN p_trials := r.o_trials; END IF;
        IF r.o_backoff > 0 THEN
            p_backoff := r.o_backoff;
            p_backoff_max_us := r.o_backoff_max_us;
        END IF;
    ELSE
        r.o_threshold := 0; r.o_recovery_us := 0; r.o_trials := 0; r.o_until := 0;
        r.o_backoff := 0; r.o_backoff_max_us := 0;
    END IF;

    st := CASE
        WHEN r.mode_until > now_ AND r.mode = 1 THEN 3
        WHEN r.mode_until > now_ AND r.mode = 2 THEN 4
        WHEN r.open_until > now_ THEN 1
        WHEN r.tripped_until > now_ THEN 2
        ELSE 0 END;
    f := CASE WHEN r.failures_until > now_ THEN r.failures ELSE 0 END;
    -- The outcome belongs to the current round, which is not over.
    this_round := (p_round IS NULL OR p_round = r.round) AND r.round_until > now_;

    IF p_op = 10 THEN
        IF p_set_threshold > 0 OR p_set_recovery_us > 0 OR p_set_trials > 0
            OR p_set_backoff > 0 THEN
            r.o_threshold := p_set_threshold;
            r.o_recovery_us := p_set_recovery_us;
            r.o_trials := p_set_trials;
            r.o_backoff := p_set_backoff;
            r.o_backoff_max_us := p_set_backoff_max_us;
            r.o_until := now_ + p_forced_us;
        ELSE
            r.o_threshold := 0; r.o_recovery_us := 0; r.o_trials := 0; r.o_until := 0;
            r.o_backoff := 0; r.o_backoff_max_us := 0;
        END IF;
        changed := true;
    ELSIF p_op IN (6, 7) THEN
        r.mode := CASE WHEN p_op = 6 THEN 1 ELSE 2 END;
        r.mode_until := now_ + p_forced_us;
        r.open_until := 0; r.opened_at := 0; r.tripped_until := 0;
        r.failures := 0; r.failures_until := 0;
        r.trials := 0; r.passed := 0; r.round_until := 0;
        r.b_ids := array_fill(0::bigint, ARRAY[10]);
        r.b_calls := array_fill(0::bigint, ARRAY[10]);
        r.b_errs := array_fill(0::bigint, ARRAY[10]);
        -- Forcing again replaces the whole trail.
        r.forced_at := now_; r.forced_by := p_actor; r.forced_reason := p_reason;
        r.reopens := 0;
        r.q_ids := '{}'; r.q_until := '{}';
        st := CASE WHEN p_op = 6 THEN 3 ELSE 4 END;
        changed := true;
    ELSIF st = 0 AND p_op IN (1, 2) AND p_policy = 2 THEN
        width := GREATEST(p_window_us / 10, 1);
        cur := now_ / width;
        slot := (cur % 10)::integer + 1;
        IF r.b_ids[slot] <> cur THEN
            r.b_ids[slot] := cur;
            r.b_calls[slot] := 0;
            r.b_errs[slot] := 0;
        END IF;
        r.b_calls[slot] := r.b_calls[slot] + CASE WHEN p_op = 2 THEN 1 ELSE p_count END;
        IF p_op = 2 THEN
            r.b_errs[slot] := r.b_errs[slot] + 1;
        END IF;
        SELECT coalesce(sum(b.c), 0), coalesce(sum(b.e), 0) INTO calls_, errs_
            FROM unnest(r.b_ids, r.b_calls, r.b_errs) AS b(i, c, e)
            WHERE b.i BETWEEN cur - 9 AND cur;
        f := errs_;
        trips := p_op = 2 AND calls_ >= p_min_calls AND errs_ >= p_rate * calls_;
        changed := true;
    ELSIF st = 0 AND p_op = 1 THEN
        IF p_policy = 0 AND f <> 0 THEN
            r.failures := 0;
            r.failures_until := 0;
            r.q_ids := '{}'; r.q_until := '{}';
            f := 0;
            changed := true;
        END IF;
    ELSIF st = 0 AND p_op = 2 THEN
        f := f + 1;
        r.failures := f;
        r.failures_until := now_ + CASE WHEN p_policy = 0 THEN p_retention_us ELSE p_window_us END;
        trips := f >= p_threshold;
        changed := true;
    ELSIF st = 2 AND p_op = 3 THEN
        IF r.round_until <= now_ THEN
            -- The first caller after the open period, or a round in which nothing happened
            -- for a recovery timeout: a new round begins.
            r.round := GREATEST(now_, r.round + 1);
            r.trials := 1;
            r.passed := 0;
            r.round_until := now_ + p_recovery_us;
            permit_ := true;
            changed := true;
        ELSIF r.trials < p_trials THEN
            r.trials := r.trials + 1;
            r.round_until := now_ + p_recovery_us;
            permit_ := true;
            changed := true;
        END IF;
        IF permit_ THEN
            round_ := r.round;
        END IF;
    ELSIF st = 2 AND p_op = 4 AND this_round THEN
        r.passed := r.passed + 1;
        IF r.passed >= p_trials THEN
            r.mode := 0; r.mode_until := 0;
            r.open_until := 0; r.opened_at := 0; r.tripped_until := 0;
            r.failures := 0; r.failures_until := 0;
            r.trials := 0; r.passed := 0; r.round_until := 0;
            r.b_ids := array_fill(0::bigint, ARRAY[10]);
            r.b_calls := array_fill(0::bigint, ARRAY[10]);
            r.b_errs := array_fill(0::bigint, ARRAY[10]);
            r.forced_at := 0; r.forced_by := NULL; r.forced_reason := NULL;
            r.reopens := 0;
            r.q_ids := '{}'; r.q_until := '{}';
            st := 0;
            f := 0;
        ELSE
            r.round_until := now_ + p_recovery_us;
        END IF;
        changed := true;
    ELSIF st = 2 AND p_op = 5 AND this_round THEN
        trips := true;
    ELSIF st = 2 AND p_op = 9 AND this_round AND r.trials > 0 THEN
        r.trials := r.trials - 1;
        r.round_until := now_ + p_recovery_us;
        changed := true;
    END IF;

    IF p_quorum > 1 AND st = 0 AND p_op = 2 THEN
        -- The quorum's reporters (rules::row::Row::report): those whose failures no longer
        -- count are forgotten, p_reporter is remembered while fewer than the quorum are,
        -- and each takes the new expiry (all of them but under the rate policy, whose
        -- failures lapse bucket by bucket).
        IF p_policy = 2 THEN
            width := GREATEST(p_window_us / 10, 1);
            q_lapse := (now_ / width + 10) * width;
        ELSE
            q_lapse := r.failures_until;
        END IF;
        SELECT coalesce(array_agg(q.i ORDER BY q.o), '{}'),
            coalesce(array_agg(CASE WHEN p_policy = 2 AND q.i <> p_reporter THEN q.u
                ELSE q_lapse END ORDER BY q.o), '{}')
            INTO r.q_ids, r.q_until
            FROM unnest(r.q_ids, r.q_until) WITH ORDINALITY AS q(i, u, o)
            WHERE q.u > now_;
        IF NOT (p_reporter = ANY(r.q_ids)) AND cardinality(r.q_ids) < p_quorum THEN
            r.q_ids := r.q_ids || p_reporter;
            r.q_until := r.q_until || q_lapse;
        END IF;
        trips := trips AND cardinality(r.q_ids) >= p_quorum;
    END IF;

    IF trips THEN
        -- A trip from closed opens for the recovery timeout; a failed trial round for the
        -- backoff's next step (rules::open_time: whole milliseconds, each step rounded down).
        n := 0;
        open_us := p_recovery_us;
        IF p_op = 5 THEN
            n := LEAST(r.reopens + 1, 31);
            IF p_backoff > 1 THEN
                open_ms := p_recovery_us / 1000;
                -- Never below the recovery timeout: an override may lower the max under it.
                max_ms := GREATEST(p_backoff_max_us / 1000, open_ms);
                FOR i IN 1..n LOOP
                    EXIT WHEN open_ms >= max_ms;
                    open_ms := LEAST(floor(open_ms * p_backoff)::bigint, max_ms);
                END LOOP;
                open_us := LEAST(open_ms, max_ms) * 1000;
            END IF;
        END IF;
        -- The jitter's share for this key and instant shortens it (rules::open_for).
        IF p_jitter > 0 THEN
            open_ms := open_us / 1000;
            x := (p_seed + now_ / 1000) % 67108864;
            FOR i IN 1..3 LOOP
                x := (x * 40503 + 12345) % 67108864;
                x := (x * x / 8192) % 67108864;
            END LOOP;
            share := x::double precision / 67108864;
            open_ms := open_ms - LEAST(floor(open_ms * p_jitter * share)::bigint, open_ms);
            open_us := open_ms * 1000;
        END IF;
        r.reopens := n;
        r.mode := 0; r.mode_until := 0;
        r.open_until := now_ + open_us;
        r.opened_at := now_;
        r.tripped_until := now_ + GREATEST(open_us, p_retention_us);
        r.failures := 0; r.failures_until := 0;
        r.trials := 0; r.passed := 0; r.round_until := 0;
        r.b_ids := array_fill(0::bigint, ARRAY[10]);
        r.b_calls := array_fill(0::bigint, ARRAY[10]);
        r.b_errs := array_fill(0::bigint, ARRAY[10]);
        r.forced_at := 0; r.forced_by := NULL; r.forced_reason := NULL;
        r.q_ids := '{}'; r.q_until := '{}';
        st := 1;
        f := 0;
        changed := true;
    END IF;

    IF changed THEN
        expires := GREATEST(
            CASE WHEN r.mode <> 0 THEN r.mode_until ELSE 0 END,
            r.open_until, r.tripped_until, r.failures_until, r.round_until, r.o_until);
        IF p_policy = 2 THEN
            width := GREATEST(p_window_us / 10, 1);
            SELECT GREATEST(expires, coalesce(max((b.i + 1) * width + p_window_us), 0))
                INTO expires
                FROM unnest(r.b_ids, r.b_calls) AS b(i, c) WHERE b.c > 0;
        END IF;
        IF expires <= now_ THEN
            DELETE FROM {t} WHERE key = p_key;
        ELSE
            UPDATE {t} SET mode = r.mode, mode_until = r.mode_until, open_until = r.open_until,
                opened_at = r.opened_at, tripped_until = r.tripped_until,
                failures = r.failures, failures_until = r.failures_until, round = r.round,
                trials = r.trials, passed = r.passed, round_until = r.round_until,
                b_ids = r.b_ids, b_calls = r.b_calls, b_errs = r.b_errs, expires_at = expires,
                forced_at = r.forced_at, forced_by = r.forced_by, forced_reason = r.forced_reason,
                reopens = r.reopens, o_threshold = r.o_threshold,
                o_recovery_us = r.o_recovery_us, o_trials = r.o_trials, o_until = r.o_until,
                o_backoff = r.o_backoff, o_backoff_max_us = r.o_backoff_max_us,
                q_ids = r.q_ids, q_until = r.q_until
            WHERE key = p_key;
        END IF;
    ELSIF inserted THEN
        DELETE FROM {t} WHERE key = p_key;
    END IF;
    IF inserted THEN
        -- Whoever creates a row clears a few that expired: no cleanup daemon.
        DELETE FROM {t} WHERE key IN (
            SELECT key FROM {t} WHERE expires_at <= now_ AND key <> p_key
            ORDER BY expires_at LIMIT 4 FOR UPDATE SKIP LOCKED);
    END IF;

    state := st;
    permit := CASE WHEN st IN (0, 4) THEN true ELSE permit_ END;
    retry_in_us := CASE WHEN st = 1 THEN r.open_until - now_ END;
    open_since_us := CASE WHEN st = 1 THEN now_ - r.opened_at END;
    failures := CASE WHEN st = 0 THEN f ELSE 0 END;
    round := round_;
END;
$fn$;
