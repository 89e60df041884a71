//! Retention and compaction (to come).
