-- Wardwatch cloud schema v10 (SQLite). Keep in step with ../postgres/0010_observation_partitions.sql.
--
-- PostgreSQL partitions vital_signs by UTC day of measured time. SQLite has no table partitioning and an embedded
-- cloud keeps one file, so its schema does not change; this migration exists so that both backends carry the same
-- version numbers.
SELECT 1;
