-- loyalty 1.1 -> 1.2.  Everything that changed in the SQL surface since the
-- 1.1 release, in the order it was made: one section per change, headed by
-- a comment naming it, appended at the end.  A fresh 1.2 install
-- (loyalty--1.2.sql, built from src/sql/), 1.1 + this script and 1.0 +
-- loyalty--1.0--1.1.sql + this script must end with the same catalog:
-- test/t/040_upgrade.pl compares them.
\echo Use "ALTER EXTENSION loyalty UPDATE TO '1.2'" to load this file. \quit
