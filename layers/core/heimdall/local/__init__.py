"""The embedded local stack and the demo (development machines only; never on a Lambda path)."""
