//! `sync-worker dlq list|show|replay`: see the helper's work.
