"""tokend's background workers: run by `tokend work` (or inside `tokend dev`)."""
