"""Controller semantics (issue 3): reserve, cap, must-hit-by, pending changes, life cycle."""
