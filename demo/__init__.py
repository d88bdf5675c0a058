"""`tuneloop demo`: the whole loop on one machine, above the three stages it drives."""
