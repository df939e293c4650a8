"""Network architectures written from scratch, with parameter names that match published checkpoints."""
