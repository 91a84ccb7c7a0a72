\echo Use "CREATE EXTENSION loyalty" to load this file. \quit
