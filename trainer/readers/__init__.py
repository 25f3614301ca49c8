"""One module per dataset layout; `trainer.datasets` is the front door."""
