"""The three models: video tokenizer (video <-> codes), text tokenizer (prompt -> ids), generator (ids -> codes)."""
