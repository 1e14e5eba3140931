"""Stage 3: the weighted ensemble of variants."""
