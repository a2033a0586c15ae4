"""Directory sync: mapping source entries, planning, applying in batches, and scheduling."""
