"""What makes a run safe and repeatable, which a researcher never needs to open."""
