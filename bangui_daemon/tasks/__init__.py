"""The scheduler and one module per task."""
