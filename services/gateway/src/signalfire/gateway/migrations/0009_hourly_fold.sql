-- The 1-hour rollups are made once per series and hour, when the hour has ended, from its
-- 1-minute rows (signalfire.gateway.rollup.fold) instead of being merged minute by minute: a
-- 1-hour row that took sixty merges (each rewriting its histogram) is now one insert. Until
-- then queries read an open hour from its 1-minute rows (signalfire.gateway.api.query).
--
-- rollup_fold.horizon now means: every hour before it has its 1-hour rows made from all its
-- minutes; an hour at or after it is open (its 1-hour rows, if any, are left over from an older
-- gateway and are replaced when it is folded). Samples of an hour before the horizon that
-- arrive late are merged into both tables at once, as before.
--
-- Converted from the minute horizon of migration 0008: the hour of the first minute that was
-- not folded yet (all minutes before it were added to their hours), or the current hour;
-- a database that never rolled anything up keeps -infinity (its first fold starts at its first
-- 1-minute row). Every gateway of a database must run this version or a later one once the
-- migration is applied: an older one folds minutes into hours that this one folds again.
UPDATE rollup_fold SET horizon = CASE
    WHEN horizon = '-infinity'::timestamptz AND NOT EXISTS (SELECT 1 FROM rollup_minutes) THEN horizon
    ELSE date_trunc('hour', least(
        coalesce((SELECT min(bucket) FROM rollup_minutes WHERE NOT folded), 'infinity'::timestamptz),
        now()))
END;

DROP TABLE rollup_minutes;
