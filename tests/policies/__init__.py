"""Pure, fast tests of the policy engine (no broker, no clock)."""
