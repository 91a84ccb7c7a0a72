-- loyalty 1.0 -> 1.1.  Everything that changed in the SQL surface since the
-- 1.0 release, in the order it was made.  A fresh 1.1 install
-- (loyalty--1.1.sql, built from src/sql/) and 1.0 + this script must end
-- with the same catalog: test/t/040_upgrade.pl compares them.
\echo Use "ALTER EXTENSION loyalty UPDATE TO '1.1'" to load this file. \quit
